{{/* Labels every object of the chart carries. */}}
{{- define "sockbridge.labels" -}}
app.kubernetes.io/name: sockbridge
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

// Package deploy_test proves the manifests on a real API server: deploy/
// built with kustomize's Go API and the Helm chart deploy/helm/sockbridge
// rendered with Helm's Go library are applied server-side to a throw-away
// etcd + kube-apiserver with field validation Strict (dry run first, then
// for real). No node runs them: the agent's behaviour is tested elsewhere.
package deploy_test

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/sockbridge/sockbridge/internal/kubetest"
)

const chartDir = "../../deploy/helm/sockbridge"

// renderChart renders the chart with Helm's Go library, as `helm template`
// would for a release named sockbridge in namespace, with values over the
// chart's defaults (validated against values.schema.json).
func renderChart(t *testing.T, namespace string, values map[string]any) ([]*unstructured.Unstructured, error) {
	t.Helper()
	chart, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals, err := chartutil.ToRenderValues(chart, values,
		chartutil.ReleaseOptions{Name: "sockbridge", Namespace: namespace, IsInstall: true, Revision: 1},
		chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(chart, vals)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for name := range files {
		if strings.HasSuffix(name, ".yaml") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var objs []*unstructured.Unstructured
	for _, name := range names {
		o, err := kubetest.DecodeObjects([]byte(files[name]))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		objs = append(objs, o...)
	}
	return objs, nil
}

// daemonSet returns the one DaemonSet among objs, typed.
func daemonSet(t *testing.T, objs []*unstructured.Unstructured) *appsv1.DaemonSet {
	t.Helper()
	var found []*appsv1.DaemonSet
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &ds, true); err != nil {
			t.Fatalf("DaemonSet: %v", err)
		}
		found = append(found, &ds)
	}
	if len(found) != 1 {
		t.Fatalf("%d DaemonSets, want 1", len(found))
	}
	return found[0]
}

// checkAgentPod checks what every rendering of the agent must have: health
// probes on the metrics port (when metrics are on), capabilities instead of
// privileged, and the args the values asked for.
func checkAgentPod(t *testing.T, ds *appsv1.DaemonSet, wantArgs []string, probes bool) {
	t.Helper()
	c := ds.Spec.Template.Spec.Containers[0]
	for _, a := range wantArgs {
		if !slices.Contains(c.Args, a) {
			t.Errorf("agent args %v lack %s", c.Args, a)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged != nil && *sc.Privileged {
		t.Fatalf("agent is privileged or has no securityContext: %+v", sc)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) == 0 {
		t.Errorf("capabilities %+v, want drop ALL and a list of adds", sc.Capabilities)
	}
	// Inbound capture finds pod namespaces through the pods' /proc
	// entries: the host's PID namespace and CAP_SYS_PTRACE.
	if !ds.Spec.Template.Spec.HostPID || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Add, "SYS_PTRACE") {
		t.Errorf("hostPID %v, capabilities %+v: inbound capture needs hostPID and SYS_PTRACE", ds.Spec.Template.Spec.HostPID, sc.Capabilities)
	}
	if !probes {
		if c.LivenessProbe != nil || c.ReadinessProbe != nil {
			t.Errorf("probes without the health endpoints: %+v %+v", c.LivenessProbe, c.ReadinessProbe)
		}
		return
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.StrVal != "metrics" {
		t.Errorf("liveness probe %+v, want GET /healthz on the metrics port", p)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.StrVal != "metrics" {
		t.Errorf("readiness probe %+v, want GET /readyz on the metrics port", p)
	}
}

// deploy/ builds with krusty and applies server-side, Strict, dry run and
// for real; the stored DaemonSet is the agent with its probes.
func TestKustomizeApplies(t *testing.T) {
	objs, err := kubetest.BuildKustomization("../../deploy")
	if err != nil {
		t.Fatal(err)
	}
	checkAgentPod(t, daemonSet(t, objs), []string{"--metrics-addr=:9090", "--mesh=istio"}, true)
	api := kubetest.StartKubeAPI(t)
	api.Apply(t, objs)
	ds, err := api.Client(t, kubetest.KubeAdmin).AppsV1().DaemonSets("sockbridge").Get(context.Background(), "sockbridge", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkAgentPod(t, ds, []string{"--metrics-addr=:9090"}, true)

	// Strict means strict: the same DaemonSet with a misspelt field is
	// refused, dry run or not.
	bad := daemonSetObject(t, objs).DeepCopy()
	containers, _, _ := unstructured.NestedSlice(bad.Object, "spec", "template", "spec", "containers")
	containers[0].(map[string]any)["readinessProbes"] = map[string]any{}
	if err := unstructured.SetNestedSlice(bad.Object, containers, "spec", "template", "spec", "containers"); err != nil {
		t.Fatal(err)
	}
	if err := api.ApplyObjects([]*unstructured.Unstructured{bad}); err == nil || !strings.Contains(err.Error(), "readinessProbes") {
		t.Errorf("a DaemonSet with an unknown field applied: %v", err)
	}
}

func daemonSetObject(t *testing.T, objs []*unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" {
			return o
		}
	}
	t.Fatal("no DaemonSet")
	return nil
}

// The chart renders with Helm's library and applies the same way, with
// its defaults and with every value changed.
func TestHelmChartApplies(t *testing.T) {
	api := kubetest.StartKubeAPI(t)
	for _, tc := range []struct {
		name, namespace string
		values          map[string]any
		args            []string
		probes          bool
	}{
		{"defaults", "sockbridge", nil, []string{"--mesh=istio", "--splice=auto", "--metrics-addr=:9090"}, true},
		{"every value", "mesh-system", map[string]any{
			"mesh": "linkerd", "splice": "off",
			"dns":       map[string]any{"clusterDNS": "10.96.0.10", "capture": true},
			"metrics":   map[string]any{"enabled": false},
			"image":     map[string]any{"repository": "registry.example/sb", "tag": "v9", "pullPolicy": "Always"},
			"resources": map[string]any{"requests": map[string]any{"cpu": "10m", "memory": "32Mi"}},
		}, []string{"--mesh=linkerd", "--splice=off", "--cluster-dns=10.96.0.10", "--dns-capture"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := renderChart(t, tc.namespace, tc.values)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			ds := daemonSet(t, objs)
			checkAgentPod(t, ds, tc.args, tc.probes)
			if tc.values != nil {
				c := ds.Spec.Template.Spec.Containers[0]
				if c.Image != "registry.example/sb:v9" || c.ImagePullPolicy != corev1.PullAlways || c.Resources.Requests.Cpu().String() != "10m" {
					t.Errorf("image %s %s, resources %v: values not applied", c.Image, c.ImagePullPolicy, c.Resources)
				}
				if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--metrics-addr") }) || len(c.Ports) != 0 {
					t.Errorf("metrics off, but args %v ports %v", c.Args, c.Ports)
				}
			}
			ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": tc.namespace}}}
			api.Apply(t, append([]*unstructured.Unstructured{ns}, objs...))
		})
	}
}

// Values outside the schema are refused at render time, not by the agent
// crash-looping on the node.
func TestHelmChartRejectsBadValues(t *testing.T) {
	for name, values := range map[string]map[string]any{
		"unknown mesh":  {"mesh": "consul"},
		"splice typo":   {"splice": "yes"},
		"unknown value": {"replicas": 3},
		"port 0":        {"metrics": map[string]any{"enabled": true, "port": 0}},
	} {
		if _, err := renderChart(t, "sockbridge", values); err == nil {
			t.Errorf("%s: %v rendered without error", name, values)
		}
	}
}

// The chart's defaults and deploy/ describe the same agent pod: the two
// cannot drift apart unnoticed.
func TestHelmMatchesKustomize(t *testing.T) {
	kobjs, err := kubetest.BuildKustomization("../../deploy")
	if err != nil {
		t.Fatal(err)
	}
	hobjs, err := renderChart(t, "sockbridge", nil)
	if err != nil {
		t.Fatal(err)
	}
	k, h := daemonSet(t, kobjs), daemonSet(t, hobjs)
	if !reflect.DeepEqual(k.Spec.Template, h.Spec.Template) {
		t.Errorf("pod templates differ:\nkustomize: %+v\nhelm:      %+v", k.Spec.Template, h.Spec.Template)
	}
	rules := func(objs []*unstructured.Unstructured) any {
		for _, o := range objs {
			if o.GetKind() == "ClusterRole" {
				return o.Object["rules"]
			}
		}
		return nil
	}
	if !reflect.DeepEqual(rules(kobjs), rules(hobjs)) {
		t.Errorf("ClusterRole rules differ:\nkustomize: %v\nhelm:      %v", rules(kobjs), rules(hobjs))
	}
}

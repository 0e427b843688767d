package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// istioPod is a meshed pod with the given proxy env and annotations.
func dnsIstioPod(env map[string]string, annotations map[string]string) *corev1.Pod {
	c := corev1.Container{Name: "istio-proxy", Args: []string{"proxy", "sidecar"}}
	for k, v := range env {
		c.Env = append(c.Env, corev1.EnvVar{Name: k, Value: v})
	}
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, c}}}
	pod.Annotations = annotations
	return pod
}

// The DNS switch is read where Istio reads it: the sidecar's env (what
// istio-cni and pilot-agent read), else the proxy.istio.io/config
// annotation's proxyMetadata, else the mesh-wide default. A value that is
// not a boolean turns DNS capture off (as the sidecar reads it) and is
// reported, without touching the rest of the policy; a malformed
// proxy.istio.io/config is a Problem like any bad annotation.
func TestDNSSwitch(t *testing.T) {
	const key = "proxy.istio.io/config"
	tests := []struct {
		name        string
		env         map[string]string
		annotation  string
		mesh        bool
		wantOn      bool
		wantSource  string // substring
		dnsProblem  string // substring of a DNS problem
		problem     string // substring of a Problem (pod not captured)
		wantCapture bool
	}{
		{name: "nothing", wantCapture: true},
		{name: "mesh default", mesh: true, wantOn: true, wantSource: "mesh-wide", wantCapture: true},
		{name: "annotation on", annotation: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n", wantOn: true, wantSource: "proxy.istio.io/config", wantCapture: true},
		{name: "annotation unquoted YAML bool", annotation: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: true\n", wantOn: true, wantCapture: true},
		{name: "annotation JSON", annotation: `{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":"1"}}`, wantOn: true, wantCapture: true},
		{name: "annotation off beats mesh default", annotation: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"false\"\n", mesh: true, wantCapture: true},
		{name: "annotation without the key keeps mesh default", annotation: "concurrency: 2\nproxyMetadata:\n  OTHER: x\n", mesh: true, wantOn: true, wantCapture: true},
		{name: "env beats annotation", env: map[string]string{"ISTIO_META_DNS_CAPTURE": "false"}, annotation: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n", wantSource: "env", wantCapture: true},
		{name: "env on", env: map[string]string{"ISTIO_META_DNS_CAPTURE": "T"}, wantOn: true, wantSource: "env of container istio-proxy", wantCapture: true},
		{name: "env not a boolean", env: map[string]string{"ISTIO_META_DNS_CAPTURE": "yes"}, mesh: true, dnsProblem: "not a boolean", wantCapture: true},
		{name: "annotation value not a boolean", annotation: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"on\"\n", dnsProblem: "not a boolean", wantCapture: true},
		{name: "annotation not YAML", annotation: "proxyMetadata: [", problem: "not a ProxyConfig"},
		{name: "proxyMetadata not strings", annotation: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: {a: b}\n", problem: "not a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := PresetByName("istio")
			p.MeshDNSCapture = tt.mesh
			var ann map[string]string
			if tt.annotation != "" {
				ann = map[string]string{key: tt.annotation}
			}
			ev := p.Evaluate(dnsIstioPod(tt.env, ann))
			if ev.Capture != tt.wantCapture {
				t.Fatalf("Capture = %v (%s), want %v", ev.Capture, ev.Reason, tt.wantCapture)
			}
			if tt.problem != "" {
				if len(ev.Problems) != 1 || ev.Problems[0].Annotation != key || !strings.Contains(ev.Problems[0].Error(), tt.problem) {
					t.Fatalf("problems %v, want one about %s containing %q", ev.Problems, key, tt.problem)
				}
				if ev.DNSCapture {
					t.Error("DNS capture on for a pod that is not captured")
				}
				return
			}
			if ev.DNSCapture != tt.wantOn {
				t.Errorf("DNSCapture = %v (source %q), want %v", ev.DNSCapture, ev.DNSSource, tt.wantOn)
			}
			if tt.wantSource != "" && !strings.Contains(ev.DNSSource, tt.wantSource) {
				t.Errorf("DNSSource = %q, want it to name %q", ev.DNSSource, tt.wantSource)
			}
			if tt.dnsProblem == "" && len(ev.DNSProblems) != 0 || tt.dnsProblem != "" && (len(ev.DNSProblems) != 1 || !strings.Contains(ev.DNSProblems[0].Error(), tt.dnsProblem)) {
				t.Errorf("DNS problems %v, want %q", ev.DNSProblems, tt.dnsProblem)
			}
		})
	}
	t.Run("other meshes have no switch", func(t *testing.T) {
		for _, name := range []string{"linkerd", "kuma"} {
			p, _ := PresetByName(name)
			if p.DNSSwitch != nil || p.DNSPort != 0 {
				t.Errorf("%s: DNS switch %+v, port %d", name, p.DNSSwitch, p.DNSPort)
			}
		}
	})
	t.Run("not captured, no DNS", func(t *testing.T) {
		p, _ := PresetByName("istio")
		p.MeshDNSCapture = true
		pod := dnsIstioPod(nil, map[string]string{"sidecar.istio.io/interceptionMode": "NONE"})
		if ev := p.Evaluate(pod); ev.Capture || ev.DNSCapture {
			t.Errorf("interception NONE: %+v", ev)
		}
	})
}

// The nameservers are those the kubelet writes into the pod's resolv.conf.
func TestNameservers(t *testing.T) {
	node := NodeDNS{ClusterDNS: addrs("10.96.0.10"), HostNameservers: addrs("192.168.1.1", "fd00::1")}
	tests := []struct {
		name   string
		policy corev1.DNSPolicy
		extra  []string
		node   NodeDNS
		want   []netip.Addr
		why    string
	}{
		{name: "unset is ClusterFirst", node: node, want: addrs("10.96.0.10")},
		{name: "ClusterFirst", policy: corev1.DNSClusterFirst, node: node, want: addrs("10.96.0.10")},
		{name: "ClusterFirstWithHostNet, not host network", policy: corev1.DNSClusterFirstWithHostNet, node: node, want: addrs("10.96.0.10")},
		{name: "Default is the node's", policy: corev1.DNSDefault, node: node, want: addrs("192.168.1.1", "fd00::1")},
		{name: "None", policy: corev1.DNSNone, extra: []string{"10.0.0.2", "fd00::53"}, node: node, want: addrs("10.0.0.2", "fd00::53")},
		{name: "None without nameservers", policy: corev1.DNSNone, node: node, why: "dnsPolicy None"},
		{name: "dnsConfig appended, duplicates dropped, at most 3", policy: corev1.DNSDefault, extra: []string{"192.168.1.1", "10.0.0.3", "10.0.0.4"}, node: node, want: addrs("192.168.1.1", "fd00::1", "10.0.0.3")},
		{name: "cluster DNS unknown", node: NodeDNS{HostNameservers: addrs("192.168.1.1")}, why: "--cluster-dns"},
		{name: "bad dnsConfig entry skipped", policy: corev1.DNSNone, extra: []string{"dns.example", "10.0.0.2"}, want: addrs("10.0.0.2")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{DNSPolicy: tt.policy}}
			if tt.extra != nil {
				pod.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: tt.extra}
			}
			got, why := Nameservers(pod, tt.node)
			if !slices.Equal(got, tt.want) {
				t.Errorf("nameservers %v, want %v", got, tt.want)
			}
			if (tt.why == "") != (why == "") || !strings.Contains(why, tt.why) {
				t.Errorf("why %q, want %q", why, tt.why)
			}
		})
	}
}

func TestParseResolvConf(t *testing.T) {
	got := ParseResolvConf([]byte("# generated\nsearch example.com\nnameserver 10.0.0.1 # primary\nnameserver\tfd00::1\nnameserver fe80::1%eth0\n;nameserver 10.9.9.9\nnameserver bogus\noptions ndots:5\n"))
	if want := addrs("10.0.0.1", "fd00::1"); !slices.Equal(got, want) {
		t.Errorf("nameservers %v, want %v", got, want)
	}
}

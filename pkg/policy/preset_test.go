package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Annotation keys used by the tables.
const (
	aInclIPs   = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	aExclIPs   = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	aInclOut   = "traffic.sidecar.istio.io/includeOutboundPorts"
	aExclOut   = "traffic.sidecar.istio.io/excludeOutboundPorts"
	aInclIn    = "traffic.sidecar.istio.io/includeInboundPorts"
	aExclIn    = "traffic.sidecar.istio.io/excludeInboundPorts"
	aStatus    = "status.sidecar.istio.io/port"
	aMode      = "sidecar.istio.io/interceptionMode"
	aInject    = "sidecar.istio.io/inject"
	aIstioStat = "sidecar.istio.io/status"
)

// istioNever is what Inbound.ExcludePorts holds for an Istio pod without
// inbound annotations: 15008 (istio-iptables' InboundTunnelPort RETURN),
// 15020 (default status port), 15021 and 15090 (always in -d).
var istioNever = []uint16{15008, 15020, 15021, 15090}

func meshedPod(container string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Annotations: annotations},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "app"}, {Name: container},
		}},
	}
}

func istioPod(annotations map[string]string) *corev1.Pod {
	return meshedPod("istio-proxy", annotations)
}

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func portRange(lo, hi int) []uint16 {
	var out []uint16
	for p := lo; p <= hi; p++ {
		out = append(out, uint16(p))
	}
	return out
}

func portCSV(ports []uint16) string {
	var s []string
	for _, p := range ports {
		s = append(s, fmt.Sprint(p))
	}
	return strings.Join(s, ",")
}

func cidrCSV(n int) string {
	var s []string
	for i := range n {
		s = append(s, fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))
	}
	return strings.Join(s, ",")
}

type evalCase struct {
	name   string
	preset string // default "istio"
	pod    *corev1.Pod
	// expected outcome
	meshed   bool
	capture  bool
	out      *Outbound // checked when capture
	in       *Inbound  // checked when capture
	problems []string  // annotation keys of the Problems, in order
	errIs    error     // every Problem wraps it, when set
	reason   string    // substring of Reason, when set
}

func TestEvaluateIstio(t *testing.T) {
	allOut := &Outbound{AllIPs: true}
	allIn := &Inbound{AllPorts: true, ExcludePorts: istioNever}
	tests := []evalCase{
		// --- membership and switches ---
		{
			// The injector adds container istio-proxy; no annotation means
			// -i "*" -b "*" -d 15090,15021,15020 (injection template).
			name: "istio-proxy container, no annotations", pod: istioPod(nil),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// No sidecar: istio-cni skips pods without sidecar.istio.io/status.
			name: "no sidecar", pod: meshedPod("other", nil),
			reason: "no istio-proxy container",
		},
		{
			// istio-cni keys membership on the status annotation alone.
			name: "status annotation only", pod: meshedPod("other", map[string]string{aIstioStat: `{"initContainers":[]}`}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// Native sidecar: the template puts istio-proxy in initContainers
			// with restartPolicy Always (EnableNativeSidecars).
			name: "native sidecar", pod: func() *corev1.Pod {
				always := corev1.ContainerRestartPolicyAlways
				return &corev1.Pod{Spec: corev1.PodSpec{
					InitContainers: []corev1.Container{{Name: "istio-proxy", RestartPolicy: &always}},
					Containers:     []corev1.Container{{Name: "app"}},
				}}
			}(),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// A plain init container named istio-proxy runs to completion
			// before the app: it is no sidecar.
			name: "init container without restartPolicy Always", pod: &corev1.Pod{Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: "istio-proxy"}},
				Containers:     []corev1.Container{{Name: "app"}},
			}},
			reason: "no istio-proxy container",
		},
		{
			// istio-cni: "excluded due to being already injected with
			// istio-init container" — iptables already captures this pod.
			name: "istio-init present", pod: func() *corev1.Pod {
				p := istioPod(nil)
				p.Spec.InitContainers = []corev1.Container{{Name: "istio-init"}}
				return p
			}(),
			meshed: true, reason: "istio-init already captures",
		},
		{
			// istio-cni: DISABLE_ENVOY=true on istio-proxy excludes the pod.
			name: "DISABLE_ENVOY", pod: func() *corev1.Pod {
				p := istioPod(nil)
				p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: "DISABLE_ENVOY", Value: "true"}}
				return p
			}(),
			meshed: true, reason: "DISABLE_ENVOY=true",
		},
		{
			// istio-cni: ProxyType (args "proxy <type>") other than sidecar
			// is excluded; gateways run "proxy router".
			name: "gateway proxy", pod: func() *corev1.Pod {
				p := istioPod(nil)
				p.Spec.Containers[1].Args = []string{"proxy", "router"}
				return p
			}(),
			meshed: true, reason: `runs as "router"`,
		},
		{
			name: "sidecar proxy args", pod: func() *corev1.Pod {
				p := istioPod(nil)
				p.Spec.Containers[1].Args = []string{"proxy", "sidecar", "--domain", "x"}
				p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: "DISABLE_ENVOY", Value: "false"}}
				return p
			}(),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// istio-cni: strconv.ParseBool(inject) == false excludes the pod.
			name: "inject false", pod: istioPod(map[string]string{aInject: "false"}),
			meshed: true, reason: "sidecar.istio.io/inject=false",
		},
		{
			// istio-cni and the injector prefer the label over the annotation.
			name: "inject label false beats annotation true", pod: func() *corev1.Pod {
				p := istioPod(map[string]string{aInject: "true"})
				p.Labels = map[string]string{aInject: "false"}
				return p
			}(),
			meshed: true, reason: "label sidecar.istio.io/inject=false",
		},
		{
			name: "inject true", pod: istioPod(map[string]string{aInject: "true"}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// istio-cni skips the check for an empty value.
			name: "inject empty", pod: istioPod(map[string]string{aInject: ""}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// Not a ParseBool value: the injector would not inject
			// (only y/yes/true/on inject); rejected here.
			name: "inject garbage", pod: istioPod(map[string]string{aInject: "maybe"}),
			meshed: true, problems: []string{aInject},
		},
		{
			// Template: mode NONE → no istio-init container, no iptables.
			name: "interceptionMode NONE", pod: istioPod(map[string]string{aMode: "NONE", aExclIPs: "garbage"}),
			meshed: true, reason: "interceptionMode=NONE",
		},
		{
			// TPROXY is valid for Istio (validateInterceptionMode) and
			// served by the same capture: the sidecar's inbound sockets
			// keep the original destination as their local address.
			name: "interceptionMode TPROXY", pod: istioPod(map[string]string{aMode: "TPROXY"}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			name: "interceptionMode REDIRECT", pod: istioPod(map[string]string{aMode: "REDIRECT"}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// validateInterceptionMode compares case-sensitively.
			name: "interceptionMode lowercase", pod: istioPod(map[string]string{aMode: "redirect"}),
			meshed: true, problems: []string{aMode},
		},
		{
			// injectRequired: host-network pods are never injected.
			name: "host network", pod: func() *corev1.Pod { p := istioPod(nil); p.Spec.HostNetwork = true; return p }(),
			meshed: true, reason: "host network",
		},

		// --- includeOutboundIPRanges (-i) ---
		{
			// -i "": separateV4V6 yields no CIDRs, no ISTIO_REDIRECT rule.
			name: "include IPs empty", pod: istioPod(map[string]string{aInclIPs: ""}),
			meshed: true, capture: true, out: &Outbound{}, in: allIn,
		},
		{
			// -i "*": IsWildcard → "-j ISTIO_REDIRECT" for everything.
			name: "include IPs wildcard", pod: istioPod(map[string]string{aInclIPs: "*"}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// -i list: one "-d cidr -j ISTIO_REDIRECT" per CIDR.
			name: "include IPs list", pod: istioPod(map[string]string{aInclIPs: "172.16.0.0/12,10.0.0.0/8"}),
			meshed: true, capture: true, out: &Outbound{IncludeCIDRs: prefixes("10.0.0.0/8", "172.16.0.0/12")}, in: allIn,
		},
		{
			// Injector rejects spaces in CIDR lists (no TrimSpace); accepted
			// here, the meaning being unambiguous (documented leniency).
			name: "include IPs whitespace", pod: istioPod(map[string]string{aInclIPs: " 10.0.0.0/8 , 172.16.0.0/12 "}),
			meshed: true, capture: true, out: &Outbound{IncludeCIDRs: prefixes("10.0.0.0/8", "172.16.0.0/12")}, in: allIn,
		},
		{
			// Duplicates: istio-iptables appends the same rule twice.
			name: "include IPs duplicates", pod: istioPod(map[string]string{aInclIPs: "10.0.0.0/8,10.0.0.0/8"}),
			meshed: true, capture: true, out: &Outbound{IncludeCIDRs: prefixes("10.0.0.0/8")}, in: allIn,
		},
		{
			// iptables masks "-d 10.1.2.3/8" to 10.0.0.0/8.
			name: "include IPs unmasked", pod: istioPod(map[string]string{aInclIPs: "10.1.2.3/8"}),
			meshed: true, capture: true, out: &Outbound{IncludeCIDRs: prefixes("10.0.0.0/8")}, in: allIn,
		},
		{
			// separateV4V6: IPv6 prefixes go to ip6tables only.
			name: "include IPs mixed families", pod: istioPod(map[string]string{aInclIPs: "10.0.0.0/8,fd00::/8"}),
			meshed: true, capture: true,
			out: &Outbound{IncludeCIDRs: prefixes("10.0.0.0/8"), IncludeCIDRsV6: prefixes("fd00::/8")}, in: allIn,
		},
		{
			// Only IPv6 ranges: no IPv4 include rule at all.
			name: "include IPs IPv6 only", pod: istioPod(map[string]string{aInclIPs: "fd00::/8"}),
			meshed: true, capture: true, out: &Outbound{IncludeCIDRsV6: prefixes("fd00::/8")}, in: allIn,
		},
		{
			// ValidateIncludeIPRanges: only the exact value "*" is a wildcard.
			name: "include IPs wildcard in list", pod: istioPod(map[string]string{aInclIPs: "*,10.0.0.0/8"}),
			meshed: true, problems: []string{aInclIPs},
		},
		{
			// netip.ParsePrefix("10.0.0.1") fails: injector rejects.
			name: "include IPs bare address", pod: istioPod(map[string]string{aInclIPs: "10.0.0.1"}),
			meshed: true, problems: []string{aInclIPs},
		},
		{
			name: "include IPs garbage", pod: istioPod(map[string]string{aInclIPs: "10.0.0.0/8,garbage"}),
			meshed: true, problems: []string{aInclIPs},
		},
		{
			name: "include IPs bad length", pod: istioPod(map[string]string{aInclIPs: "10.0.0.0/33"}),
			meshed: true, problems: []string{aInclIPs},
		},
		{
			name: "include IPs at limit", pod: istioPod(map[string]string{aInclIPs: cidrCSV(MaxCIDRs)}),
			meshed: true, capture: true,
		},
		{
			name: "include IPs over limit", pod: istioPod(map[string]string{aInclIPs: cidrCSV(MaxCIDRs + 1)}),
			meshed: true, problems: []string{aInclIPs}, errIs: ErrOverLimit,
		},

		// --- excludeOutboundIPRanges (-x) ---
		{
			// Exclusions RETURN before inclusions in ISTIO_OUTPUT.
			name: "exclude IPs", pod: istioPod(map[string]string{aExclIPs: "169.254.169.254/32, fd00::/8"}),
			meshed: true, capture: true,
			out: &Outbound{AllIPs: true, ExcludeCIDRs: prefixes("169.254.169.254/32"), ExcludeCIDRsV6: prefixes("fd00::/8")}, in: allIn,
		},
		{
			name: "exclude IPs empty", pod: istioPod(map[string]string{aExclIPs: ""}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// Run(): "invalid value for OUTBOUND_IP_RANGES_EXCLUDE" for "*".
			name: "exclude IPs wildcard", pod: istioPod(map[string]string{aExclIPs: "*"}),
			meshed: true, problems: []string{aExclIPs},
		},
		{
			// Empty entries: config.Split drops them.
			name: "exclude IPs empty entries", pod: istioPod(map[string]string{aExclIPs: "10.0.0.0/8,,"}),
			meshed: true, capture: true, out: &Outbound{AllIPs: true, ExcludeCIDRs: prefixes("10.0.0.0/8")}, in: allIn,
		},

		// --- excludeOutboundPorts (-o), includeOutboundPorts (-q) ---
		{
			// parsePort trims each entry; duplicates harmless.
			name: "exclude outbound ports", pod: istioPod(map[string]string{aExclOut: " 5432, 3306,3306 "}),
			meshed: true, capture: true, out: &Outbound{AllIPs: true, ExcludePorts: []uint16{3306, 5432}}, in: allIn,
		},
		{
			name: "exclude outbound port 65535", pod: istioPod(map[string]string{aExclOut: "65535"}),
			meshed: true, capture: true, out: &Outbound{AllIPs: true, ExcludePorts: []uint16{65535}}, in: allIn,
		},
		{
			// ParseUint(…, 16) rejects 65536.
			name: "exclude outbound port 65536", pod: istioPod(map[string]string{aExclOut: "65536"}),
			meshed: true, problems: []string{aExclOut},
		},
		{
			// Istio accepts 0 (a rule matching nothing); rejected here as a
			// certain mistake (documented deviation).
			name: "exclude outbound port 0", pod: istioPod(map[string]string{aExclOut: "0"}),
			meshed: true, problems: []string{aExclOut},
		},
		{
			name: "exclude outbound port negative", pod: istioPod(map[string]string{aExclOut: "-1"}),
			meshed: true, problems: []string{aExclOut},
		},
		{
			// Istio port lists take no ranges (iptables --dport gets one port).
			name: "exclude outbound port range", pod: istioPod(map[string]string{aExclOut: "80-90"}),
			meshed: true, problems: []string{aExclOut},
		},
		{
			// "*" would reach iptables as --dport "*" and fail.
			name: "exclude outbound ports wildcard", pod: istioPod(map[string]string{aExclOut: "*"}),
			meshed: true, problems: []string{aExclOut},
		},
		{
			// -q: "--dport p -j ISTIO_REDIRECT" after the CIDR exclusions.
			name: "include outbound ports", pod: istioPod(map[string]string{aInclIPs: "", aInclOut: "443,80"}),
			meshed: true, capture: true, out: &Outbound{IncludePorts: []uint16{80, 443}}, in: allIn,
		},
		{
			name: "outbound ports at limit", pod: istioPod(map[string]string{aExclOut: portCSV(portRange(1000, 1000+MaxPorts-1))}),
			meshed: true, capture: true,
			out: &Outbound{AllIPs: true, ExcludePorts: portRange(1000, 1000+MaxPorts-1)}, in: allIn,
		},
		{
			name: "outbound ports over limit", pod: istioPod(map[string]string{aExclOut: portCSV(portRange(1000, 1000+MaxPorts))}),
			meshed: true, problems: []string{aExclOut}, errIs: ErrOverLimit,
		},

		// --- includeInboundPorts (-b), excludeInboundPorts (-d) ---
		{
			// -b "": handleInboundPortsInclude adds no inbound rule.
			name: "include inbound empty", pod: istioPod(map[string]string{aInclIn: ""}),
			meshed: true, capture: true, out: allOut, in: &Inbound{ExcludePorts: istioNever},
		},
		{
			// -b list: only those ports jump to ISTIO_IN_REDIRECT, and -d is
			// not applied.
			name: "include inbound list ignores excludes", pod: istioPod(map[string]string{aInclIn: "9090,8080", aExclIn: "8080"}),
			meshed: true, capture: true, out: allOut,
			in: &Inbound{IncludePorts: []uint16{8080, 9090}, ExcludePorts: istioNever},
		},
		{
			// -b "*": -d ports RETURN, the rest is redirected.
			name: "exclude inbound with wildcard", pod: istioPod(map[string]string{aInclIn: "*", aExclIn: "8080, 15020"}),
			meshed: true, capture: true, out: allOut,
			in: &Inbound{AllPorts: true, ExcludePorts: []uint16{8080, 15008, 15020, 15021, 15090}},
		},
		{
			name: "include inbound wildcard in list", pod: istioPod(map[string]string{aInclIn: "80,*"}),
			meshed: true, problems: []string{aInclIn},
		},
		{
			// ValidateExcludeInboundPorts: "*" is not a port.
			name: "exclude inbound wildcard", pod: istioPod(map[string]string{aExclIn: "*"}),
			meshed: true, problems: []string{aExclIn},
		},
		{
			// 60 user ports + 15008,15020,15021,15090 = 64 fit.
			name: "exclude inbound fits with never-captured", pod: istioPod(map[string]string{aExclIn: portCSV(portRange(2000, 2059))}),
			meshed: true, capture: true, out: allOut,
			in: &Inbound{AllPorts: true, ExcludePorts: mergePorts(portRange(2000, 2059), istioNever)},
		},
		{
			// 61 user ports + the 4 never-captured = 65: over.
			name: "exclude inbound over limit with never-captured", pod: istioPod(map[string]string{aExclIn: portCSV(portRange(2000, 2060))}),
			meshed: true, problems: []string{aExclIn}, errIs: ErrOverLimit,
		},

		// --- status.sidecar.istio.io/port ---
		{
			// excludeInboundPort(statusPort, -d) appends it to -d.
			name: "status port", pod: istioPod(map[string]string{aStatus: "8888"}),
			meshed: true, capture: true, out: allOut,
			in: &Inbound{AllPorts: true, ExcludePorts: []uint16{8888, 15008, 15020, 15021, 15090}},
		},
		{
			// excludeInboundPort: "0" adds nothing.
			name: "status port 0", pod: istioPod(map[string]string{aStatus: "0"}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// validateStatusPort: ParseUint(TrimSpace(v), 10, 16).
			name: "status port garbage", pod: istioPod(map[string]string{aStatus: "http"}),
			meshed: true, problems: []string{aStatus},
		},
		{
			name: "status port 65536", pod: istioPod(map[string]string{aStatus: "65536"}),
			meshed: true, problems: []string{aStatus},
		},

		// --- unsupported and several problems at once ---
		{
			name: "excludeInterfaces unsupported", pod: istioPod(map[string]string{"traffic.sidecar.istio.io/excludeInterfaces": "eth1"}),
			meshed: true, problems: []string{"traffic.sidecar.istio.io/excludeInterfaces"}, errIs: ErrUnsupported,
		},
		{
			name: "excludeInterfaces empty", pod: istioPod(map[string]string{"traffic.sidecar.istio.io/excludeInterfaces": ""}),
			meshed: true, capture: true, out: allOut, in: allIn,
		},
		{
			// The injector reports every bad annotation (multierror).
			name: "several problems", pod: istioPod(map[string]string{aExclIPs: "x", aExclOut: "y", aStatus: "z"}),
			meshed: true, problems: []string{aStatus, aExclIPs, aExclOut}, reason: "3 rejected",
		},
	}
	runEvalCases(t, tests)
}

func TestEvaluateLinkerd(t *testing.T) {
	never := []uint16{4190, 4191}
	lpod := func(a map[string]string) *corev1.Pod { return meshedPod("linkerd-proxy", a) }
	tests := []evalCase{
		{
			// proxy-init: --inbound-ports-to-ignore "4190,4191,…".
			name: "linkerd-proxy", pod: lpod(nil),
			meshed: true, capture: true, out: &Outbound{AllIPs: true}, in: &Inbound{AllPorts: true, ExcludePorts: never},
		},
		{
			// Linkerd docs: "a port number or a range a-b".
			name: "skip ports with ranges", pod: lpod(map[string]string{
				"config.linkerd.io/skip-outbound-ports": "25,587,3306-3307",
				"config.linkerd.io/skip-inbound-ports":  "9000-9001",
				"config.linkerd.io/skip-subnets":        "169.254.169.254/32",
			}),
			meshed: true, capture: true,
			out: &Outbound{AllIPs: true, ExcludePorts: []uint16{25, 587, 3306, 3307}, ExcludeCIDRs: prefixes("169.254.169.254/32")},
			in:  &Inbound{AllPorts: true, ExcludePorts: []uint16{4190, 4191, 9000, 9001}},
		},
		{
			name: "range over limit", pod: lpod(map[string]string{"config.linkerd.io/skip-outbound-ports": "1-65535"}),
			meshed: true, problems: []string{"config.linkerd.io/skip-outbound-ports"}, errIs: ErrOverLimit,
		},
		{
			name: "range reversed", pod: lpod(map[string]string{"config.linkerd.io/skip-outbound-ports": "90-80"}),
			meshed: true, problems: []string{"config.linkerd.io/skip-outbound-ports"},
		},
		{
			name: "range open", pod: lpod(map[string]string{"config.linkerd.io/skip-inbound-ports": "80-"}),
			meshed: true, problems: []string{"config.linkerd.io/skip-inbound-ports"},
		},
		{
			name: "range from 0", pod: lpod(map[string]string{"config.linkerd.io/skip-inbound-ports": "0-10"}),
			meshed: true, problems: []string{"config.linkerd.io/skip-inbound-ports"},
		},
		{
			name: "inject disabled", pod: lpod(map[string]string{"linkerd.io/inject": "disabled"}),
			meshed: true, reason: "linkerd.io/inject=disabled",
		},
		{
			name: "proxy uid as preset", pod: lpod(map[string]string{"config.linkerd.io/proxy-uid": "2102"}),
			meshed: true, capture: true,
		},
		{
			// A proxy under another uid would have its own traffic captured.
			name: "proxy uid moved", pod: lpod(map[string]string{"config.linkerd.io/proxy-uid": "1000"}),
			meshed: true, problems: []string{"config.linkerd.io/proxy-uid"}, errIs: ErrUnsupported,
		},
		{
			name: "istio annotations mean nothing to linkerd", pod: lpod(map[string]string{aExclIPs: "garbage", aMode: "TPROXY"}),
			meshed: true, capture: true,
		},
	}
	for i := range tests {
		tests[i].preset = "linkerd"
	}
	runEvalCases(t, tests)
}

func TestEvaluateKuma(t *testing.T) {
	kpod := func(a map[string]string) *corev1.Pod { return meshedPod("kuma-sidecar", a) }
	tests := []evalCase{
		{
			name: "kuma-sidecar", pod: kpod(nil),
			meshed: true, capture: true, out: &Outbound{AllIPs: true}, in: &Inbound{AllPorts: true},
		},
		{
			// Kuma docs: exclude-outbound-ips "192.168.10.1,fd10::/16".
			name: "exclude ips and ports", pod: kpod(map[string]string{
				"traffic.kuma.io/exclude-outbound-ips":   "192.168.10.1,fd10::/16",
				"traffic.kuma.io/exclude-outbound-ports": "5678,8900",
				"traffic.kuma.io/exclude-inbound-ports":  "1234",
			}),
			meshed: true, capture: true,
			out: &Outbound{AllIPs: true, ExcludePorts: []uint16{5678, 8900}, ExcludeCIDRs: prefixes("192.168.10.1/32"), ExcludeCIDRsV6: prefixes("fd10::/16")},
			in:  &Inbound{AllPorts: true, ExcludePorts: []uint16{1234}},
		},
		{
			name: "no ranges for kuma", pod: kpod(map[string]string{"traffic.kuma.io/exclude-outbound-ports": "1000-1001"}),
			meshed: true, problems: []string{"traffic.kuma.io/exclude-outbound-ports"},
		},
		{
			// Source-address exclusions are not in the model: capturing would
			// capture what the user excluded.
			name: "exclude inbound ips unsupported", pod: kpod(map[string]string{"traffic.kuma.io/exclude-inbound-ips": "10.0.0.0/8"}),
			meshed: true, problems: []string{"traffic.kuma.io/exclude-inbound-ips"}, errIs: ErrUnsupported,
		},
		{
			name: "injection label disabled", pod: func() *corev1.Pod {
				p := kpod(nil)
				p.Labels = map[string]string{"kuma.io/sidecar-injection": "disabled"}
				return p
			}(),
			meshed: true, reason: "kuma.io/sidecar-injection=disabled",
		},
		{
			name: "injected annotation false is no membership", pod: meshedPod("app2", map[string]string{"kuma.io/sidecar-injected": "false"}),
			reason: "no kuma-sidecar",
		},
	}
	for i := range tests {
		tests[i].preset = "kuma"
	}
	runEvalCases(t, tests)
}

func runEvalCases(t *testing.T, tests []evalCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := tc.preset
			if name == "" {
				name = "istio"
			}
			p, err := PresetByName(name)
			if err != nil {
				t.Fatal(err)
			}
			ev := p.Evaluate(tc.pod)
			if ev.Meshed != tc.meshed || ev.Capture != tc.capture {
				t.Fatalf("meshed=%v capture=%v, want meshed=%v capture=%v (reason %q, problems %v)",
					ev.Meshed, ev.Capture, tc.meshed, tc.capture, ev.Reason, ev.Problems)
			}
			var keys []string
			for _, pr := range ev.Problems {
				keys = append(keys, pr.Annotation)
				if tc.errIs != nil && !errors.Is(pr, tc.errIs) {
					t.Errorf("problem %v does not wrap %v", pr, tc.errIs)
				}
				if pr.Valid == "" || pr.Err == nil {
					t.Errorf("problem %#v lacks Valid or Err", pr)
				}
			}
			slices.Sort(keys)
			want := slices.Sorted(slices.Values(tc.problems))
			if !slices.Equal(keys, want) {
				t.Errorf("problems on %v, want %v: %v", keys, want, ev.Problems)
			}
			if tc.reason != "" && !strings.Contains(ev.Reason, tc.reason) {
				t.Errorf("reason %q does not contain %q", ev.Reason, tc.reason)
			}
			if !ev.Capture {
				if ev.Reason == "" {
					t.Error("not captured without a reason")
				}
				if !reflect.DeepEqual(ev.Outbound, Outbound{}) || !reflect.DeepEqual(ev.Inbound, Inbound{}) {
					t.Errorf("uncaptured pod carries a policy: %+v %+v", ev.Outbound, ev.Inbound)
				}
				return
			}
			if tc.out != nil && !reflect.DeepEqual(ev.Outbound, *tc.out) {
				t.Errorf("outbound\n got %+v\nwant %+v", ev.Outbound, *tc.out)
			}
			if tc.in != nil && !reflect.DeepEqual(ev.Inbound, *tc.in) {
				t.Errorf("inbound\n got %+v\nwant %+v", ev.Inbound, *tc.in)
			}
		})
	}
}

func TestPresetByName(t *testing.T) {
	for _, tc := range []struct {
		name                string
		uid                 uint32
		outbound, inbound   uint16
		sidecar             string
		wantNeverCapturedIn []uint16
		loopbackOnly        bool // outbound listener on [::1] only
	}{
		{"istio", 1337, 15001, 15006, "istio-proxy", []uint16{15008, 15020, 15021, 15090}, false},
		{"linkerd", 2102, 4140, 4143, "linkerd-proxy", []uint16{4190, 4191}, true},
		{"kuma", 5678, 15001, 15006, "kuma-sidecar", nil, false},
	} {
		p, err := PresetByName(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if p.ProxyUID != tc.uid || p.ProxyGID != tc.uid || p.OutboundPort != tc.outbound || p.InboundPort != tc.inbound ||
			p.SidecarContainer != tc.sidecar || !slices.Equal(p.NeverCapturedInbound, tc.wantNeverCapturedIn) ||
			p.OutboundListenerLoopbackOnly != tc.loopbackOnly {
			t.Errorf("%s: %+v", tc.name, p)
		}
	}
	if _, err := PresetByName("consul"); err == nil || !strings.Contains(err.Error(), "istio, linkerd, kuma") {
		t.Errorf("unknown preset: %v", err)
	}
	// Presets are values: changing one copy changes no other.
	a, _ := PresetByName("istio")
	a.NeverCapturedInbound[0] = 1
	a.Lists[0].Key = "x"
	b, _ := PresetByName("istio")
	if b.NeverCapturedInbound[0] != 15008 || b.Lists[0].Key == "x" {
		t.Error("presets share state between calls")
	}
}

func TestEvaluateNilPod(t *testing.T) {
	p, _ := PresetByName("istio")
	if ev := p.Evaluate(nil); ev.Meshed || ev.Capture || ev.Reason == "" {
		t.Errorf("nil pod: %+v", ev)
	}
}

func TestProblemError(t *testing.T) {
	p, _ := PresetByName("istio")
	ev := p.Evaluate(istioPod(map[string]string{aExclOut: "http"}))
	if len(ev.Problems) != 1 {
		t.Fatalf("problems %v", ev.Problems)
	}
	msg := ev.Problems[0].Error()
	for _, want := range []string{aExclOut, `"http"`, "valid: comma-separated TCP ports 1-65535"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
}

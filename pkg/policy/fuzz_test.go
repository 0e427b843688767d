package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FuzzEvaluate feeds arbitrary annotation values to every preset and checks
// that Evaluate never panics and that its result keeps the invariants the
// controller and the datapath rely on. Run it with
//
//	go test -run='^$' -fuzz=FuzzEvaluate -fuzztime=10s ./pkg/policy
func FuzzEvaluate(f *testing.F) {
	seeds := [][9]string{
		{"", "", "", "", "", "", "", "", ""},
		{"*", "", "", "", "*", "", "", "", ""},
		{"10.0.0.0/8, fd00::/8", "169.254.169.254/32", "443", "3306,5432", "8080", "8080", "15020", "REDIRECT", "true"},
		{"*,10.0.0.0/8", "*", "*", "0", "80,*", "*", "65536", "TPROXY", "maybe"},
		{"10.0.0.1", "10.1.2.3/8,,", "65535", "-1", "", "1-65535", "0", "NONE", "false"},
		{"25,587,3306-3307", "90-80", "80-", " 1 - 2 ", "0-10", "192.168.10.1,fd10::/16", " 8888 ", "redirect", "disabled"},
		{cidrCSV(MaxCIDRs + 1), portCSV(portRange(1, MaxPorts+1)), "", "", "", portCSV(portRange(2000, 2060)), "", "", ""},
		{"::ffff:10.0.0.0/104", "fe80::1%eth0/64", "1-64", "1-65", "\t80\n", "08080", "+80", "", "1"},
	}
	// The DNS switch annotation (shape 128 sets it from the second value).
	f.Add(uint8(0), uint8(128), "", "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n", "", "", "", "", "", "", "")
	f.Add(uint8(0), uint8(128), "", "proxyMetadata: [", "", "", "", "", "", "", "")
	for i, s := range seeds {
		for p := range 3 {
			f.Add(uint8(p), uint8(i), s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8])
		}
	}
	presets := builtinPresets()
	f.Fuzz(func(t *testing.T, presetIdx, shape uint8, v0, v1, v2, v3, v4, v5, status, mode, inject string) {
		p := presets[int(presetIdx)%len(presets)]
		values := []string{v0, v1, v2, v3, v4, v5}
		pod := fuzzPod(&p, shape, values, status, mode, inject)

		ev := p.Evaluate(pod)
		if again := p.Evaluate(pod); !reflect.DeepEqual(ev, again) {
			t.Fatalf("not deterministic:\n%+v\n%+v", ev, again)
		}
		checkEvaluation(t, &p, pod, ev)
		if ev.DNSCapture && !ev.Capture || ev.DNSCapture && len(ev.DNSProblems) > 0 {
			t.Fatalf("DNS capture %v with capture %v and DNS problems %v", ev.DNSCapture, ev.Capture, ev.DNSProblems)
		}
	})
}

// fuzzPod builds a pod meshed in one of three ways (shape), carrying the
// preset's own annotation keys with the fuzzed values; an absent key is
// encoded by a value equal to "\x00".
func fuzzPod(p *Preset, shape uint8, values []string, status, mode, inject string) *corev1.Pod {
	annotations := map[string]string{}
	set := func(key, value string) {
		if key != "" && value != "\x00" {
			annotations[key] = value
		}
	}
	for i, l := range p.Lists {
		set(l.Key, values[i%len(values)])
	}
	set(p.StatusPortAnnotation, status)
	set(p.InterceptionModeAnnotation, mode)
	if len(p.Unsupported) > 0 && shape&8 != 0 {
		set(p.Unsupported[int(shape>>4)%len(p.Unsupported)], values[0])
	}
	if len(p.Pinned) > 0 && shape&64 != 0 {
		set(p.Pinned[int(shape>>4)%len(p.Pinned)].Key, status)
	}
	if p.DNSSwitch != nil && shape&128 != 0 {
		set(p.DNSSwitch.ProxyConfigAnnotation, values[1])
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: annotations}}
	if shape&4 != 0 {
		pod.Labels = map[string]string{p.Inject.Key: inject}
	} else {
		set(p.Inject.Key, inject)
	}
	always := corev1.ContainerRestartPolicyAlways
	switch shape % 4 {
	case 0:
		pod.Spec.Containers = []corev1.Container{{Name: "app"}, {Name: p.SidecarContainer}}
	case 1:
		pod.Spec.InitContainers = []corev1.Container{{Name: p.SidecarContainer, RestartPolicy: &always}}
	case 2:
		set(p.InjectedAnnotation, "{}")
	case 3:
		pod.Spec.Containers = []corev1.Container{{Name: "app"}}
	}
	if shape&128 != 0 {
		if c := p.sidecarContainer(pod); c != nil {
			c.Args = []string{"proxy", values[5]}
			c.Env = []corev1.EnvVar{{Name: "DISABLE_ENVOY", Value: values[4]}}
		}
		if shape&32 != 0 {
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: values[3]})
		}
	}
	return pod
}

func checkEvaluation(t *testing.T, p *Preset, pod *corev1.Pod, ev Evaluation) {
	t.Helper()
	if ev.Capture && (!ev.Meshed || len(ev.Problems) > 0) {
		t.Fatalf("captured while unmeshed or with problems: %+v", ev)
	}
	if !ev.Capture {
		if ev.Reason == "" {
			t.Fatalf("not captured without a reason: %+v", ev)
		}
		if !reflect.DeepEqual(ev.Outbound, Outbound{}) || !reflect.DeepEqual(ev.Inbound, Inbound{}) {
			t.Fatalf("uncaptured pod carries a policy: %+v", ev)
		}
	}

	// Every Problem names an annotation (or the inject label) the pod
	// carries, with its value, and says what is valid.
	problemKeys := map[string]bool{}
	for _, pr := range ev.Problems {
		problemKeys[pr.Annotation] = true
		v, ok := pod.Annotations[pr.Annotation]
		if lv, lok := pod.Labels[pr.Annotation]; lok && pr.Annotation == p.Inject.Key {
			v, ok = lv, true
		}
		if !ok || v != pr.Value || pr.Err == nil || pr.Valid == "" {
			t.Fatalf("problem %#v does not match the pod's annotations %v", pr, pod.Annotations)
		}
	}

	// Problems non-empty iff a value was rejected: each list value its
	// parser rejects on its own is a Problem (unless Evaluate stopped before
	// reading lists), and no accepted one is (except the inbound exclude
	// list, which can overflow once merged with the never-captured ports).
	stoppedEarly := !ev.Capture && len(ev.Problems) == 0
	for _, l := range p.Lists {
		value, ok := pod.Annotations[l.Key]
		if !ok {
			continue
		}
		var err error
		if l.Field.isCIDR() {
			_, err = parseCIDRList(value, l.Syntax)
		} else {
			_, err = parsePortList(value, l.Syntax)
		}
		switch {
		case err != nil && !stoppedEarly && !problemKeys[l.Key]:
			t.Fatalf("%s=%q rejected by its parser (%v) but no Problem: %+v", l.Key, value, err, ev)
		case err == nil && problemKeys[l.Key] && l.Field != InboundExcludePorts:
			t.Fatalf("%s=%q accepted by its parser but reported: %+v", l.Key, value, ev.Problems)
		}
	}

	if !ev.Capture {
		return
	}
	o, in := ev.Outbound, ev.Inbound
	for name, ports := range map[string][]uint16{
		"outbound include": o.IncludePorts, "outbound exclude": o.ExcludePorts,
		"inbound include": in.IncludePorts, "inbound exclude": in.ExcludePorts,
	} {
		if len(ports) > MaxPorts {
			t.Fatalf("%s ports: %d over the limit", name, len(ports))
		}
		for i, port := range ports {
			if port == 0 || (i > 0 && ports[i-1] >= port) {
				t.Fatalf("%s ports not sorted, unique and non-zero: %v", name, ports)
			}
		}
	}
	for name, l := range map[string]struct {
		cidrs []netip.Prefix
		v4    bool
	}{
		"include v4": {o.IncludeCIDRs, true}, "exclude v4": {o.ExcludeCIDRs, true},
		"include v6": {o.IncludeCIDRsV6, false}, "exclude v6": {o.ExcludeCIDRsV6, false},
	} {
		if len(l.cidrs) > MaxCIDRs {
			t.Fatalf("%s CIDRs: %d over the limit", name, len(l.cidrs))
		}
		for i, c := range l.cidrs {
			if !c.IsValid() || c.Addr().Is4() != l.v4 || c != c.Masked() || (i > 0 && !prefixLess(l.cidrs[i-1], c)) {
				t.Fatalf("%s CIDRs not valid, of their family, masked, sorted and unique: %v", name, l.cidrs)
			}
		}
	}
	if o.AllIPs && len(o.IncludeCIDRs) > 0 {
		t.Fatalf("AllIPs with include CIDRs: %+v", o)
	}
	if in.AllPorts && len(in.IncludePorts) > 0 {
		t.Fatalf("AllPorts with include ports: %+v", in)
	}
	for _, port := range p.NeverCapturedInbound {
		if !slices.Contains(in.ExcludePorts, port) {
			t.Fatalf("never-captured port %d missing from %v", port, in.ExcludePorts)
		}
	}
	if p.StatusPortAnnotation != "" {
		want := uint64(p.DefaultStatusPort)
		if v, set := pod.Annotations[p.StatusPortAnnotation]; set {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 16)
			if err != nil {
				t.Fatalf("status port %q unparseable yet captured", v)
			}
			want = n
		}
		if want != 0 && !slices.Contains(in.ExcludePorts, uint16(want)) {
			t.Fatalf("status port %d missing from %v", want, in.ExcludePorts)
		}
	}
}

func prefixLess(a, b netip.Prefix) bool {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c < 0
	}
	return a.Bits() < b.Bits()
}

package policy

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Preset describes one mesh: its sidecar's identity and ports, how to tell
// a pod carries its sidecar, and how its annotations read. Presets are
// data; Evaluate is shared by all of them.
type Preset struct {
	Name               string
	ProxyUID, ProxyGID uint32
	OutboundPort       uint16
	InboundPort        uint16
	// OutboundListenerLoopbackOnly says the sidecar's IPv6 outbound
	// listener is on [::1] only, not on the wildcard [::] (Linkerd:
	// LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS is 127.0.0.1 and [::1]; Envoy
	// under Istio and Kuma listen on [::]). A native IPv6 connection then
	// goes to [::1] from ::1 instead of to the pod's IPv6 address from that
	// address (docs/datapath.md, "Native IPv6").
	OutboundListenerLoopbackOnly bool
	// NeverCapturedInbound are inbound ports never redirected (Istio:
	// 15008, 15020, 15021, 15090); the status port is added per pod.
	NeverCapturedInbound []uint16
	// TunnelPort is the one port of its own pod IP the sidecar reaches
	// directly rather than through InboundPort (Istio: HBONE 15008); 0
	// for none.
	TunnelPort uint16

	// SidecarContainer is the proxy's container name, found among the
	// containers or as a native sidecar (an init container with
	// restartPolicy Always).
	SidecarContainer string
	// InjectedAnnotation, when set on a pod, marks it as carrying the
	// sidecar even if no container has SidecarContainer's name (Istio:
	// sidecar.istio.io/status). The value "false" does not count.
	InjectedAnnotation string
	// Inject is the per-pod switch that turns capture off.
	Inject InjectSwitch
	// IptablesInitContainers are the mesh's own capture init containers
	// (Istio: istio-init): a pod that has one is already captured by
	// iptables and is left alone, as istio-cni leaves it.
	IptablesInitContainers []string
	// DisableEnv is an environment variable of the sidecar container that,
	// when true (strconv.ParseBool), means the proxy does not run (Istio:
	// DISABLE_ENVOY, skipped by istio-cni).
	DisableEnv string
	// Role, when set, tells a sidecar from a gateway by the proxy
	// container's arguments (Istio: "proxy sidecar" vs "proxy router"):
	// a pod whose proxy plays another role is not captured.
	Role ProxyRole
	// InterceptionModeAnnotation selects REDIRECT, TPROXY or NONE (Istio
	// only; empty for meshes without one).
	InterceptionModeAnnotation string
	// StatusPortAnnotation names the pod's health port, never captured;
	// DefaultStatusPort applies when it is absent (Istio: 15020).
	StatusPortAnnotation string
	DefaultStatusPort    uint16
	// Lists are the annotations that shape Outbound and Inbound.
	Lists []ListAnnotation
	// Unsupported are annotations sockbridge cannot apply yet: a pod that
	// sets one to a non-empty value is not captured (a Problem wrapping
	// ErrUnsupported says so) rather than captured against its wishes.
	Unsupported []string
	// Pinned are annotations that may only repeat the preset's own
	// value (proxy uid and ports are load-time constants of the datapath).
	Pinned []PinnedValue

	// DNSPort is the sidecar's DNS proxy port on 127.0.0.1 and ::1
	// (Istio: 15053); 0 for a mesh whose DNS sockbridge does not capture.
	DNSPort uint16
	// DNSSwitch is where a pod asks for DNS capture (Istio:
	// ISTIO_META_DNS_CAPTURE); nil for a mesh without one.
	DNSSwitch *DNSSwitch
	// MeshDNSCapture is the mesh-wide DNS capture default for pods that
	// do not say (Istio: meshConfig.defaultConfig.proxyMetadata's
	// ISTIO_META_DNS_CAPTURE, off by default); the agent's --dns-capture.
	MeshDNSCapture bool
}

// InjectSwitch is an on/off label or annotation; the label wins when both
// are set, as in Istio's injector and istio-cni.
type InjectSwitch struct {
	Key               string
	Enabled, Disabled []string
}

// ProxyRole reads the proxy's role from its container arguments: when
// args[0] is Command, args[1] must be Want.
type ProxyRole struct {
	Command, Want string
}

// PinnedValue is an annotation whose value, when present, must equal Want.
type PinnedValue struct {
	Key  string
	Want uint32
}

// ListField names the policy list an annotation fills.
type ListField int

// The policy lists an annotation can fill.
const (
	OutboundIncludeCIDRs ListField = iota // "*" sets Outbound.AllIPs
	OutboundExcludeCIDRs
	OutboundIncludePorts
	OutboundExcludePorts
	InboundIncludePorts // "*" sets Inbound.AllPorts
	InboundExcludePorts
)

func (f ListField) isCIDR() bool {
	return f == OutboundIncludeCIDRs || f == OutboundExcludeCIDRs
}

// ListAnnotation maps one annotation onto one policy list. An absent
// annotation leaves the list at CaptureAll's value.
type ListAnnotation struct {
	Key    string
	Field  ListField
	Syntax ListSyntax
}

// Evaluation is what a preset makes of one pod's spec and annotations.
type Evaluation struct {
	// Meshed: the pod carries this mesh's sidecar.
	Meshed bool
	// Capture: the datapath should intercept the pod's traffic (meshed,
	// interception mode supported and on, every annotation accepted).
	Capture bool
	// Reason says why Capture is false, for logs and events.
	Reason string
	// Outbound and Inbound are the policy to apply; zero when Capture is
	// false.
	Outbound Outbound
	Inbound  Inbound
	// Problems lists rejected annotation values. A pod with any Problem
	// is not captured (see the package documentation).
	Problems []Problem
	// DNSCapture: the pod asks for DNS capture (only ever true with
	// Capture); DNSSource says where that was read, for logs and events.
	DNSCapture bool
	DNSSource  string
	// DNSProblems are DNS switch values that are not a boolean: DNS is
	// not captured, as the sidecar itself reads them as off, and the rest
	// of the policy applies (see DNSSwitch).
	DNSProblems []Problem
}

// Problem is one annotation that could not be used.
type Problem struct {
	Annotation string // the annotation key
	Value      string // its value as given
	Valid      string // what would be valid
	Err        error
}

func (p Problem) Error() string {
	return fmt.Sprintf("annotation %s=%q: %v (valid: %s)", p.Annotation, p.Value, p.Err, p.Valid)
}

// Unwrap gives errors.Is access to ErrOverLimit and ErrUnsupported.
func (p Problem) Unwrap() error { return p.Err }

// PresetNames lists the built-in presets.
func PresetNames() []string {
	var names []string
	for _, p := range builtinPresets() {
		names = append(names, p.Name)
	}
	return names
}

// PresetByName returns a built-in preset: "istio", "linkerd" or "kuma".
// Each call returns a fresh copy.
func PresetByName(name string) (*Preset, error) {
	for _, p := range builtinPresets() {
		if p.Name == name {
			return &p, nil
		}
	}
	return nil, fmt.Errorf("mesh preset %q unknown (valid: %s)", name, strings.Join(PresetNames(), ", "))
}

// Evaluate applies the preset to a pod. It never panics on pod content and
// touches nothing but its result.
//
// Order: membership; then host network, the mesh's own iptables init
// container, a disabled proxy or a gateway (istio-cni's exclusions); the
// inject switch; interception mode NONE. Each of these gives Capture false
// with a Reason and no Problems, without reading the other annotations.
// Otherwise every rejected value is listed in Problems and, if there is
// any, Capture is false (the documented safe behaviour: no partial policy,
// nothing captured the user meant to exclude).
func (p *Preset) Evaluate(pod *corev1.Pod) Evaluation {
	if pod == nil {
		return Evaluation{Reason: "no pod"}
	}
	if !p.hasSidecar(pod) {
		return Evaluation{Reason: p.noSidecarReason()}
	}
	ev := Evaluation{Meshed: true}
	if pod.Spec.HostNetwork {
		// Istio never injects host-network pods (injectRequired): their
		// sockets are the node's.
		ev.Reason = "pod uses the host network"
		return ev
	}
	if reason := p.notASidecar(pod); reason != "" {
		ev.Reason = reason
		return ev
	}
	annotations := pod.Annotations

	// Switched off: decided before any value is judged, so a pod that is
	// not captured on purpose carries no Problems.
	injectValue, injectWhere, injectSet := p.injectValue(pod)
	if injectSet && slices.Contains(p.Inject.Disabled, injectValue) {
		ev.Reason = fmt.Sprintf("%s %s=%s", injectWhere, p.Inject.Key, injectValue)
		return ev
	}
	modeKey := p.InterceptionModeAnnotation
	mode, modeSet := annotations[modeKey]
	if modeKey != "" && modeSet && mode == "NONE" {
		ev.Reason = modeKey + "=NONE"
		return ev
	}

	if injectSet && !slices.Contains(p.Inject.Enabled, injectValue) {
		ev.Problems = append(ev.Problems, Problem{
			Annotation: p.Inject.Key, Value: injectValue,
			Valid: strings.Join(append(slices.Clone(p.Inject.Enabled), p.Inject.Disabled...), ", "),
			Err:   fmt.Errorf("%s value is neither on nor off", injectWhere),
		})
	}
	if modeKey != "" && modeSet {
		switch mode {
		case "REDIRECT", "TPROXY":
			// The same capture serves both: inbound connections reach
			// the sidecar unrewritten (sk_lookup), so the local address
			// is the original destination, TPROXY's contract, and
			// SO_ORIGINAL_DST answers with it for REDIRECT sidecars
			// (docs/annotations.md says what of TPROXY is not covered).
		default:
			ev.Problems = append(ev.Problems, Problem{
				Annotation: modeKey, Value: mode, Valid: "REDIRECT, TPROXY, NONE",
				Err: errors.New("unknown interception mode"),
			})
		}
	}

	dnsOn, dnsSource, dnsProblems, configProblem := p.dnsCapture(pod)
	if configProblem != nil {
		ev.Problems = append(ev.Problems, *configProblem)
	}

	for _, key := range p.Unsupported {
		if value := annotations[key]; strings.TrimSpace(value) != "" {
			ev.Problems = append(ev.Problems, Problem{
				Annotation: key, Value: value, Valid: "absent or empty",
				Err: fmt.Errorf("annotation %s: %w", key, ErrUnsupported),
			})
		}
	}

	for _, pin := range p.Pinned {
		value, ok := annotations[pin.Key]
		if !ok {
			continue
		}
		want := strconv.FormatUint(uint64(pin.Want), 10)
		if n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 32); err != nil || n != uint64(pin.Want) {
			ev.Problems = append(ev.Problems, Problem{
				Annotation: pin.Key, Value: value, Valid: want + " (the agent's " + p.Name + " preset)",
				Err: fmt.Errorf("the datapath is loaded with %s: %w", want, ErrUnsupported),
			})
		}
	}

	var neverCaptured []uint16
	neverCaptured = append(neverCaptured, p.NeverCapturedInbound...)
	if key := p.StatusPortAnnotation; key != "" {
		port := p.DefaultStatusPort
		if value, ok := annotations[key]; ok {
			// Istio validates it with strconv.ParseUint(TrimSpace(v), 10, 16)
			// (validateStatusPort); "0" means no status port (the
			// template's excludeInboundPort adds nothing for it).
			n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 16)
			if err != nil {
				ev.Problems = append(ev.Problems, Problem{
					Annotation: key, Value: value, Valid: "a port 1-65535, or 0 for none",
					Err: errors.New("not a port number"),
				})
			}
			port = uint16(n)
		}
		if port != 0 {
			neverCaptured = append(neverCaptured, port)
		}
	}

	out, in := CaptureAll()
	var userInboundExcludes []uint16
	for _, l := range p.Lists {
		value, ok := annotations[l.Key]
		if !ok {
			continue
		}
		if l.Field.isCIDR() {
			cidrs, err := parseCIDRList(value, l.Syntax)
			if err != nil {
				ev.Problems = append(ev.Problems, Problem{Annotation: l.Key, Value: value, Valid: validCIDRs(l.Syntax), Err: err})
				continue
			}
			switch l.Field {
			case OutboundIncludeCIDRs:
				out.AllIPs, out.IncludeCIDRs, out.IncludeCIDRsV6 = cidrs.All, cidrs.V4, cidrs.V6
			case OutboundExcludeCIDRs:
				out.ExcludeCIDRs, out.ExcludeCIDRsV6 = cidrs.V4, cidrs.V6
			}
			continue
		}
		ports, err := parsePortList(value, l.Syntax)
		if err != nil {
			ev.Problems = append(ev.Problems, Problem{Annotation: l.Key, Value: value, Valid: validPorts(l.Syntax), Err: err})
			continue
		}
		switch l.Field {
		case OutboundIncludePorts:
			out.IncludePorts = ports.Ports
		case OutboundExcludePorts:
			out.ExcludePorts = ports.Ports
		case InboundIncludePorts:
			in.AllPorts, in.IncludePorts = ports.All, ports.Ports
		case InboundExcludePorts:
			userInboundExcludes = ports.Ports
		}
	}

	// istio-iptables applies -d (exclude inbound ports) only when -b is
	// "*"; with a port list it redirects exactly those ports
	// (handleInboundPortsInclude). The never-captured ports are excluded
	// whatever -b says.
	if in.AllPorts {
		in.ExcludePorts = mergePorts(neverCaptured, userInboundExcludes)
	} else {
		in.ExcludePorts = mergePorts(neverCaptured)
	}
	if n := len(in.ExcludePorts); n > MaxPorts {
		key := p.StatusPortAnnotation
		for _, l := range p.Lists {
			if l.Field == InboundExcludePorts {
				key = l.Key
			}
		}
		ev.Problems = append(ev.Problems, Problem{
			Annotation: key, Value: annotations[key],
			Valid: fmt.Sprintf("at most %d ports together with the never-captured ones", MaxPorts),
			Err:   fmt.Errorf("%d inbound ports to exclude, more than the %d the datapath holds: %w", n, MaxPorts, ErrOverLimit),
		})
	}

	if len(ev.Problems) > 0 {
		ev.Reason = fmt.Sprintf("%d rejected annotation value(s), pod not captured: %s", len(ev.Problems), ev.Problems[0].Error())
		return ev
	}
	ev.Capture = true
	ev.Outbound, ev.Inbound = out, in
	ev.DNSCapture, ev.DNSSource, ev.DNSProblems = dnsOn, dnsSource, dnsProblems
	return ev
}

// hasSidecar reports whether the pod carries this preset's proxy: a
// container, a native sidecar, or the injected annotation.
func (p *Preset) hasSidecar(pod *corev1.Pod) bool {
	if p.SidecarContainer != "" {
		for _, c := range pod.Spec.Containers {
			if c.Name == p.SidecarContainer {
				return true
			}
		}
		for _, c := range pod.Spec.InitContainers {
			if c.Name == p.SidecarContainer && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
				return true
			}
		}
	}
	if key := p.InjectedAnnotation; key != "" {
		if v, ok := pod.Annotations[key]; ok && v != "false" {
			return true
		}
	}
	return false
}

// sidecarContainer returns the proxy container, regular or native.
func (p *Preset) sidecarContainer(pod *corev1.Pod) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == p.SidecarContainer {
			return &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == p.SidecarContainer {
			return &pod.Spec.InitContainers[i]
		}
	}
	return nil
}

// notASidecar says why a meshed pod must be left alone before any
// annotation is read: its traffic is already captured by the mesh's own
// iptables init container, its proxy is disabled, or it is a gateway.
// These are istio-cni's exclusions (cni/pkg/plugin/plugin.go).
func (p *Preset) notASidecar(pod *corev1.Pod) string {
	for _, c := range pod.Spec.InitContainers {
		if slices.Contains(p.IptablesInitContainers, c.Name) {
			return fmt.Sprintf("init container %s already captures with iptables", c.Name)
		}
	}
	c := p.sidecarContainer(pod)
	if c == nil {
		return ""
	}
	if p.DisableEnv != "" {
		for _, e := range c.Env {
			if on, err := strconv.ParseBool(e.Value); e.Name == p.DisableEnv && err == nil && on {
				return fmt.Sprintf("%s=%s on container %s", e.Name, e.Value, c.Name)
			}
		}
	}
	if r := p.Role; r.Command != "" && len(c.Args) > 1 && c.Args[0] == r.Command && c.Args[1] != r.Want {
		return fmt.Sprintf("container %s runs as %q, not %q", c.Name, c.Args[1], r.Want)
	}
	return ""
}

func (p *Preset) noSidecarReason() string {
	r := fmt.Sprintf("no %s container or native sidecar", p.SidecarContainer)
	if p.InjectedAnnotation != "" {
		r += " and no " + p.InjectedAnnotation + " annotation"
	}
	return r
}

// injectValue returns the inject switch's value and where it was found:
// the label when set, else the annotation. An empty value counts as
// absent, as in istio-cni.
func (p *Preset) injectValue(pod *corev1.Pod) (value, where string, ok bool) {
	if p.Inject.Key == "" {
		return "", "", false
	}
	if v, ok := pod.Labels[p.Inject.Key]; ok && v != "" {
		return v, "label", true
	}
	if v, ok := pod.Annotations[p.Inject.Key]; ok && v != "" {
		return v, "annotation", true
	}
	return "", "", false
}

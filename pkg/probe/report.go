package probe

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// SchemaVersion is the version of the report's JSON form (docs/probe-json.md).
// It changes only when a field is removed or changes meaning; new optional
// fields (added to docs/probe.schema.json) and new features may appear
// without a change.
const SchemaVersion = 1

// Kind says what sort of kernel capability a Feature is.
type Kind string

// The kinds of Feature.
const (
	KindKernel      Kind = "kernel"       // host setup: cgroup v2, bpffs, BTF, bpf_link
	KindProgramType Kind = "program_type" // BPF program type
	KindMapType     Kind = "map_type"     // BPF map type
	KindHelper      Kind = "helper"       // helper callable from one program type
	KindAttachType  Kind = "attach_type"  // attach point, tried on a temporary cgroup
	KindSelfTest    Kind = "selftest"     // functional test on a temporary cgroup and netns
)

// Need says which part of sockbridge a Feature is needed for.
type Need string

// What a Feature is needed for.
const (
	// NeedCapture features are essential: without one the agent refuses
	// to run.
	NeedCapture Need = "capture"
	// NeedSplice features enable socket splicing (sockhash + sk_msg);
	// without one the agent runs with splicing off.
	NeedSplice Need = "splice"
	// NeedIPv6 features capture AF_INET6 sockets (IPv6 destinations and
	// IPv4 dialled as ::ffff:a.b.c.d). Where the kernel has IPv6 sockets
	// they are essential, since without them an app's traffic could
	// bypass the sidecar; on a kernel without IPv6 (feature ipv6_sockets
	// unsupported) the agent captures IPv4 only.
	NeedIPv6 Need = "ipv6"
	// NeedInbound features capture connections to a pod from any source
	// (sk_lookup in the pod's network namespace, plus the sockhash map
	// type); without one the agent runs without inbound capture and
	// says so for every pod that asks for it.
	NeedInbound Need = "inbound"
	// NeedDNS features capture the pods' DNS (UDP sendmsg and recvmsg
	// hooks); without one the agent runs with DNS capture off and tells
	// the pods that ask for it.
	NeedDNS Need = "dns"
	// NeedNone features are reported for information only.
	NeedNone Need = "none"
)

// Feature is the probe's result for one kernel capability.
type Feature struct {
	// Name identifies the feature, e.g. "cgroup/connect4" or
	// "bpf_get_netns_cookie@sock_ops"; stable across releases.
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	// Supported is true when the probe found the feature working.
	Supported bool `json:"supported"`
	// MinKernel is the upstream kernel release that introduced the
	// feature ("5.15"); vendor kernels may have it earlier or later,
	// which is why the probe tests instead of comparing versions.
	MinKernel string `json:"min_kernel"`
	NeededFor Need   `json:"needed_for"`
	// Essential is NeededFor == NeedCapture.
	Essential bool `json:"essential"`
	// Detail says what was found when supported, e.g. a mount point.
	Detail string `json:"detail,omitempty"`
	// Error says why the feature is reported unsupported.
	Error string `json:"error,omitempty"`
	// Cause classifies why an unsupported feature is off: old_kernel,
	// kernel_config, lockdown, permission, not_mounted, probe_failed,
	// selftest_failed or disabled. "needs Linux X" is only ever said for
	// old_kernel.
	Cause Cause `json:"cause,omitempty"`

	err error // the check's error, classified into Cause by Run
	// AlsoNeededFor lists further optional features this one is needed
	// for (a helper that the splice and the inbound programs both call):
	// without it they are off too. NeededFor is the most essential one.
	AlsoNeededFor []Need `json:"also_needed_for,omitempty"`
}

// Report is the result of one probe run. Its JSON form (with the plan
// added) is documented in docs/probe-json.md and docs/probe.schema.json.
type Report struct {
	SchemaVersion int    `json:"schema_version"`
	KernelRelease string `json:"kernel_release"`
	// DurationMS is how long the probe took, in milliseconds.
	DurationMS int64     `json:"duration_ms"`
	Features   []Feature `json:"features"`
}

// Plan is what the agent enables given a report.
type Plan struct {
	// Capture is true when every essential feature is present: the agent
	// can install the datapath.
	Capture bool `json:"capture"`
	// Splice is true when capture is on and socket splicing (sockhash +
	// sk_msg) is present and passed its self-test.
	Splice bool `json:"splice"`
	// IPv6 is true when capture is on and covers AF_INET6 sockets; false
	// with capture on only on a kernel without IPv6 sockets (IPv4 only,
	// nothing can bypass).
	IPv6 bool `json:"ipv6"`
	// Inbound is true when capture is on and connections to a pod's
	// ports from any source can be handed to its sidecar (sk_lookup).
	Inbound bool `json:"inbound"`
	// DNS is true when capture is on and the DNS capture hooks work.
	DNS bool `json:"dns"`
	// Reasons explains each part that is off, one line each, e.g.
	// "splice: off because selftest/splice failed: ...".
	Reasons []string `json:"reasons"`
}

// MarshalJSON adds the plan to the report's fields.
func (r *Report) MarshalJSON() ([]byte, error) {
	type report Report // without this method
	return json.Marshal(struct {
		*report
		Plan Plan `json:"plan"`
	}{(*report)(r), r.Plan()})
}

// Feature returns the named feature and whether the report has it.
func (r *Report) Feature(name string) (Feature, bool) {
	i := slices.IndexFunc(r.Features, func(f Feature) bool { return f.Name == name })
	if i < 0 {
		return Feature{}, false
	}
	return r.Features[i], true
}

// Missing lists the essential features that are not supported, in report
// order.
func (r *Report) Missing() []Feature {
	return r.missing(NeedCapture)
}

func (r *Report) missing(need Need) []Feature {
	var out []Feature
	for _, f := range r.Features {
		if (f.NeededFor == need || slices.Contains(f.AlsoNeededFor, need)) && !f.Supported {
			out = append(out, f)
		}
	}
	return out
}

// blocking returns the missing features that keep capture off: every
// essential one, and the IPv6 ones when the kernel has IPv6 sockets (an
// app's AF_INET6 socket would otherwise bypass the sidecar). ipv6Blocks
// says whether the IPv6 ones are among them.
func (r *Report) blocking() (missing []Feature, ipv6Blocks bool) {
	missing = r.Missing()
	if v6 := r.missing(NeedIPv6); len(v6) > 0 && r.hasIPv6() {
		missing = append(missing, v6...)
		ipv6Blocks = true
	}
	return missing, ipv6Blocks
}

// hasIPv6 is false only when the probe found the kernel without IPv6
// sockets.
func (r *Report) hasIPv6() bool {
	f, ok := r.Feature(FeatureIPv6Sockets)
	return !ok || f.Supported
}

// Plan derives what the agent enables from the features.
func (r *Report) Plan() Plan {
	p := Plan{Reasons: []string{}}
	if missing, ipv6Blocks := r.blocking(); len(missing) > 0 {
		p.Reasons = append(p.Reasons,
			"capture: off because "+describe(missing),
			"splice: off because capture is off")
		if ipv6Blocks {
			p.Reasons = append(p.Reasons, "ipv6: the kernel has IPv6 sockets, so capturing IPv4 alone would let them bypass the sidecar")
		}
		return p
	}
	p.Capture = true
	if r.hasIPv6() {
		p.IPv6 = true
	} else {
		p.Reasons = append(p.Reasons, "ipv6: off because the kernel has no IPv6 sockets (nothing to capture, nothing can bypass)")
	}
	if missing := r.inboundMissing(); len(missing) > 0 {
		p.Reasons = append(p.Reasons, "inbound: off because "+describe(missing))
	} else {
		p.Inbound = true
	}
	if missing := r.missing(NeedDNS); len(missing) > 0 {
		p.Reasons = append(p.Reasons, "dns: off because "+describe(missing))
	} else {
		p.DNS = true
	}
	if missing := r.missing(NeedSplice); len(missing) > 0 {
		p.Reasons = append(p.Reasons, "splice: off because "+describe(missing))
		return p
	}
	p.Splice = true
	return p
}

// inboundMissing is what keeps inbound capture off: a missing inbound
// feature, or the sockhash map type its listener map needs.
func (r *Report) inboundMissing() []Feature {
	missing := r.missing(NeedInbound)
	if f, ok := r.Feature("sockhash"); ok && !f.Supported {
		missing = append(missing, f)
	}
	return missing
}

// Lines returns one line per part of the plan: "capture: on",
// "splice: off because ...".
func (p Plan) Lines() []string {
	var lines []string
	if p.Capture {
		lines = append(lines, "capture: on")
	}
	if p.IPv6 {
		lines = append(lines, "ipv6: on")
	}
	if p.Inbound {
		lines = append(lines, "inbound: on")
	}
	if p.Splice {
		lines = append(lines, "splice: on")
	}
	if p.DNS {
		lines = append(lines, "dns: on")
	}
	return append(lines, p.Reasons...)
}

// Err returns nil when every essential feature is present, and otherwise
// one line naming what is missing and why, for the agent to exit with
// instead of a verifier dump. It says "sockbridge needs Linux X or later"
// only when a missing feature's cause is the kernel's age.
func (r *Report) Err() error {
	missing, ipv6Blocks := r.blocking()
	if len(missing) == 0 {
		return nil
	}
	msg := fmt.Sprintf("kernel %s cannot run the capture datapath: %s", r.KernelRelease, describe(missing))
	var old []Feature
	for _, f := range missing {
		if f.Cause == CauseOldKernel {
			old = append(old, f)
		}
	}
	if v := maxKernel(old); v != "" && older(r.KernelRelease, v) {
		msg += fmt.Sprintf("; sockbridge needs Linux %s or later", v)
	}
	if ipv6Blocks {
		msg += " (the kernel has IPv6 sockets: capturing IPv4 alone would let them bypass the sidecar)"
	}
	return errors.New(msg)
}

// CanTurnOff says whether a feature may be forced off in the agent
// (--disable-feature). The kernel facts the plan's safety rests on may not:
// "no IPv6 sockets" on a kernel that has them would let AF_INET6 sockets
// bypass the sidecar.
func CanTurnOff(name string) error {
	if name == FeatureIPv6Sockets {
		return fmt.Errorf("%s is a fact about the kernel, not a feature to turn off: reporting it missing would leave AF_INET6 sockets uncaptured", name)
	}
	return nil
}

// Without returns a copy of the report with the named features marked
// unsupported, to force a feature off or to test how the agent reacts to a
// kernel without it. Names the report does not have are ignored; check them
// with Feature first.
func (r *Report) Without(names ...string) *Report {
	out := *r
	out.Features = slices.Clone(r.Features)
	for i := range out.Features {
		if slices.Contains(names, out.Features[i].Name) {
			out.Features[i].Supported = false
			out.Features[i].Error = "turned off on request"
			out.Features[i].Cause = CauseDisabled
		}
	}
	return &out
}

// describe names missing features in one line.
func describe(missing []Feature) string {
	parts := make([]string, 0, len(missing))
	for _, f := range missing {
		parts = append(parts, describeOne(f))
	}
	return strings.Join(parts, "; ")
}

func describeOne(f Feature) string {
	if f.Kind == KindSelfTest && f.Cause != CauseDisabled {
		return fmt.Sprintf("%s self-test failed: %s", strings.TrimPrefix(f.Name, "selftest/"), f.Error)
	}
	return fmt.Sprintf("%s %s %s", f.Name, kindLabel(f.Kind), reason(f))
}

func kindLabel(k Kind) string {
	switch k {
	case KindProgramType:
		return "program type"
	case KindMapType:
		return "map type"
	case KindAttachType:
		return "attach type"
	case KindHelper:
		return "helper"
	case KindSelfTest:
		return "self-test"
	}
	return "kernel feature"
}

// maxKernel returns the highest MinKernel among fs, or "" when none parses.
func maxKernel(fs []Feature) string {
	best, bestV := "", [2]int{}
	for _, f := range fs {
		v, ok := parseKernel(f.MinKernel)
		if ok && (best == "" || v[0] > bestV[0] || v[0] == bestV[0] && v[1] > bestV[1]) {
			best, bestV = f.MinKernel, v
		}
	}
	return best
}

// parseKernel parses "major.minor".
func parseKernel(s string) ([2]int, bool) {
	maj, min, ok := strings.Cut(s, ".")
	if !ok {
		return [2]int{}, false
	}
	a, err1 := strconv.Atoi(maj)
	b, err2 := strconv.Atoi(min)
	return [2]int{a, b}, err1 == nil && err2 == nil
}

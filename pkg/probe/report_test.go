package probe

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/pkg/bpfobj"
)

// allSupported is the report of a kernel that has everything, built from
// the probe's tables without touching the kernel.
func allSupported() *Report {
	r := &Report{SchemaVersion: SchemaVersion, KernelRelease: "6.18.0-test", DurationMS: 42}
	add := func(f Feature) {
		f.Supported = true
		r.Features = append(r.Features, finish(f))
	}
	add(Feature{Name: "cgroup2", Kind: KindKernel, MinKernel: "4.5", NeededFor: NeedCapture})
	add(Feature{Name: "bpffs", Kind: KindKernel, MinKernel: "4.4", NeededFor: NeedCapture})
	add(Feature{Name: "btf", Kind: KindKernel, MinKernel: "5.4", NeededFor: NeedNone})
	add(Feature{Name: FeatureIPv6Sockets, Kind: KindKernel, MinKernel: "2.2", NeededFor: NeedNone})
	for _, p := range progTypes() {
		add(Feature{Name: p.name, Kind: KindProgramType, MinKernel: p.minKernel, NeededFor: p.need})
	}
	for _, m := range mapTypes() {
		add(Feature{Name: m.name, Kind: KindMapType, MinKernel: m.minKernel, NeededFor: m.need})
	}
	for _, h := range helpers() {
		add(Feature{Name: h.name + "@" + h.prog.name, Kind: KindHelper, MinKernel: h.minKernel, NeededFor: h.need, AlsoNeededFor: h.also})
	}
	for _, a := range append(cgroupAttachTypes(), skMsgVerdict(), skLookupAttach()) {
		add(Feature{Name: a.name, Kind: KindAttachType, MinKernel: a.minKernel, NeededFor: a.need})
	}
	add(bpfLinkFeature())
	for _, t := range selfTests() {
		add(t.feature())
	}
	return r
}

// failed marks name unsupported with the error msg, classified as the
// probe would on r's kernel.
func failed(r *Report, name string, err error) *Report {
	out := *r
	out.Features = slices.Clone(r.Features)
	for i := range out.Features {
		if out.Features[i].Name == name {
			out.Features[i] = result(out.Features[i], err)
		}
	}
	classifyAll(out.Features, env{release: out.KernelRelease})
	return &out
}

// onKernel returns r as probed on release, with names not supported by it.
func onKernel(r *Report, release string, names ...string) *Report {
	r.KernelRelease = release
	for _, name := range names {
		r = failed(r, name, fmt.Errorf("detect %s: %w", name, ebpf.ErrNotSupported))
	}
	return r
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name          string
		report        *Report
		capture       bool
		splice        bool
		reasons       []string // substrings, one per reason
		errSubstrings []string // nil: Err must be nil
	}{{
		name: "everything", report: allSupported(), capture: true, splice: true,
	}, {
		name:    "splice self-test failed",
		report:  failed(allSupported(), "selftest/splice", errors.New("receiver's FIONREAD reports 0 bytes queued, 49275 were sent")),
		capture: true,
		reasons: []string{"splice: off because splice self-test failed: receiver's FIONREAD reports 0 bytes queued"},
	}, {
		name: "no sockhash", report: onKernel(allSupported(), "4.17.0", "sockhash"), capture: true,
		reasons: []string{"inbound: off because sockhash map type not supported by this kernel (needs Linux 4.18 or later)",
			"splice: off because sockhash map type not supported by this kernel (needs Linux 4.18 or later)"},
	}, {
		name: "sockhash configured out", report: onKernel(allSupported(), "6.18.0", "sockhash"), capture: true,
		reasons: []string{"inbound: off because sockhash map type not available although this kernel is newer than Linux 4.18: disabled in the kernel config",
			"splice: off because sockhash map type not available although this kernel is newer than Linux 4.18: disabled in the kernel config"},
	}, {
		name: "no sk_lookup (Linux 5.8)", report: onKernel(allSupported(), "5.8.0", "sk_lookup", "sk_lookup/netns"), capture: true, splice: true,
		reasons: []string{"inbound: off because sk_lookup program type not supported by this kernel (needs Linux 5.9 or later)"},
	}, {
		name: "a helper of both splice and inbound", report: allSupported().Without("bpf_sock_hash_update@sock_ops"), capture: true,
		reasons: []string{"inbound: off because bpf_sock_hash_update@sock_ops helper turned off", "splice: off because bpf_sock_hash_update@sock_ops helper turned off"},
	}, {
		name: "no sk_msg helper", report: allSupported().Without("bpf_msg_redirect_hash@sk_msg"), capture: true,
		reasons: []string{"splice: off because bpf_msg_redirect_hash@sk_msg helper turned off on request"},
	}, {
		name: "informational feature missing", report: allSupported().Without("btf"), capture: true, splice: true,
	}, {
		name:          "no getpeername4",
		report:        onKernel(allSupported(), "5.4.0-1-amd64", "cgroup/getpeername4"),
		reasons:       []string{"capture: off because cgroup/getpeername4 attach type not supported by this kernel (needs Linux 5.8 or later)", "splice: off because capture is off"},
		errSubstrings: []string{"cgroup/getpeername4 attach type not supported", "sockbridge needs Linux 5.8 or later"},
	}, {
		name:          "getpeername4 refused on a new kernel",
		report:        failed(allSupported(), "cgroup/getpeername4", fmt.Errorf("attach: %w", unix.EPERM)),
		reasons:       []string{"capture: off because cgroup/getpeername4 attach type permission denied", "splice: off because capture is off"},
		errSubstrings: []string{"cgroup/getpeername4 attach type permission denied"},
	}, {
		name:          "the newest floor wins",
		report:        onKernel(allSupported(), "5.4.0", "bpf_get_current_ancestor_cgroup_id@cgroup_sock_addr", "bpf_get_netns_cookie@sock_ops", "bpf_link/cgroup"),
		reasons:       []string{"capture: off because", "splice: off because capture is off"},
		errSubstrings: []string{"bpf_get_current_ancestor_cgroup_id@cgroup_sock_addr", "bpf_get_netns_cookie@sock_ops", "bpf_link/cgroup", "needs Linux 5.15 or later"},
	}, {
		name:          "cgroup v1 only host",
		report:        failed(allSupported(), "cgroup2", errors.New("no cgroup v2 hierarchy mounted (cgroup v1 only hosts are unsupported)")),
		reasons:       []string{"capture: off because cgroup2 kernel feature probe failed: no cgroup v2 hierarchy mounted", "splice: off"},
		errSubstrings: []string{"cgroup v1 only hosts are unsupported"},
	}, {
		name:          "connect4 self-test failed",
		report:        failed(allSupported(), "selftest/connect4", errors.New("getpeername returned 127.0.0.1:47002, not the dialled 127.0.0.1:47001")),
		reasons:       []string{"capture: off because connect4 self-test failed: getpeername returned", "splice: off"},
		errSubstrings: []string{"connect4 self-test failed: getpeername returned 127.0.0.1:47002"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.report.Plan()
			if p.Capture != tt.capture || p.Splice != tt.splice {
				t.Errorf("plan capture=%v splice=%v, want %v %v (%q)", p.Capture, p.Splice, tt.capture, tt.splice, p.Reasons)
			}
			if len(p.Reasons) != len(tt.reasons) {
				t.Fatalf("reasons %q, want %d", p.Reasons, len(tt.reasons))
			}
			for i, want := range tt.reasons {
				if !strings.Contains(p.Reasons[i], want) {
					t.Errorf("reason %q does not contain %q", p.Reasons[i], want)
				}
			}
			err := tt.report.Err()
			if tt.errSubstrings == nil {
				if err != nil {
					t.Errorf("Err() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Err() = nil, want an error")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("Err() spans lines: %q", err)
			}
			for _, want := range tt.errSubstrings {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Err() = %q, want it to contain %q", err, want)
				}
			}
		})
	}
}

func TestPlanLines(t *testing.T) {
	tests := []struct {
		report *Report
		want   []string
	}{
		{allSupported(), []string{"capture: on", "ipv6: on", "inbound: on", "splice: on", "dns: on"}},
		{allSupported().Without("sk_msg"), []string{"capture: on", "ipv6: on", "inbound: on", "dns: on", "splice: off because sk_msg program type turned off on request"}},
		// Without the DNS hooks the rest runs; the plan says why DNS is off.
		{allSupported().Without("cgroup/recvmsg6"), []string{"capture: on", "ipv6: on", "inbound: on", "splice: on", "dns: off because cgroup/recvmsg6 attach type turned off on request"}},
		{allSupported().Without("sock_ops"), []string{"capture: off because sock_ops program type turned off on request", "splice: off because capture is off"}},
		// Where AF_INET6 sockets exist, capturing IPv4 alone would let
		// them bypass the sidecar: refused.
		{allSupported().Without("cgroup/connect6"), []string{
			"capture: off because cgroup/connect6 attach type turned off on request",
			"splice: off because capture is off",
			"ipv6: the kernel has IPv6 sockets, so capturing IPv4 alone would let them bypass the sidecar"}},
		// A kernel without IPv6 sockets: IPv4 only, said in the plan.
		{allSupported().Without(FeatureIPv6Sockets, "cgroup/connect6", "cgroup/getpeername6"), []string{
			"capture: on", "inbound: on", "splice: on", "dns: on", "ipv6: off because the kernel has no IPv6 sockets (nothing to capture, nothing can bypass)"}},
		// Without sk_lookup: no inbound capture, said in the plan.
		{allSupported().Without("sk_lookup"), []string{
			"capture: on", "ipv6: on", "splice: on", "dns: on", "inbound: off because sk_lookup program type turned off on request"}},
	}
	for _, tt := range tests {
		if got := tt.report.Plan().Lines(); !slices.Equal(got, tt.want) {
			t.Errorf("Lines() = %q, want %q", got, tt.want)
		}
	}
}

func TestMissing(t *testing.T) {
	r := allSupported().Without("sockhash", "cgroup/connect4", "btf", "bpffs")
	var names []string
	for _, f := range r.Missing() {
		names = append(names, f.Name)
	}
	if want := []string{"bpffs", "cgroup/connect4"}; !slices.Equal(names, want) {
		t.Errorf("Missing() = %q, want %q (essentials only, in report order)", names, want)
	}
	if m := allSupported().Missing(); len(m) != 0 {
		t.Errorf("Missing() = %v on a full report", m)
	}
}

func TestWithoutCopies(t *testing.T) {
	r := allSupported()
	w := r.Without("sockhash", "no-such-feature")
	if f, _ := r.Feature("sockhash"); !f.Supported {
		t.Error("Without changed the original report")
	}
	if f, _ := w.Feature("sockhash"); f.Supported || f.Error == "" {
		t.Errorf("Without left %+v supported or without error", f)
	}
	if len(w.Features) != len(r.Features) {
		t.Errorf("Without changed the feature count: %d, want %d", len(w.Features), len(r.Features))
	}
	if _, ok := w.Feature("no-such-feature"); ok {
		t.Error("Without invented a feature")
	}
}

func TestJSONRoundTrip(t *testing.T) {
	r := failed(allSupported(), "selftest/splice", errors.New("stalled"))
	doc, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(doc, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, r) {
		t.Errorf("round trip changed the report:\n%+v\n%+v", back, *r)
	}
	var withPlan struct{ Plan Plan }
	if err := json.Unmarshal(doc, &withPlan); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(withPlan.Plan, r.Plan()) {
		t.Errorf("JSON plan %+v, want %+v", withPlan.Plan, r.Plan())
	}
}

func TestFeatureTable(t *testing.T) {
	r := allSupported()
	seen := map[string]bool{}
	for _, f := range r.Features {
		if seen[f.Name] {
			t.Errorf("feature %q listed twice", f.Name)
		}
		seen[f.Name] = true
		if _, ok := parseKernel(f.MinKernel); !ok {
			t.Errorf("%s: min_kernel %q is not major.minor", f.Name, f.MinKernel)
		}
		if f.Essential != (f.NeededFor == NeedCapture) {
			t.Errorf("%s: essential %v but needed for %q", f.Name, f.Essential, f.NeededFor)
		}
	}
	// What capture needs, as issue 4 lists it.
	for _, name := range []string{
		"cgroup/connect4", "cgroup/sock_ops", "cgroup/getsockopt", "cgroup/getpeername4",
		"sk_storage", "bpf_get_netns_cookie@sock_ops", "bpf_get_current_ancestor_cgroup_id@cgroup_sock_addr",
		"bpf_link/cgroup", "cgroup2", "bpffs", "selftest/connect4", "selftest/getsockopt",
	} {
		if f, ok := r.Feature(name); !ok || !f.Essential {
			t.Errorf("%s: missing from the table or not essential", name)
		}
	}
	for _, name := range []string{"sockhash", "sk_msg", "sk_msg/verdict", "bpf_msg_redirect_hash@sk_msg", "bpf_sock_hash_update@sock_ops", "selftest/splice"} {
		if missing := r.Without(name).missing(NeedSplice); len(missing) != 1 || missing[0].Name != name {
			t.Errorf("%s: missing from the table or not needed for splice", name)
		}
	}
	for _, name := range []string{"sockhash", "sk_lookup", "sk_lookup/netns", "bpf_sk_assign@sk_lookup", "bpf_sock_hash_update@sock_ops"} {
		if missing := r.Without(name).inboundMissing(); len(missing) != 1 || missing[0].Name != name {
			t.Errorf("%s: missing from the table or not needed for inbound capture", name)
		}
	}
}

// The helper checks are exactly the helpers the compiled datapath calls,
// per program type and with what they are needed for: a helper the C starts
// calling is probed without a change here, and one it stops calling is no
// longer probed (bpf_get_socket_cookie@sock_ops was, with no caller).
func TestHelpersComeFromTheObject(t *testing.T) {
	want := map[string]Need{
		"bpf_map_lookup_elem@cgroup_sock_addr":                NeedCapture,
		"bpf_map_update_elem@cgroup_sock_addr":                NeedCapture,
		"bpf_get_current_uid_gid@cgroup_sock_addr":            NeedCapture,
		"bpf_bind@cgroup_sock_addr":                           NeedCapture,
		"bpf_get_current_ancestor_cgroup_id@cgroup_sock_addr": NeedCapture,
		"bpf_get_current_cgroup_id@cgroup_sock_addr":          NeedCapture,
		"bpf_sk_storage_get@cgroup_sock_addr":                 NeedCapture,
		"bpf_map_lookup_elem@sock_ops":                        NeedCapture,
		"bpf_map_update_elem@sock_ops":                        NeedCapture,
		"bpf_map_delete_elem@sock_ops":                        NeedCapture,
		"bpf_sk_storage_get@sock_ops":                         NeedCapture,
		"bpf_get_netns_cookie@sock_ops":                       NeedCapture,
		"bpf_sock_ops_cb_flags_set@sock_ops":                  NeedCapture,
		"bpf_sock_hash_update@sock_ops":                       NeedInbound, // and splice
		"bpf_map_lookup_elem@sk_lookup":                       NeedInbound,
		"bpf_get_netns_cookie@cgroup_sock_addr":               NeedInbound,
		"bpf_sk_assign@sk_lookup":                             NeedInbound,
		"bpf_sk_release@sk_lookup":                            NeedInbound,
		"bpf_map_lookup_elem@cgroup_sockopt":                  NeedCapture,
		"bpf_sk_storage_get@cgroup_sockopt":                   NeedCapture,
		"bpf_get_netns_cookie@cgroup_sockopt":                 NeedCapture,
		"bpf_msg_redirect_hash@sk_msg":                        NeedSplice,
		"bpf_map_lookup_elem@sk_msg":                          NeedSplice,
		"bpf_get_netns_cookie@sk_msg":                         NeedSplice,
		"bpf_sk_storage_get@sk_msg":                           NeedSplice,
	}
	list, err := datapathHelpers()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Need{}
	for _, h := range list {
		got[h.name+"@"+h.prog.name] = h.need
		if _, ok := parseKernel(h.minKernel); !ok {
			t.Errorf("%s@%s: release %q", h.name, h.prog.name, h.minKernel)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("helpers from the object:\n%v\nwant\n%v", got, want)
	}
	for key := range helperReleases {
		if _, ok := got[key]; !ok {
			t.Errorf("helperReleases has %s, which no datapath program calls", key)
		}
	}
}

// The names the probe uses are the object's, exactly.
func TestObjectNames(t *testing.T) {
	spec, err := loadProbeSpec()
	if err != nil {
		t.Fatal(err)
	}
	var progs, maps, vars []string
	for name := range spec.Programs {
		progs = append(progs, name)
	}
	for name := range spec.Maps {
		if !strings.HasPrefix(name, ".") {
			maps = append(maps, name)
		}
	}
	for name := range spec.Variables {
		vars = append(vars, name)
	}
	for _, l := range [][]string{progs, maps, vars} {
		slices.Sort(l)
	}
	wantProgs := []string{progConnect4Rewrite, progGetpeername4Answer, progGetsockoptAnswer, progSkmsgRedirect, progSockopsInsert}
	wantMaps := []string{mapStats, mapSocks}
	wantVars := []string{varConnectFromPort, varConnectToPort, varSockoptAnswer, varSockoptOptname}
	for _, l := range [][]string{wantProgs, wantMaps, wantVars} {
		slices.Sort(l)
	}
	if !slices.Equal(progs, wantProgs) || !slices.Equal(maps, wantMaps) || !slices.Equal(vars, wantVars) {
		t.Errorf("object has programs %v maps %v variables %v;\nprobe uses %v %v %v", progs, maps, vars, wantProgs, wantMaps, wantVars)
	}
	// Every self-test's check names real counters: a misspelt one panics.
	counters, err := bpfobj.CountersOf(spec, "sbp_stat", "SBP_STAT_")
	if err != nil {
		t.Fatal(err)
	}
	zero := bpfobj.Values{}
	for _, n := range counters.Names() {
		zero[n] = 0
	}
	for _, st := range selfTests() {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("self-test %s: %v", st.name, r)
				}
			}()
			if err := st.check(zero); err == nil {
				t.Errorf("self-test %s passes with every counter 0", st.name)
			}
		}()
	}
}

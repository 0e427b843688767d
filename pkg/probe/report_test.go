package probe

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
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
	for _, p := range progTypes() {
		add(Feature{Name: p.name, Kind: KindProgramType, MinKernel: p.minKernel, NeededFor: p.need})
	}
	for _, m := range mapTypes() {
		add(Feature{Name: m.name, Kind: KindMapType, MinKernel: m.minKernel, NeededFor: m.need})
	}
	for _, h := range helpers() {
		add(Feature{Name: h.name + "@" + h.prog.name, Kind: KindHelper, MinKernel: h.minKernel, NeededFor: h.need})
	}
	for _, a := range append(cgroupAttachTypes(), skMsgVerdict()) {
		add(Feature{Name: a.name, Kind: KindAttachType, MinKernel: a.minKernel, NeededFor: a.need})
	}
	add(bpfLinkFeature())
	for _, t := range selfTests() {
		add(t.feature())
	}
	return r
}

// failed marks name unsupported with the error msg.
func failed(r *Report, name, msg string) *Report {
	out := r.Without(name)
	for i := range out.Features {
		if out.Features[i].Name == name {
			out.Features[i].Error = msg
		}
	}
	return out
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
		report:  failed(allSupported(), "selftest/splice", "receiver's FIONREAD reports 0 bytes queued, 49275 were sent"),
		capture: true,
		reasons: []string{"splice: off because splice self-test failed: receiver's FIONREAD reports 0 bytes queued"},
	}, {
		name: "no sockhash", report: allSupported().Without("sockhash"), capture: true,
		reasons: []string{"splice: off because sockhash map type missing (Linux 4.18)"},
	}, {
		name: "no sk_msg helper", report: allSupported().Without("bpf_msg_redirect_hash@sk_msg"), capture: true,
		reasons: []string{"splice: off because bpf_msg_redirect_hash@sk_msg helper missing (Linux 4.18)"},
	}, {
		name: "informational feature missing", report: allSupported().Without("btf"), capture: true, splice: true,
	}, {
		name:          "no getpeername4",
		report:        allSupported().Without("cgroup/getpeername4"),
		reasons:       []string{"capture: off because cgroup/getpeername4 attach type missing (Linux 5.8)", "splice: off because capture is off"},
		errSubstrings: []string{"cgroup/getpeername4 attach type missing", "needs Linux 5.8 or later"},
	}, {
		name:          "the newest floor wins",
		report:        allSupported().Without("bpf_get_current_ancestor_cgroup_id@cgroup_sock_addr", "bpf_get_netns_cookie@sock_ops", "bpf_link/cgroup"),
		reasons:       []string{"capture: off because", "splice: off because capture is off"},
		errSubstrings: []string{"bpf_get_current_ancestor_cgroup_id@cgroup_sock_addr", "bpf_get_netns_cookie@sock_ops", "bpf_link/cgroup", "needs Linux 5.15 or later"},
	}, {
		name:          "cgroup v1 only host",
		report:        failed(allSupported(), "cgroup2", "no cgroup v2 hierarchy mounted (cgroup v1 only hosts are unsupported)"),
		reasons:       []string{"capture: off because cgroup2 kernel feature missing (Linux 4.5): no cgroup v2 hierarchy mounted", "splice: off"},
		errSubstrings: []string{"cgroup v1 only hosts are unsupported"},
	}, {
		name:          "connect4 self-test failed",
		report:        failed(allSupported(), "selftest/connect4", "getpeername returned 127.0.0.1:47002, not the dialled 127.0.0.1:47001"),
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
		{allSupported(), []string{"capture: on", "splice: on"}},
		{allSupported().Without("sk_msg"), []string{"capture: on", "splice: off because sk_msg program type missing (Linux 4.17): turned off on request"}},
		{allSupported().Without("sock_ops"), []string{"capture: off because sock_ops program type missing (Linux 4.13): turned off on request", "splice: off because capture is off"}},
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
	r := failed(allSupported(), "selftest/splice", "stalled")
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
		if f, ok := r.Feature(name); !ok || f.NeededFor != NeedSplice {
			t.Errorf("%s: missing from the table or not needed for splice", name)
		}
	}
}

// Every helper the capture programs call is probed for its program type,
// so that a helper added to bpf/*.c without a probe fails here.
func TestTableCoversDatapathHelpers(t *testing.T) {
	byFile := map[string]string{"connect.c": "cgroup_sock_addr", "sockops.c": "sock_ops", "sockopt.c": "cgroup_sockopt", "skmsg.c": "sk_msg"}
	probed := map[string]bool{}
	for _, h := range helpers() {
		probed[h.name+"@"+h.prog.name] = true
	}
	call := regexp.MustCompile(`\b(bpf_[a-z0-9_]+)\(`)
	for file, prog := range byFile {
		src, err := os.ReadFile("../../bpf/" + file)
		if err != nil {
			t.Fatal(err)
		}
		lib, err := os.ReadFile("../../bpf/lib/sockbridge.h")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(src)+string(lib), -1) {
			name := m[1]
			if strings.HasPrefix(name, "bpf_hton") || strings.HasPrefix(name, "bpf_ntoh") {
				continue // byte-order macros
			}
			if !probed[name+"@"+prog] {
				t.Errorf("bpf/%s calls %s, which the probe does not check for %s", file, name, prog)
			}
		}
	}
}

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/bpfobj"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// A pod file missing at start: the agent logs it, runs with the pod map as
// it is (empty on a fresh node) and is alive but not ready, saying why;
// once the file exists, SIGHUP reads it and the agent is ready.
func TestPodFileMissingNotReady(t *testing.T) {
	e := newBareEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	podFile := filepath.Join(e.dir, "pods.json")
	agent := testutil.StartAgent(t, bin.sockbridge, "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile)
	if !agent.WaitOutput("pod file unreadable", 30*time.Second) {
		t.Fatalf("agent did not report the missing pod file:\n%s", agent.Output())
	}
	if code, body := testutil.Get(t, agent.Base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %s, want 200", code, body)
	}
	code, body := testutil.Get(t, agent.Base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "pods: read pod file") || !strings.Contains(body, "no such file") {
		t.Errorf("/readyz = %d %q, want 503 naming the missing pod file", code, body)
	}
	if strings.Contains(body, "datapath:") {
		t.Errorf("/readyz says the datapath is not ready: %q", body)
	}
	snap, err := datapath.ReadPinned(e.pinDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Pods) != 0 {
		t.Errorf("pods without a pod file: %+v", snap.Pods)
	}
	if done, err := agent.Exited(); done {
		t.Fatalf("agent exited (%v) instead of running with zero pods:\n%s", err, agent.Output())
	}

	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()}}})
	agent.Cmd.Process.Signal(syscall.SIGHUP)
	agent.WaitReady(t)
	var r peer.Roundtrip
	a.run(t, &r, "roundtrip", "-addr", serverAddr(), "-bytes", "100")
	if !r.Intact || len(a.sidecar.WaitLogLines("outbound", 1)) != 1 {
		t.Errorf("not captured after SIGHUP: %+v", r)
	}
}

// scrape reads /metrics into metric families by name.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := testutil.Get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d: %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return mfs
}

// value is the value of the sample of family name whose labels include
// every pair in labels (name=value, ...); ok false when there is none.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			found := false
			for _, lp := range m.GetLabel() {
				found = found || (lp.GetName() == k && lp.GetValue() == v)
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// /metrics exposes every datapath counter by its BTF name, the pods by
// state, the probe's features and plan, each bounded map's fill against
// the capacity the kernel reports for it, and the programs' run time while
// BPF statistics are on; /healthz and /readyz answer.
func TestAgentMetrics(t *testing.T) {
	e := newBareEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{
		{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()},
		{"name": "test/broken", "cgroup": "does/not/exist"},
	}})
	agent := testutil.StartAgent(t, bin.sockbridge, "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile, "--bpf-stats")
	agent.WaitReady(t)
	const conns = 20
	var r peer.Conns
	a.run(t, &r, "conns", "-addr", serverAddr(), "-n", fmt.Sprint(conns), "-parallel", "1")
	if r.OK != conns {
		t.Fatalf("traffic: %+v", r)
	}
	mfs := scrape(t, agent.Base)

	spec, err := datapath.Spec()
	if err != nil {
		t.Fatal(err)
	}
	counters, err := bpfobj.CountersOf(spec, "sb_stat", "SB_STAT_")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range counters.Names() {
		if _, ok := value(mfs, "sockbridge_datapath_"+name+"_total"); !ok {
			t.Errorf("no metric sockbridge_datapath_%s_total", name)
		}
	}
	if v, _ := value(mfs, "sockbridge_datapath_captured_total"); v < conns {
		t.Errorf("sockbridge_datapath_captured_total = %v, want >= %d", v, conns)
	}
	if v, _ := value(mfs, "sockbridge_datapath_origdst_answered_total"); v < conns {
		t.Errorf("sockbridge_datapath_origdst_answered_total = %v, want >= %d", v, conns)
	}
	for state, want := range map[string]float64{"capture": 1, "no_capture": 0, "invalid": 1} {
		if v, ok := value(mfs, "sockbridge_pods", "state="+state); !ok || v != want {
			t.Errorf("sockbridge_pods{state=%q} = %v (present %v), want %v", state, v, ok, want)
		}
	}
	if v, ok := value(mfs, "sockbridge_probe_feature_supported", "feature=cgroup/connect4", "needed_for=capture"); !ok || v != 1 {
		t.Errorf("sockbridge_probe_feature_supported{feature=cgroup/connect4} = %v (present %v), want 1", v, ok)
	}
	if v, ok := value(mfs, "sockbridge_plan_enabled", "part=capture"); !ok || v != 1 {
		t.Errorf("sockbridge_plan_enabled{part=capture} = %v (present %v), want 1", v, ok)
	}
	if _, ok := value(mfs, "sockbridge_plan_enabled", "part=splice"); !ok {
		t.Error("no sockbridge_plan_enabled{part=splice}")
	}

	// Fill against capacity: the capacity is what the kernel says of the
	// pinned map, the entries what the maps hold.
	counted := 0
	entries, _ := os.ReadDir(datapath.MapDir(e.pinDir))
	for _, ent := range entries {
		if ent.IsDir() {
			continue
		}
		info := bpftoolMap(t, filepath.Join(datapath.MapDir(e.pinDir), ent.Name()))
		switch info.Type {
		case "hash", "lru_hash", "lpm_trie", "sockhash":
		default:
			if _, ok := value(mfs, "sockbridge_map_max_entries", "map="+ent.Name()); ok {
				t.Errorf("map %s (%s) has a fill level", ent.Name(), info.Type)
			}
			continue
		}
		counted++
		if v, ok := value(mfs, "sockbridge_map_max_entries", "map="+ent.Name()); !ok || v != float64(info.MaxEntries) {
			t.Errorf("sockbridge_map_max_entries{map=%q} = %v (present %v), bpftool says %d", ent.Name(), v, ok, info.MaxEntries)
		}
		if _, ok := value(mfs, "sockbridge_map_entries", "map="+ent.Name()); !ok {
			t.Errorf("no sockbridge_map_entries{map=%q}", ent.Name())
		}
	}
	if counted < 6 {
		t.Errorf("only %d bounded maps pinned", counted)
	}
	for m, want := range map[string]float64{"sb_pods": 1, "sb_pod_ips": 1, "sb_tuples": 0} {
		if v, _ := value(mfs, "sockbridge_map_entries", "map="+m); v != want {
			t.Errorf("sockbridge_map_entries{map=%q} = %v, want %v", m, v, want)
		}
	}
	if v, _ := value(mfs, "sockbridge_map_entries", "map=sb_cg_cache"); v < 1 {
		t.Errorf("sockbridge_map_entries{map=sb_cg_cache} = %v, want the app's and sidecar's cgroups", v)
	}

	if v, ok := value(mfs, "sockbridge_bpf_stats_enabled"); !ok || v != 1 {
		t.Errorf("sockbridge_bpf_stats_enabled = %v (present %v) with --bpf-stats\n%s", v, ok, agent.Output())
	}
	if v, _ := value(mfs, "sockbridge_bpf_program_runs_total", "program=connect4_redirect"); v < conns {
		t.Errorf("sockbridge_bpf_program_runs_total{program=connect4_redirect} = %v, want >= %d", v, conns)
	}
	if v, _ := value(mfs, "sockbridge_bpf_program_run_seconds_total", "program=connect4_redirect"); v <= 0 {
		t.Errorf("sockbridge_bpf_program_run_seconds_total{program=connect4_redirect} = %v, want > 0", v)
	}
}

// bpftoolMapInfo is what `bpftool map show pinned` says of a map.
type bpftoolMapInfo struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	MaxEntries uint32 `json:"max_entries"`
	BTFID      int    `json:"btf_id"`
}

func bpftoolMap(t *testing.T, pin string) bpftoolMapInfo {
	t.Helper()
	out, err := exec.Command("bpftool", "map", "show", "pinned", pin, "--json").Output()
	if err != nil {
		t.Fatalf("bpftool map show pinned %s: %v", pin, err)
	}
	var info bpftoolMapInfo
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("bpftool map show pinned %s: %v", pin, err)
	}
	return info
}

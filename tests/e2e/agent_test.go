package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/bpfobj"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// The agent binary installs the datapath from a pod file; the datapath
// outlives the agent; a restarted agent adopts the pinned links instead of
// attaching twice; `sockbridge uninstall` leaves no program, map, link or
// pin behind.
func TestAgentRestartAndUninstall(t *testing.T) {
	e := newBareEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{
		{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()},
		{"name": "test/broken", "cgroup": "does/not/exist"},
	}})
	agentArgs := []string{bin.sockbridge, "agent", "--log-level", "debug",
		"--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile}

	captures := func(want int) {
		t.Helper()
		var r peer.Roundtrip
		a.run(t, &r, "roundtrip", "-addr", serverAddr(), "-bytes", "4096")
		if !r.Intact {
			t.Fatalf("round trip failed: %+v", r)
		}
		if got := len(a.sidecar.WaitLogLines("outbound", want)); got != want {
			t.Fatalf("sidecar has seen %d captured connections, want %d", got, want)
		}
	}

	agent := testutil.Start(t, testutil.ProcSpec{Args: agentArgs})
	if !agent.WaitOutput("pods synced", agentStartTimeout) {
		t.Fatalf("agent did not sync pods:\n%s", agent.Output())
	}
	if !strings.Contains(agent.Output(), "pod test/broken") {
		t.Errorf("agent did not report the broken pod entry:\n%s", agent.Output())
	}
	captures(1)

	stopAgent(t, agent)
	captures(2) // the pinned datapath keeps working without the agent

	agent = testutil.Start(t, testutil.ProcSpec{Args: agentArgs})
	if !agent.WaitOutput("pods synced", agentStartTimeout) {
		t.Fatalf("restarted agent did not sync pods:\n%s", agent.Output())
	}
	hooks := len(datapath.HookNames()) // connect4/6, getpeername4/6, getsockopt, sockops
	if n := strings.Count(agent.Output(), "adopted pinned link"); n != hooks {
		t.Errorf("restarted agent adopted %d links, want %d:\n%s", n, hooks, agent.Output())
	}
	progs := attachedPrograms(t, e.cgroup)
	if len(progs) != hooks {
		t.Errorf("%d programs attached to the test cgroup after a restart, want %d: %v", len(progs), hooks, progs)
	}
	captures(3)

	var snap struct {
		Pods []struct {
			IPv4    string `json:"ipv4"`
			Capture bool   `json:"capture"`
		} `json:"pods"`
		Stats bpfobj.Values `json:"stats"`
	}
	out, err := exec.Command(bin.sockbridge, "maps", "--bpffs-dir", e.pinDir).Output()
	if err != nil || json.Unmarshal(out, &snap) != nil {
		t.Fatalf("sockbridge maps: %v\n%s", err, out)
	}
	if len(snap.Pods) != 1 || snap.Pods[0].IPv4 != podAIP.String() || !snap.Pods[0].Capture || snap.Stats.Get("captured") != 3 {
		t.Errorf("sockbridge maps = %s", out)
	}
	mapIDs := pinnedMapIDs(t, datapath.MapDir(e.pinDir))

	stopAgent(t, agent)
	if out, err := exec.Command(bin.sockbridge, "uninstall", "--bpffs-dir", e.pinDir).CombinedOutput(); err != nil {
		t.Fatalf("sockbridge uninstall: %v\n%s", err, out)
	}
	if left := attachedPrograms(t, e.cgroup); len(left) != 0 {
		t.Errorf("programs still attached after uninstall: %v", left)
	}
	// A program's id goes when its last reference does; the maps it used
	// are released after an RCU grace period, so they may outlive it by a
	// moment. Everything must be gone within seconds.
	for _, id := range append(progIDs(progs), mapIDs...) {
		kind, num, _ := strings.Cut(id, " ")
		deadline := time.Now().Add(5 * time.Second)
		for exec.Command("bpftool", kind, "show", "id", num).Run() == nil {
			if time.Now().After(deadline) {
				t.Errorf("bpftool %s show id %s: still exists 5 s after uninstall", kind, num)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, err := os.Stat(e.pinDir); !os.IsNotExist(err) {
		t.Errorf("pin directory %s still exists: %v", e.pinDir, err)
	}
	captures(3) // not captured any more
}

func stopAgent(t *testing.T, p *testutil.Proc) {
	t.Helper()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if done, err := p.Exited(); done {
			if err != nil {
				t.Fatalf("agent exited with %v:\n%s", err, p.Output())
			}
			return
		}
	}
	t.Fatalf("agent did not stop on SIGTERM:\n%s", p.Output())
}

type attachedProg struct {
	ID         int    `json:"id"`
	AttachType string `json:"attach_type"`
	Name       string `json:"name"`
}

// attachedPrograms lists what `bpftool cgroup show` reports for cgroup.
func attachedPrograms(t *testing.T, cgroup string) []attachedProg {
	t.Helper()
	out, err := exec.Command("bpftool", "cgroup", "show", cgroup, "--json").Output()
	if err != nil {
		t.Fatalf("bpftool cgroup show %s: %v", cgroup, err)
	}
	var progs []attachedProg
	if len(strings.TrimSpace(string(out))) > 0 {
		if err := json.Unmarshal(out, &progs); err != nil {
			t.Fatalf("decode bpftool output %q: %v", out, err)
		}
	}
	return progs
}

func progIDs(progs []attachedProg) []string {
	var ids []string
	for _, p := range progs {
		ids = append(ids, fmt.Sprintf("prog %d", p.ID))
	}
	return ids
}

// pinnedMapIDs returns "map <id>" for every map pinned in dir.
func pinnedMapIDs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		ids = append(ids, fmt.Sprintf("map %d", bpftoolMap(t, filepath.Join(dir, e.Name())).ID))
	}
	if len(ids) < 5 {
		t.Fatalf("only %d maps pinned in %s", len(ids), dir)
	}
	return ids
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/bpfobj"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

type snapshot struct {
	Stats   bpfobj.Values `json:"stats"`
	Spliced int           `json:"spliced_sockets"`
	Flows   []struct {
		Role string `json:"role"`
	} `json:"flows"`
	Pods        []json.RawMessage `json:"pods"`
	Maps        []string          `json:"maps"`
	Unavailable map[string]string `json:"unavailable"`
}

// processPrograms returns the names of the BPF programs process pid holds
// open (its file descriptors' prog_id), so that what another test or a
// benchmark on the same machine loaded does not count.
func processPrograms(t *testing.T, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var names []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			id, ok := strings.CutPrefix(line, "prog_id:")
			if !ok {
				continue
			}
			out, err := exec.Command("bpftool", "prog", "show", "id", strings.TrimSpace(id), "-j").Output()
			if err != nil {
				t.Fatalf("bpftool prog show id %s: %v", id, err)
			}
			var p struct{ Name string }
			if err := json.Unmarshal(out, &p); err != nil {
				t.Fatalf("decode bpftool prog show: %v", err)
			}
			names = append(names, p.Name)
		}
	}
	return names
}

func readMaps(t *testing.T, pinDir string) snapshot {
	t.Helper()
	out, err := exec.Command(bin.sockbridge, "maps", "--bpffs-dir", pinDir).CombinedOutput()
	var s snapshot
	if err != nil || json.Unmarshal(out, &s) != nil {
		t.Fatalf("sockbridge maps: %v\n%s", err, out)
	}
	return s
}

// The agent acts on the probe: a feature reported missing changes the plan
// and traffic still flows; a missing essential stops it with one line
// before it installs anything.
func TestAgentFollowsProbePlan(t *testing.T) {
	e := newBareEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	b := e.addPod("b", podBIP, podOpts{sidecar: true})
	testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:9090"}})
	testutil.WaitListening(t, b.ns, 9090)
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{
		{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()},
		{"name": "test/b", "cgroup": b.cgroup, "ip": podBIP.String()},
	}})
	args := func(extra ...string) []string {
		return append([]string{bin.sockbridge, "agent", "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile}, extra...)
	}
	// A connection held open while the maps are read, to the server
	// outside the mesh (to addr, if given): app and sidecar sockets carry
	// state, none is spliced. To pod B on the same node, the sidecar to
	// sidecar leg is spliced: two sockets in the sockhash while it lives.
	holdOpen := func(addr ...string) *testutil.Proc {
		to := serverAddr()
		if len(addr) > 0 {
			to = addr[0]
		}
		h := testutil.Start(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{bin.sbpeer, "hold", "-addr", to, "-for", "30s"}})
		if !h.WaitOutput("connected", 5*time.Second) {
			t.Fatalf("hold: %s", h.Output())
		}
		return h
	}

	t.Run("splicing reported missing", func(t *testing.T) {
		agent := testutil.Start(t, testutil.ProcSpec{Args: args("--disable-feature", "sk_msg")})
		if !agent.WaitOutput("pods synced", agentStartTimeout) {
			t.Fatalf("agent did not start:\n%s", agent.Output())
		}
		if !strings.Contains(agent.Output(), "splice: off because sk_msg") {
			t.Errorf("agent log does not give the plan:\n%s", agent.Output())
		}
		var r peer.Roundtrip
		a.run(t, &r, "roundtrip", "-addr", serverAddr(), "-bytes", "100000")
		if !r.Intact || len(a.sidecar.WaitLogLines("outbound", 1)) != 1 {
			t.Fatalf("not captured: %+v\n%s", r, a.sidecar.Output())
		}
		h := holdOpen()
		s := readMaps(t, e.pinDir)
		h.Stop()
		if s.Spliced != 0 || s.Stats.Get("splice_added") != 0 || s.Stats.Get("splice_redirected") != 0 {
			t.Errorf("sockets entered the sockhash with splicing off: %+v", s)
		}
		if len(s.Flows) != 2 {
			t.Errorf("live flows while a connection is open: %+v, want app and sidecar sockets", s.Flows)
		}
		if len(s.Unavailable) != 0 {
			t.Errorf("sockbridge maps could not read %v", s.Unavailable)
		}
		// With splicing off, neither the sockhash nor the splice
		// programs are created.
		if _, err := os.Stat(filepath.Join(datapath.MapDir(e.pinDir), "sb_sockhash")); !os.IsNotExist(err) {
			t.Errorf("sb_sockhash pinned with splicing off (stat: %v)", err)
		}
		if slices.Contains(s.Maps, "sb_sockhash") || !slices.Contains(s.Maps, "sb_socks") {
			t.Errorf("pinned maps with splicing off: %v", s.Maps)
		}
		progs := processPrograms(t, agent.Cmd.Process.Pid)
		// The sockops variant without splicing: sockops_track, or
		// sockops_listen with inbound capture on.
		if !slices.Contains(progs, "sockops_listen") || slices.Contains(progs, "sockops_splice") || slices.Contains(progs, "sockops_full") || slices.Contains(progs, "skmsg_splice") {
			t.Errorf("the agent without splicing (inbound on) loaded %v, want sockops_listen and no splice program", progs)
		}
		// `sockbridge maps` never fails as a whole: with one pin gone it
		// prints the rest and names what it could not read. (The map
		// itself lives on, held by the attached programs.)
		if err := os.Remove(filepath.Join(datapath.MapDir(e.pinDir), "sb_tuples")); err != nil {
			t.Fatal(err)
		}
		s = readMaps(t, e.pinDir)
		if len(s.Pods) != 2 || s.Stats.Get("captured") == 0 {
			t.Errorf("maps with sb_tuples unpinned lost the other parts: %+v", s)
		}
		if !strings.Contains(s.Unavailable["map sb_tuples"], "not pinned") || s.Unavailable["in_flight_handshakes"] == "" || len(s.Unavailable) != 2 {
			t.Errorf("maps with sb_tuples unpinned: unavailable = %q, want sb_tuples and in_flight_handshakes named", s.Unavailable)
		}
		stopAgent(t, agent)
	})

	// On a kernel known to fail the splice self-test (Debian's 6.1: the
	// FIONREAD hazard), the agent's own probe turns splicing off and it
	// must load nothing of it; everywhere else splicing is on.
	if testutil.KnownHazards()["selftest/splice"] {
		t.Run("splicing refused by the self-test", func(t *testing.T) {
			agent := testutil.Start(t, testutil.ProcSpec{Args: args()})
			if !agent.WaitOutput("pods synced", agentStartTimeout) {
				t.Fatalf("agent did not start:\n%s", agent.Output())
			}
			if !strings.Contains(agent.Output(), "splice: off because splice self-test failed") {
				t.Errorf("agent log does not say the self-test turned splicing off:\n%s", agent.Output())
			}
			h := holdOpen()
			s := readMaps(t, e.pinDir)
			h.Stop()
			progs := processPrograms(t, agent.Cmd.Process.Pid)
			if s.Spliced != 0 || slices.Contains(s.Maps, "sb_sockhash") || slices.Contains(progs, "skmsg_splice") || len(s.Flows) != 2 {
				t.Errorf("splicing refused: maps %v, programs %v, spliced %d, flows %+v; want no splice map or program and the flow's two sockets listed", s.Maps, progs, s.Spliced, s.Flows)
			}
			stopAgent(t, agent)
		})
	} else {
		t.Run("splicing available", func(t *testing.T) {
			agent := testutil.Start(t, testutil.ProcSpec{Args: args()})
			if !agent.WaitOutput("pods synced", agentStartTimeout) {
				t.Fatalf("agent did not start:\n%s", agent.Output())
			}
			if !strings.Contains(agent.Output(), "plan: splice: on") {
				t.Errorf("agent log does not say splice on:\n%s", agent.Output())
			}
			h := holdOpen()
			s := readMaps(t, e.pinDir)
			h.Stop()
			if s.Spliced != 0 {
				t.Errorf("application sockets in the sockhash: %+v", s)
			}
			h = holdOpen(netip.AddrPortFrom(podBIP, 9090).String())
			s = readMaps(t, e.pinDir)
			h.Stop()
			if s.Spliced != 2 || s.Stats.Get("splice_added") < 2 {
				t.Errorf("want the two sidecars' sockets of the flow to pod B in the sockhash: %+v", s)
			}
			progs := processPrograms(t, agent.Cmd.Process.Pid)
			if !slices.Contains(s.Maps, "sb_sockhash") || !slices.Contains(progs, "skmsg_splice") || !slices.Contains(progs, "sockops_full") || slices.Contains(progs, "sockops_listen") {
				t.Errorf("splicing and inbound on: maps %v, programs %v; want sb_sockhash, sockops_full and skmsg_splice", s.Maps, progs)
			}
			stopAgent(t, agent)
		})
	}

	t.Run("essential missing", func(t *testing.T) {
		if out, err := exec.Command(bin.sockbridge, "uninstall", "--bpffs-dir", e.pinDir).CombinedOutput(); err != nil {
			t.Fatalf("uninstall: %v\n%s", err, out)
		}
		cmd := exec.Command(args("--disable-feature", "cgroup/getsockopt")[0], args("--disable-feature", "cgroup/getsockopt")[1:]...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Fatalf("agent exit: %v, want exit code 1\n%s", err, stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		last := lines[len(lines)-1]
		if !strings.Contains(last, "cgroup/getsockopt") || !strings.Contains(last, "turned off on request") || strings.Contains(last, "needs Linux") || strings.Contains(stderr.String(), "verifier") {
			t.Errorf("want one line naming cgroup/getsockopt and why (turned off), not a kernel version, got:\n%s", stderr.String())
		}
		if _, err := os.Stat(e.pinDir); !os.IsNotExist(err) {
			t.Errorf("the refusing agent left %s behind", e.pinDir)
		}
		if progs := attachedPrograms(t, e.cgroup); len(progs) != 0 {
			t.Errorf("the refusing agent attached %v", progs)
		}
	})
}

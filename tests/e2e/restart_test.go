package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// restartConns is the number of sequential connections the client makes
// while the agent is killed and restarted.
const restartConns = 1500

// The agent is killed with SIGKILL and started again three times while the
// app makes 1500 sequential connections through HAProxy (uid 1337, reading
// SO_ORIGINAL_DST). Every connection succeeds, and every one went through
// the sidecar to the address the app dialled: the pinned datapath keeps
// capturing while no agent runs, and a starting agent (probe, load, link
// updates, pod sync) never opens a gap. Each new agent is waited for until
// /readyz passes, so every kill lands on a fully started agent and every
// start overlaps the traffic. tests/controller has the same with the
// Kubernetes pod source.
func TestRestartUnderLoad(t *testing.T) {
	e := newBareEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{
		{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()},
	}})
	start := func() *testutil.Agent {
		return testutil.StartAgent(t, bin.sockbridge, "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile)
	}
	agent := start()
	agent.WaitReady(t)

	// Paced so that the three restarts fall inside the run: at most 200
	// connections a second, so at least 7.5 s.
	client := testutil.Start(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{
		bin.sbpeer, "conns", "-addr", serverAddr(), "-n", fmt.Sprint(restartConns), "-parallel", "1", "-pause", "5ms"}})
	// Kill when the sidecar has seen a quarter, a half, three quarters.
	_, agents := testutil.RestartsUnderLoad(t, agent, start, client, a.sidecar, restartConns/4, restartConns/2, 3*restartConns/4)
	client.Wait()
	var r peer.Conns
	if err := json.Unmarshal([]byte(client.Output()), &r); err != nil {
		t.Fatalf("client output %q: %v", client.Output(), err)
	}
	lines := a.sidecar.WaitLogLines("outbound", restartConns)
	wrong := 0
	for _, l := range lines {
		if !strings.Contains(l, "orig_dst="+serverAddr()) {
			wrong++
			t.Errorf("sidecar line with another original destination: %s", l)
		}
	}
	if r.OK != restartConns || r.Failed != 0 || len(lines) != restartConns || wrong != 0 {
		t.Errorf("after 3 SIGKILL restarts: %d of %d connections succeeded (%v), the sidecar forwarded %d; counters %v",
			r.OK, restartConns, r.Errors, len(lines), e.pinnedStats(t))
		for i, out := range agents {
			t.Logf("agent %d:\n%s", i+1, out)
		}
	}
}

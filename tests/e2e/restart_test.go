package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
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
// start overlaps the traffic.
func TestRestartUnderLoad(t *testing.T) {
	e := newBareEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{
		{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()},
	}})
	agentArgs := []string{"--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile}
	startAgent := func() *testutil.Proc {
		t.Helper()
		p, base := startServingAgent(t, agentArgs...)
		waitReady(t, base, p)
		return p
	}
	agent := startAgent()

	// Paced so that the three restarts fall inside the run: at most 200
	// connections a second, so at least 7.5 s.
	client := testutil.Start(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{
		bin.sbpeer, "conns", "-addr", serverAddr(), "-n", fmt.Sprint(restartConns), "-parallel", "1", "-pause", "5ms"}})
	var agents []string
	for i := 1; i <= 3; i++ {
		// Kill when the sidecar has seen a quarter, a half, three quarters.
		at := i * restartConns / 4
		if got := len(a.sidecar.WaitLogLinesFor("outbound", at, 60*time.Second)); got < at {
			t.Fatalf("sidecar saw %d connections, waiting for %d; client:\n%s", got, at, client.Output())
		}
		if done, _ := client.Exited(); done {
			t.Fatalf("the client finished before restart %d: the restarts did not overlap the traffic", i)
		}
		// The whole process group, as a container's end kills every
		// process in it (a probe helper, if one is running).
		if err := syscall.Kill(-agent.Cmd.Process.Pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill agent: %v", err)
		}
		agent.Wait()
		agents = append(agents, agent.Output())
		agent = startAgent()
		if done, _ := client.Exited(); done {
			t.Fatalf("the client finished while agent %d started: the restart did not overlap the traffic", i+1)
		}
	}
	client.Wait()
	var r connsResult
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
		stats := e.pinnedStats(t)
		t.Errorf("after 3 SIGKILL restarts: %d of %d connections succeeded (%v), the sidecar forwarded %d; counters %v",
			r.OK, restartConns, r.Errors, len(lines), stats)
		for i, out := range agents {
			t.Logf("agent %d:\n%s", i+1, out)
		}
	}
}

package e2e

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/coexist"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// service is the "ClusterIP" the stand-in load balancer translates to the
// test server. No host has it: only the LB's rewrite makes it reachable.
var service = netip.MustParseAddrPort("10.250.0.200:80")

func backend() netip.AddrPort { return netip.AddrPortFrom(serverIP, serverPort) }

// attachLB attaches the stand-in socket LB (tests/coexist) to cgroup and
// returns it with its program id.
func attachLB(t *testing.T, cgroup string) (*coexist.LB, int) {
	t.Helper()
	lb, err := coexist.Attach(cgroup, service, backend())
	if err != nil {
		t.Fatalf("attach the stand-in LB: %v", err)
	}
	t.Cleanup(func() { lb.Close() })
	id, err := lb.ProgramID()
	if err != nil {
		t.Fatal(err)
	}
	return lb, int(id)
}

// requireAttached fails t unless program id is attached to cgroup's
// connect4 hook.
func requireAttached(t *testing.T, cgroup string, id int, when string) {
	t.Helper()
	for _, p := range attachedPrograms(t, cgroup) {
		if p.ID == id && strings.Contains(p.AttachType, "inet4_connect") {
			return
		}
	}
	t.Fatalf("%s: the LB's program %d is no longer attached to %s: %v", when, id, cgroup, attachedPrograms(t, cgroup))
}

// Another tool's connect4 program at a parent cgroup, as Cilium's socket
// LB attaches at the cgroup root: sockbridge's programs, attached below it,
// run first. The app's connect to the service is captured before the LB
// sees it, so the sidecar's SO_ORIGINAL_DST is the service the app
// dialled; the sidecar's own connect to the service is then translated to
// the backend by the LB. A SIGKILLed and restarted agent and `sockbridge
// uninstall` leave the LB's program attached and working.
func TestCoexistWithSocketLBAbove(t *testing.T) {
	testutil.RequirePrivileged(t, "bpftool")
	node := testutil.TestCgroup(t) // where the LB attaches; never the machine's root
	e := newBareEnvIn(t, node, false)
	lb, lbID := attachLB(t, node)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()}}})
	agentArgs := []string{"--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile}
	agent := testutil.StartAgent(t, bin.sockbridge, agentArgs...)
	agent.WaitReady(t)

	translated := func() uint64 {
		t.Helper()
		s, err := lb.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return s.Get("translated")
	}
	captured := func(round int) {
		t.Helper()
		var r peer.Roundtrip
		a.run(t, &r, "roundtrip", "-addr", service.String(), "-bytes", "4096")
		if !r.Intact || r.ServerLocal != backend().String() {
			t.Fatalf("round %d: app -> %s did not reach the backend %s intact: %+v", round, service, backend(), r)
		}
		if r.Getpeername != service.String() {
			t.Errorf("round %d: the app's getpeername says %s, want the service %s", round, r.Getpeername, service)
		}
		lines := a.sidecar.WaitLogLines("outbound", round)
		if len(lines) != round || !strings.Contains(lines[round-1], "orig_dst="+service.String()) {
			t.Fatalf("round %d: sidecar lines %q, want %d, the last with orig_dst=%s (the service, not the backend)", round, lines, round, service)
		}
		// Only the sidecar's upstream connect reached the LB with the
		// service address: the app's was already captured.
		if n := translated(); n != uint64(round) {
			t.Errorf("round %d: the LB translated %d connects, want %d (one per sidecar upstream)", round, n, round)
		}
	}
	captured(1)

	agent.Kill(t)
	agent = testutil.StartAgent(t, bin.sockbridge, agentArgs...)
	agent.WaitReady(t)
	requireAttached(t, node, lbID, "after an agent restart")
	captured(2)

	stopAgent(t, agent.Proc)
	if out, err := exec.Command(bin.sockbridge, "uninstall", "--bpffs-dir", e.pinDir).CombinedOutput(); err != nil {
		t.Fatalf("sockbridge uninstall: %v\n%s", err, out)
	}
	requireAttached(t, node, lbID, "after sockbridge uninstall")
	if left := attachedPrograms(t, e.cgroup); len(left) != 0 {
		t.Errorf("sockbridge programs left after uninstall: %v", left)
	}
	// Without sockbridge the LB alone translates the app's connect.
	var r peer.Roundtrip
	a.run(t, &r, "roundtrip", "-addr", service.String(), "-bytes", "4096")
	if !r.Intact || r.ServerLocal != backend().String() || translated() != 3 {
		t.Errorf("after uninstall: %+v, LB translated %d, want the app's connect translated (3)", r, translated())
	}
	if n := len(a.sidecar.LogLines("outbound")); n != 2 {
		t.Errorf("sidecar saw %d connections after uninstall, want still 2", n)
	}
}

// The other order, documented in docs/coexistence.md: a translating program
// BELOW sockbridge's attach point (here in the app's own cgroup) runs
// first, so the app's connect reaches sockbridge already translated and the
// sidecar's SO_ORIGINAL_DST is the backend, not the service: what Istio's
// iptables capture shows under Cilium's socket LB (cilium#16583).
func TestSocketLBBelowSockbridge(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	lb, _ := attachLB(t, a.app)
	var r peer.Roundtrip
	a.run(t, &r, "roundtrip", "-addr", service.String(), "-bytes", "4096")
	if !r.Intact || r.ServerLocal != backend().String() {
		t.Fatalf("app -> %s did not reach the backend intact: %+v", service, r)
	}
	lines := a.sidecar.WaitLogLines("outbound", 1)
	if len(lines) != 1 || !strings.Contains(lines[0], "orig_dst="+backend().String()) {
		t.Errorf("sidecar lines %q, want one with orig_dst=%s: the LB below translated first", lines, backend())
	}
	s, err := lb.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.Get("translated") != 1 {
		t.Errorf("LB translated %d connects, want 1 (the app's)", s.Get("translated"))
	}
}

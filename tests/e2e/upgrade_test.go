package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// layout1Commit is the last released agent, whose datapath is pinned
// layout 1 (IPv4-only maps pinned flat, links named after programs).
const layout1Commit = "9048814"

const (
	// upgradeRounds is how many times one run installs layout 1 and
	// upgrades it under load.
	upgradeRounds = 3
	// upgradeConns is the sequential connections of each round.
	upgradeConns = 800
	upgradePause = 20 * time.Millisecond // between the client's connections
	// longLivedConns is the connections of each long-lived client, opened
	// under layout 1 before the upgrade and checked until after it.
	longLivedConns = 4
	// heldConns is the connections of each group whose handshake is held
	// across the switch (see holdHandshakes).
	heldConns = 4
)

// The upgrade from the last release (layout 1, built from git history) to
// this agent under load, three times in one run. Each round: the old agent
// installs its datapath; two clients open long-lived connections under it,
// one through HAProxy (getpeername and an echo checked every 100 ms), one
// through a sidecar that asks SO_ORIGINAL_DST again at each check; a third
// pod holds handshakes in each state a connection can be in when the hooks
// switch (holdHandshakes); an app makes 800 sequential connections through
// HAProxy (uid 1337, forwarding to SO_ORIGINAL_DST). The old agent is
// SIGKILLed at a quarter of them and this agent started on the same pin
// directory: it loads its maps in v2/, fills its pod map, then switches
// every hook in place. The held handshakes are let go, and the agent is
// SIGKILLed and restarted at half of them, while layout 1's maps are still
// in use. Every sequential and held connection must succeed through the
// sidecar to the address dialled, every long-lived check must pass, layout
// 1's pins must be gone but its maps kept in v2/legacy/ while its sockets
// live, and dropped by the next agent once they are closed. Then
// `sockbridge uninstall` for the next round.
func TestUpgradeFromLayout1UnderLoad(t *testing.T) {
	testutil.RequirePrivileged(t, "iptables", "ss")
	e := newBareEnv(t)
	old := testutil.BuildAtCommit(t, layout1Commit, "./cmd/sockbridge")
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	b := e.addPod("b", podBIP, podOpts{})
	c := e.addPod("c", podCIP, podOpts{sidecar: true})
	app := e.startApp(a, appPort) // a's sidecar listens on 15006 from the start
	remote := e.net.AddHost("remote", netip.MustParseAddr("10.250.0.20"))
	if _, err := os.Stat("/proc/sys/net/ipv4/tcp_syn_linear_timeouts"); err == nil {
		// Held SYNs are sent again every second (kernel 6.5), not after
		// 1, 3, 7 ... s.
		c.ns.Sysctl(t, "net.ipv4.tcp_syn_linear_timeouts", "30")
	}
	testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.proxy, UID: testutil.Int(proxyUID), GID: testutil.Int(proxyUID),
		Args: []string{bin.sbpeer, "origdst-echo", "-listen", fmt.Sprintf("127.0.0.1:%d", e.cfg.OutboundPort)}})
	testutil.WaitListening(t, b.ns, int(e.cfg.OutboundPort))
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{
		{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()},
		{"name": "test/b", "cgroup": b.cgroup, "ip": podBIP.String()},
		{"name": "test/c", "cgroup": c.cgroup, "ip": podCIP.String()},
	}})
	startNew := func() *testutil.Agent {
		return testutil.StartAgent(t, bin.sockbridge, "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile)
	}
	legacyDir := filepath.Join(datapath.MapDir(e.pinDir), "legacy")
	vdir := datapath.MapDir("") // "v2"

	seen := 0 // the sidecar's outbound lines so far
	for round := 1; round <= upgradeRounds; round++ {
		oldAgent := testutil.Start(t, testutil.ProcSpec{Args: []string{old, "agent",
			"--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile}})
		if !oldAgent.WaitOutput("pods synced", agentStartTimeout) {
			t.Fatalf("round %d: the layout 1 agent did not start:\n%s", round, oldAgent.Output())
		}
		requirePins(t, e.pinDir, []string{"sb_socks", "sb_tuples", "links/connect4_redirect", "links/sockops_track"}, nil)

		echo := startLongLived(t, a, "echo")
		asks := startLongLived(t, b, "origdst")
		held := holdHandshakes(t, c)
		seen = len(a.sidecar.WaitLogLines("outbound", seen+longLivedConns))
		// Paced so that the 600 connections after the upgrade outlast the
		// new agent's start (probe, load, migration): at 5 ms a quiet
		// machine (load 6) once finished them before the agent was ready.
		client := testutil.Start(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{
			bin.sbpeer, "conns", "-addr", serverAddr(), "-n", fmt.Sprint(upgradeConns), "-parallel", "1", "-pause", upgradePause.String()}})
		// The upgrade at a quarter, a restart at a half.
		agent, outputs := testutil.RestartsUnderLoad(t, &testutil.Agent{Proc: oldAgent}, startNew, client, a.sidecar, seen+upgradeConns/4)
		heldResults := held()
		agent, more := testutil.RestartsUnderLoad(t, agent, startNew, client, a.sidecar, seen+upgradeConns/2)
		outputs = append(outputs, more...)
		client.Wait()
		if round == 1 {
			inboundAfterUpgrade(t, remote, podAIP, app)
		}
		var r peer.Conns
		if err := json.Unmarshal([]byte(client.Output()), &r); err != nil {
			t.Fatalf("round %d: client output %q: %v", round, client.Output(), err)
		}
		lines := a.sidecar.WaitLogLines("outbound", seen+upgradeConns)[seen:]
		seen += len(lines)
		wrong := 0
		for _, l := range lines {
			if !strings.Contains(l, "orig_dst="+serverAddr()) {
				wrong++
				t.Errorf("round %d: sidecar line with another original destination: %s", round, l)
			}
		}
		stats := e.pinnedStats(t)
		if r.OK != upgradeConns || r.Failed != 0 || len(lines) != upgradeConns || wrong != 0 {
			t.Errorf("round %d, upgrade from layout 1 and a restart: %d of %d connections succeeded (%v), the sidecar forwarded %d; counters %v",
				round, r.OK, upgradeConns, r.Errors, len(lines), stats)
			for i, out := range outputs {
				t.Logf("agent %d:\n%s", i+1, out)
			}
		}
		if !strings.Contains(outputs[1], "switched every hook from layout 1") {
			t.Errorf("round %d: the first agent of this layout did not switch from layout 1:\n%s", round, outputs[1])
		}
		// Layout 1's pins are gone, its in-flight state is kept while its
		// sockets are open, and the long-lived connections took it.
		requirePins(t, e.pinDir,
			[]string{"links/connect4", "links/sockops", "links/getsockopt", "links/getpeername4", vdir + "/sb_socks", vdir + "/legacy/sb_socks", vdir + "/legacy/sb_tuples"},
			[]string{"sb_socks", "sb_tuples", "sb_pods", "sb_stats", "links/connect4_redirect", "links/sockops_track", "links/getsockopt_origdst", "links/getpeername4_restore"})
		if stats.Get("origdst_unknown") != 0 {
			t.Errorf("round %d: origdst_unknown %d", round, stats.Get("origdst_unknown"))
		}
		for group, res := range heldResults() {
			if res.OK != heldConns || res.Failed != 0 {
				t.Errorf("round %d: connections whose %s across the switch: %d of %d succeeded: %v", round, group, res.OK, heldConns, res.Errors)
			}
		}
		cLines := c.sidecar.WaitLogLines("outbound", round*3*heldConns)
		for _, l := range cLines {
			if !strings.Contains(l, "orig_dst="+serverAddr()) {
				t.Errorf("round %d: pod c's sidecar line with another original destination: %s", round, l)
			}
		}
		stats = e.pinnedStats(t)
		t.Logf("round %d: %d connections, %d forwarded; pod c's sidecar forwarded %d; legacy_sock %d, legacy_tuple %d, captured %d, origdst_answered %d",
			round, r.OK, len(lines), len(cLines), stats.Get("legacy_sock"), stats.Get("legacy_tuple"), stats.Get("captured"), stats.Get("origdst_answered"))
		// Every fallback of bpf/legacy.c was taken: layout 1's socket
		// storage (long-lived app sockets, b's sidecar sockets, the
		// accepted group's sidecar sockets, the SYN-held group's app
		// sockets) and its sb_tuples (the ACK-held group).
		if want := uint64(3*longLivedConns + 2*heldConns); stats.Get("legacy_sock") < want || stats.Get("legacy_tuple") < heldConns {
			t.Errorf("round %d: legacy_sock %d, legacy_tuple %d: want at least %d and %d", round, stats.Get("legacy_sock"), stats.Get("legacy_tuple"), want, heldConns)
		}
		for _, ll := range []*testutil.Proc{echo, asks} {
			res := stopLongLived(t, ll)
			t.Logf("round %d: long-lived: %+v", round, res)
			if res.Failed != 0 || res.Conns != longLivedConns || res.Rounds < 2 {
				t.Errorf("round %d: long-lived connections opened under layout 1: %+v", round, res)
			}
		}

		// Once no socket layout 1 captured is open, the next agent drops
		// its maps and loads without the fallbacks.
		waitNoConnections(t, a.ns, b.ns, c.ns)
		agent.Kill(t)
		agent = startNew()
		agent.WaitReady(t)
		if _, err := os.Stat(legacyDir); !os.IsNotExist(err) {
			t.Errorf("round %d: %s still there after layout 1's connections closed (stat: %v):\n%s", round, legacyDir, err, agent.Output())
		}
		var after peer.Conns
		a.run(t, &after, "conns", "-addr", serverAddr(), "-n", "20", "-parallel", "1")
		if after.OK != 20 || len(a.sidecar.WaitLogLines("outbound", seen+20)) != seen+20 {
			t.Errorf("round %d: after layout 1's maps were dropped: %+v", round, after)
		}
		seen += 20

		agent.Kill(t)
		if out, err := exec.Command(bin.sockbridge, "uninstall", "--bpffs-dir", e.pinDir).CombinedOutput(); err != nil {
			t.Fatalf("round %d: sockbridge uninstall: %v\n%s", round, err, out)
		}
		if left := attachedPrograms(t, e.cgroup); len(left) != 0 {
			t.Fatalf("round %d: programs attached after uninstall: %v", round, left)
		}
	}
}

// inboundAfterUpgrade checks inbound capture after the upgrade. Layout 1
// had none; the upgraded agent starts it for a sidecar that has been
// listening since before the switch (its listener is recorded from user
// space), and nothing reaches the app past the sidecar meanwhile.
func inboundAfterUpgrade(t *testing.T, remote *testutil.Netns, ip netip.Addr, app *testutil.Proc) {
	t.Helper()
	addr := netip.AddrPortFrom(ip, appPort).String()
	deadline := time.Now().Add(agentStartTimeout)
	var r peer.Roundtrip
	for {
		out, err := testutil.Output(t, time.Minute, testutil.ProcSpec{Netns: remote, Args: []string{bin.sbpeer, "roundtrip", "-addr", addr, "-bytes", "65536"}})
		if err == nil {
			err = json.Unmarshal(out, &r)
		}
		if err == nil && r.Intact {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inbound to %s after the upgrade: %v %+v", addr, err, r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if hostOf(r.ServerSawPeer) != "127.0.0.6" {
		t.Errorf("inbound after the upgrade: the app saw %s, want the sidecar's 127.0.0.6", r.ServerSawPeer)
	}
	for _, peer := range accepted(app) {
		if hostOf(peer) != "127.0.0.6" {
			t.Errorf("after the upgrade the app accepted a connection from %s, past its sidecar", peer)
		}
	}
}

// holdHandshakes opens connections from pod c that are, when the hooks
// switch, in each state a captured connection can be in before its sidecar
// answers SO_ORIGINAL_DST, by stopping c's sidecar (HAProxy) and dropping
// packets with iptables in c's namespace:
//   - accepted: the handshake completed under layout 1, so the sidecar's
//     socket carries layout 1's storage; the sidecar accepts it and asks
//     after the switch;
//   - final ACK held: the client's ACTIVE_ESTABLISHED ran under layout 1
//     (published in its sb_tuples); the sidecar's socket appears, at a
//     SYN-ACK retransmission, after the switch;
//   - SYN held: connect4 and TCP_CONNECT_CB ran under layout 1; the
//     handshake, ACTIVE_ESTABLISHED included, happens after the switch.
//
// Call the returned function after the switch: it lets them go on, and
// returns a function that waits for each group's result.
func holdHandshakes(t *testing.T, c *pod) func() func() map[string]peer.Conns {
	t.Helper()
	port := fmt.Sprint(datapath.IstioDefaults().OutboundPort)
	listener := "127.0.0.1:" + port
	iptables := func(args ...string) {
		t.Helper()
		testutil.Run(t, "nsenter", append([]string{"--net=" + c.ns.Path(), "--", "iptables", "-w"}, args...)...)
	}
	ackRule := []string{"OUTPUT", "-o", "lo", "-p", "tcp", "--dport", port, "--tcp-flags", "SYN,ACK,FIN,RST,PSH", "ACK", "-j", "DROP"}
	synRule := []string{"OUTPUT", "-o", "lo", "-p", "tcp", "--dport", port, "--tcp-flags", "SYN,ACK", "SYN", "-j", "DROP"}
	start := func() *testutil.Proc {
		return testutil.Start(t, testutil.ProcSpec{Netns: c.ns, Cgroup: c.app, Args: []string{
			bin.sbpeer, "held", "-addr", serverAddr(), "-n", fmt.Sprint(heldConns), "-timeout", "90s"}})
	}
	c.sidecar.Cmd.Process.Signal(syscall.SIGSTOP)
	accepted := start()
	waitSockets(t, c.ns, "LISTEN", "", heldConns) // queued, not accepted
	iptables(append([]string{"-A"}, ackRule...)...)
	ackHeld := start()
	waitSockets(t, c.ns, "SYN-RECV", "", heldConns)
	iptables(append([]string{"-A"}, synRule...)...)
	synHeld := start()
	waitSockets(t, c.ns, "SYN-SENT", listener, heldConns)
	return func() func() map[string]peer.Conns {
		iptables(append([]string{"-D"}, synRule...)...)
		iptables(append([]string{"-D"}, ackRule...)...)
		c.sidecar.Cmd.Process.Signal(syscall.SIGCONT)
		return func() map[string]peer.Conns {
			out := map[string]peer.Conns{}
			for group, p := range map[string]*testutil.Proc{"handshake completed": accepted, "final ACK was held": ackHeld, "SYN was held": synHeld} {
				p.Wait()
				var r peer.Conns
				if err := json.Unmarshal([]byte(p.Output()), &r); err != nil {
					t.Fatalf("held connections (%s): output %q: %v", group, p.Output(), err)
				}
				out[group] = r
			}
			return out
		}
	}
}

// waitSockets waits until at least n TCP sockets in ns are in state (as ss
// names it) with peer as their remote address ("" any); for "LISTEN", until
// the listeners' accept queues hold n connections between them.
func waitSockets(t *testing.T, ns *testutil.Netns, state, peer string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := exec.Command("nsenter", "--net="+ns.Path(), "--", "ss", "-Htan").Output()
		got := 0
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) < 5 || f[0] != state || (peer != "" && f[4] != peer):
			case state == "LISTEN":
				q, _ := strconv.Atoi(f[1]) // Recv-Q: the accept queue
				got += q
			default:
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sockets in %s to %q in %s after 10 s, want %d:\n%s", got, state, peer, ns.Name, n, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startLongLived starts sbpeer longlived in p's app container and waits
// until its connections are open.
func startLongLived(t *testing.T, p *pod, ask string) *testutil.Proc {
	t.Helper()
	ll := testutil.Start(t, testutil.ProcSpec{Netns: p.ns, Cgroup: p.app, Args: []string{
		bin.sbpeer, "longlived", "-addr", serverAddr(), "-n", fmt.Sprint(longLivedConns), "-ask", ask}})
	if !ll.WaitOutput(fmt.Sprintf("open %d", longLivedConns), 30*time.Second) {
		t.Fatalf("long-lived connections in %s did not open:\n%s", p.name, ll.Output())
	}
	return ll
}

// stopLongLived ends a longlived client and returns what it saw.
func stopLongLived(t *testing.T, ll *testutil.Proc) peer.LongLived {
	t.Helper()
	ll.Cmd.Process.Signal(syscall.SIGTERM)
	ll.Wait()
	var res peer.LongLived
	out := ll.Output()
	if i := strings.Index(out, "{"); i < 0 || json.Unmarshal([]byte(out[i:]), &res) != nil {
		t.Fatalf("longlived output %q", out)
	}
	return res
}

// waitNoConnections waits until no TCP socket but listeners and TIME-WAIT
// ones is left in the namespaces: every captured connection has closed at
// both ends.
func waitNoConnections(t *testing.T, nss ...*testutil.Netns) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var open []string
		for _, ns := range nss {
			out, _ := exec.Command("nsenter", "--net="+ns.Path(), "--", "ss", "-Htan").Output()
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if f := strings.Fields(line); len(f) > 0 && f[0] != "LISTEN" && f[0] != "TIME-WAIT" {
					open = append(open, ns.Name+": "+line)
				}
			}
		}
		if len(open) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections still open after 30 s:\n%s", strings.Join(open, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// requirePins fails t unless every path of want exists in pinDir and none
// of absent does.
func requirePins(t *testing.T, pinDir string, want, absent []string) {
	t.Helper()
	for _, p := range want {
		if _, err := os.Stat(filepath.Join(pinDir, p)); err != nil {
			t.Errorf("%s not pinned: %v (pins: %v)", p, err, pinTree(pinDir))
		}
	}
	for _, p := range absent {
		if _, err := os.Stat(filepath.Join(pinDir, p)); err == nil {
			t.Errorf("%s still pinned (pins: %v)", p, pinTree(pinDir))
		}
	}
}

// pinTree lists every pin and directory below dir.
func pinTree(dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err == nil && path != dir {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return nil
	})
	slices.Sort(out)
	return out
}

// An agent that finds a newer pinned layout than its own (faked here: an
// empty v<N+1> directory beside this agent's datapath) refuses to start in
// one line that names both layouts and `sockbridge uninstall`, before the
// probe and before it changes anything: the datapath pinned there keeps
// capturing. `sockbridge uninstall` then removes both.
func TestDowngradeRefused(t *testing.T) {
	e := newBareEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()}}})
	agent := testutil.StartAgent(t, bin.sockbridge, "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile)
	agent.WaitReady(t)
	agent.Kill(t)
	newer := fmt.Sprintf("v%d", datapath.LayoutVersion+1)
	if err := os.Mkdir(filepath.Join(e.pinDir, newer), 0o700); err != nil {
		t.Fatal(err)
	}
	pinsBefore := pinTree(e.pinDir)
	progsBefore := progIDs(attachedPrograms(t, e.cgroup))

	out, err := exec.Command(bin.sockbridge, "agent", "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("agent over layout %s: %v, want exit code 1:\n%s", newer, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := []string{"layout " + newer, fmt.Sprintf("v%d", datapath.LayoutVersion), "downgrade", "sockbridge uninstall --bpffs-dir " + e.pinDir}
	if len(lines) != 1 || !containsAll(lines[0], want...) {
		t.Errorf("refusal:\n%s\nwant one line naming %q", out, want)
	}
	if after := pinTree(e.pinDir); !slices.Equal(after, pinsBefore) {
		t.Errorf("the refusing agent changed the pins: %v, before %v", after, pinsBefore)
	}
	if after := progIDs(attachedPrograms(t, e.cgroup)); !slices.Equal(after, progsBefore) {
		t.Errorf("the refusing agent changed the attached programs: %v, before %v", after, progsBefore)
	}
	var r peer.Roundtrip
	a.run(t, &r, "roundtrip", "-addr", serverAddr(), "-bytes", "1000")
	if !r.Intact || r.Getpeername != serverAddr() || len(a.sidecar.WaitLogLines("outbound", 1)) != 1 {
		t.Errorf("the datapath pinned there stopped capturing: %+v", r)
	}
	if out, err := exec.Command(bin.sockbridge, "uninstall", "--bpffs-dir", e.pinDir).CombinedOutput(); err != nil {
		t.Fatalf("sockbridge uninstall: %v\n%s", err, out)
	}
	if _, err := os.Stat(e.pinDir); !os.IsNotExist(err) {
		t.Errorf("%s left after uninstall: %v", e.pinDir, pinTree(e.pinDir))
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// Moving the agent to another cgroup under load (--cgroup changed, between
// the pods' parent and its parent, up to ten times while an app makes 5000
// back-to-back connections): each agent attaches its links to its cgroup
// first and then removes the links pinned for the other one, connect
// first. Every connection goes through the sidecar to the address dialled:
// none is left uncaptured, none loses its SO_ORIGINAL_DST. At the end only
// the last agent's cgroup has programs.
func TestCgroupChangeUnderLoad(t *testing.T) {
	e := newBareEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	inner := filepath.Join(e.cgroup, "kubepods") // holds the pods
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{{"name": "test/a", "cgroup": a.cgroup, "ip": podAIP.String()}}})
	cgroups := []string{inner, e.cgroup}
	n := 0
	start := func() *testutil.Agent {
		cg := cgroups[n%2]
		n++
		return testutil.StartAgent(t, bin.sockbridge, "--cgroup", cg, "--bpffs-dir", e.pinDir, "--pods-file", podFile)
	}
	agent := start()
	agent.WaitReady(t)
	const conns, maxChanges, minChanges = 5000, 10, 3
	client := testutil.Start(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{
		bin.sbpeer, "conns", "-addr", serverAddr(), "-n", fmt.Sprint(conns), "-parallel", "1"}})
	var outputs []string
	changes := 0
	for ; changes < maxChanges; changes++ {
		if done, _ := client.Exited(); done {
			break
		}
		agent.Kill(t)
		outputs = append(outputs, agent.Output())
		agent = start()
		agent.WaitReady(t)
	}
	client.Wait()
	if changes < minChanges {
		t.Fatalf("only %d cgroup changes while the client ran, want %d", changes, minChanges)
	}
	var r peer.Conns
	if err := json.Unmarshal([]byte(client.Output()), &r); err != nil {
		t.Fatalf("client output %q: %v", client.Output(), err)
	}
	lines := a.sidecar.WaitLogLines("outbound", conns)
	wrong := 0
	for _, l := range lines {
		if !strings.Contains(l, "orig_dst="+serverAddr()) {
			wrong++
		}
	}
	t.Logf("%d cgroup changes under %d connections: %d succeeded, %d forwarded by the sidecar", changes, conns, r.OK, len(lines))
	if r.OK != conns || r.Failed != 0 || len(lines) != conns || wrong != 0 {
		t.Errorf("%d cgroup changes: %d of %d connections succeeded (%v), the sidecar forwarded %d, %d to another address; counters %v",
			changes, r.OK, conns, r.Errors, len(lines), wrong, e.pinnedStats(t))
		for i, out := range append(outputs, agent.Output()) {
			t.Logf("agent %d:\n%s", i+1, out)
		}
	}
	last, other := cgroups[(n-1)%2], cgroups[n%2]
	if got := len(attachedPrograms(t, last)); got != len(datapath.HookNames()) {
		t.Errorf("%d programs on the agent's cgroup %s, want %d", got, last, len(datapath.HookNames()))
	}
	if left := attachedPrograms(t, other); len(left) != 0 {
		t.Errorf("programs left on the previous cgroup %s: %v", other, left)
	}
}

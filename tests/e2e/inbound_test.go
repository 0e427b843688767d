package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

func withInbound(c *datapath.Config) { c.Inbound = true }

// inboundPod is pod B of the inbound tests: meshed, HAProxy as its sidecar
// (its inbound listener on 0.0.0.0:15006 forwards from 127.0.0.6 to what
// SO_ORIGINAL_DST returns), inbound capture attached to its namespace, and
// an app server on appPort that logs every connection it accepts.
type inboundPod struct {
	*pod
	app     *testutil.Proc
	appAddr string
}

const appPort = 9090

func (e *env) addInboundPod(name string, ip netip.Addr, in policy.Inbound) *inboundPod {
	e.t.Helper()
	p := e.addPod(name, ip, podOpts{sidecar: true})
	if err := e.dp.UpsertPod(datapath.Pod{Name: name, CgroupID: p.id, IPv4: ip, Capture: true, Outbound: outboundAll, Inbound: in}); err != nil {
		e.t.Fatalf("upsert pod %s: %v", name, err)
	}
	if err := e.dp.AttachInbound(p.id, p.ns.Path()); err != nil {
		e.t.Fatalf("attach inbound capture to %s: %v", name, err)
	}
	ip4 := &inboundPod{pod: p, appAddr: netip.AddrPortFrom(ip, appPort).String()}
	ip4.app = e.startApp(p, appPort)
	return ip4
}

// startApp runs a logging echo server in the pod's app container.
func (e *env) startApp(p *pod, port int) *testutil.Proc {
	e.t.Helper()
	app := testutil.Start(e.t, testutil.ProcSpec{Netns: p.ns, Cgroup: p.app, Args: []string{bin.sbpeer, "serve", "-log", "-listen", fmt.Sprintf("0.0.0.0:%d", port)}})
	testutil.WaitListening(e.t, p.ns, port)
	return app
}

// accepted returns the peers the app server has accepted so far.
func accepted(app *testutil.Proc) []string {
	var out []string
	for _, l := range strings.Split(app.Output(), "\n") {
		if peer, ok := strings.CutPrefix(l, "accepted "); ok {
			out = append(out, peer)
		}
	}
	return out
}

// otherNode is a second node: its own cgroup subtree with its own datapath
// (its own agent), whose pods share the test network. Its meshed pod's
// sidecar dials pod B like any remote client: no same-node shortcut.
func (e *env) otherNode(name string, ip netip.Addr) *pod {
	e.t.Helper()
	cfg := datapath.IstioDefaults()
	cfg.CgroupPath = testutil.TestCgroup(e.t)
	cfg.PinDir = testutil.PinDir(e.t)
	e.t.Cleanup(func() {
		if err := datapath.Uninstall(cfg.PinDir); err != nil {
			e.t.Errorf("uninstall the other node's datapath: %v", err)
		}
	})
	dp, err := datapath.Load(cfg)
	if err != nil {
		e.t.Fatalf("load the other node's datapath: %v", err)
	}
	e.t.Cleanup(func() { dp.Close() })
	ns := e.net.AddHost(name, ip)
	podCg := testutil.Cgroup(e.t, cfg.CgroupPath, filepath.Join("kubepods", "pod"+testutil.RandomSuffix()))
	p := &pod{name: name, ns: ns, cgroup: podCg, app: testutil.Cgroup(e.t, podCg, "app"), proxy: testutil.Cgroup(e.t, podCg, "istio-proxy"), id: testutil.CgroupID(e.t, podCg)}
	if err := dp.UpsertPod(datapath.Pod{Name: name, CgroupID: p.id, IPv4: ip, Capture: true, Outbound: outboundAll, Inbound: inboundAll}); err != nil {
		e.t.Fatal(err)
	}
	p.sidecar = testutil.StartSidecar(e.t, testutil.SidecarSpec{Netns: ns, Cgroup: p.proxy, UID: proxyUID, GID: proxyUID, Outbound: int(cfg.OutboundPort), Inbound: int(cfg.InboundPort)})
	return p
}

// A connection to a captured pod's IP and port, from anywhere, lands on the
// pod's sidecar: from a host on another node, from the node itself, from
// an unmeshed pod, and from a meshed pod's sidecar on another node. Each
// moves 16 MiB intact; the sidecar sees the client's own address and reads
// the pod's IP and port from SO_ORIGINAL_DST; the app sees Envoy's inbound
// passthrough 127.0.0.6; no NAT, no conntrack entry.
func TestInboundFromAnySource(t *testing.T) {
	e := newEnvWith(t, withInbound)
	b := e.addInboundPod("b", podBIP, inboundAll)
	watch := testutil.WatchConntrack(t, b.ns)

	remote := e.net.AddHost("remote", netip.MustParseAddr("10.250.0.20"))
	node := e.net.Node(netip.MustParseAddr("10.250.0.254"))
	unmeshed := e.addPod("c", podCIP, podOpts{})
	meshedElsewhere := e.otherNode("d", netip.MustParseAddr("10.250.0.5"))

	clients := []struct {
		name   string
		spec   testutil.ProcSpec
		source netip.Addr
	}{
		{"a host on another node", testutil.ProcSpec{Netns: remote}, remote.Addr},
		{"the node itself", testutil.ProcSpec{Netns: node}, node.Addr},
		{"an unmeshed pod", testutil.ProcSpec{Netns: unmeshed.ns, Cgroup: unmeshed.app}, podCIP},
		{"a meshed pod's sidecar on another node", testutil.ProcSpec{Netns: meshedElsewhere.ns, Cgroup: meshedElsewhere.app}, meshedElsewhere.ns.Addr},
	}
	for i, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			before := e.stats()
			var r peer.Roundtrip
			runIn(t, c.spec, &r, "roundtrip", "-addr", b.appAddr, "-bytes", fmt.Sprint(16<<20))
			if !r.Intact {
				t.Fatalf("16 MiB did not round-trip intact: %+v", r)
			}
			if hostOf(r.ServerSawPeer) != "127.0.0.6" {
				t.Errorf("the app saw %s, want 127.0.0.6: the connection reached it past its sidecar", r.ServerSawPeer)
			}
			if r.ServerLocal != b.appAddr {
				t.Errorf("the app's local address %s, want %s", r.ServerLocal, b.appAddr)
			}
			lines := b.sidecar.WaitLogLines("inbound", i+1)
			if len(lines) != i+1 {
				t.Fatalf("B's sidecar logged %d inbound connections, want %d:\n%s", len(lines), i+1, b.sidecar.Output())
			}
			last := lines[len(lines)-1]
			if !strings.Contains(last, "client="+c.source.String()+":") || !strings.Contains(last, "orig_dst="+b.appAddr) {
				t.Errorf("B's sidecar logged %q, want client=%s and orig_dst=%s (SO_ORIGINAL_DST)", last, c.source, b.appAddr)
			}
			after := e.stats()
			if after.Get("inbound_redirected") != before.Get("inbound_redirected")+1 || after.Get("origdst_inbound") <= before.Get("origdst_inbound") {
				t.Errorf("counters went from %v to %v: want one more inbound_redirected and origdst_inbound", before, after)
			}
		})
	}
	if n := watch.Stop(); n != 0 {
		t.Errorf("%d conntrack entries created in pod B's namespace, want 0", n)
	}
	if peers := accepted(b.app); len(peers) != len(clients) {
		t.Errorf("the app accepted %v, want %d connections, all from 127.0.0.6", peers, len(clients))
	}
	for _, p := range accepted(b.app) {
		if hostOf(p) != "127.0.0.6" {
			t.Errorf("the app accepted a connection from %s", p)
		}
	}
}

// The same-node shortcut keeps working with inbound capture on: a meshed
// pod's sidecar goes straight to B's inbound port, which sk_lookup leaves
// alone.
func TestInboundWithSameNodeShortcut(t *testing.T) {
	e := newEnvWith(t, withInbound)
	b := e.addInboundPod("b", podBIP, inboundAll)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	if err := e.dp.AttachInbound(a.id, a.ns.Path()); err != nil {
		t.Fatal(err)
	}
	before := e.stats()
	var r peer.Roundtrip
	a.run(t, &r, "roundtrip", "-addr", b.appAddr, "-bytes", fmt.Sprint(1<<20))
	if !r.Intact || hostOf(r.ServerSawPeer) != "127.0.0.6" || r.Getpeername != b.appAddr {
		t.Errorf("%+v: want intact, through B's sidecar, getpeername %s", r, b.appAddr)
	}
	after := e.stats()
	if after.Get("shortcut") != before.Get("shortcut")+1 || after.Get("inbound_redirected") != before.Get("inbound_redirected") {
		t.Errorf("counters %v -> %v: want one shortcut and no sk_lookup redirect", before, after)
	}
	if in := b.sidecar.WaitLogLines("inbound", 1); len(in) != 1 || !strings.Contains(in[0], "client="+podAIP.String()+":") {
		t.Errorf("B's sidecar inbound log %q, want one connection from %s", in, podAIP)
	}
}

// Excluded ports, ports never captured (15021, Istio's health port) and the
// sidecar's own ports go straight to the app or the sidecar, as
// istio-iptables' ISTIO_INBOUND chain leaves them; so does the pod's own
// traffic to its own address.
func TestInboundPortRules(t *testing.T) {
	e := newEnvWith(t, withInbound)
	b := e.addInboundPod("b", podBIP, policy.Inbound{AllPorts: true, ExcludePorts: []uint16{9091}})
	excluded := e.startApp(b.pod, 9091)
	health := e.startApp(b.pod, 15021)
	remote := e.net.AddHost("remote", netip.MustParseAddr("10.250.0.20"))

	for _, c := range []struct {
		name string
		port int
		app  *testutil.Proc
	}{{"excluded port", 9091, excluded}, {"never-captured port 15021", 15021, health}} {
		t.Run(c.name, func(t *testing.T) {
			var r peer.Roundtrip
			runIn(t, testutil.ProcSpec{Netns: remote}, &r, "roundtrip", "-addr", netip.AddrPortFrom(podBIP, uint16(c.port)).String(), "-bytes", "65536")
			if !r.Intact || hostOf(r.ServerSawPeer) != remote.Addr.String() {
				t.Errorf("%+v: want intact and straight from %s", r, remote.Addr)
			}
		})
	}
	t.Run("the pod's own traffic to its own address", func(t *testing.T) {
		var r peer.Roundtrip
		b.run(t, &r, "roundtrip", "-addr", b.appAddr, "-bytes", "65536")
		if !r.Intact || hostOf(r.ServerSawPeer) != podBIP.String() {
			t.Errorf("%+v: want intact and straight from the pod's own %s", r, podBIP)
		}
	})
	if n := len(b.sidecar.LogLines("inbound")); n != 0 {
		t.Errorf("B's sidecar logged %d inbound connections, want 0:\n%s", n, b.sidecar.Output())
	}
	if s := e.stats(); s.Get("inbound_redirected") != 0 || s.Get("inbound_refused") != 0 {
		t.Errorf("counters %v: sk_lookup took a connection it must leave alone", s)
	}
}

// A captured pod whose sidecar is not listening refuses inbound
// connections (a TCP reset, as REDIRECT to a closed port gives) and its app
// receives nothing; once the sidecar listens again, connections flow.
func TestInboundFailsClosed(t *testing.T) {
	e := newEnvWith(t, withInbound)
	b := e.addInboundPod("b", podBIP, inboundAll)
	remote := e.net.AddHost("remote", netip.MustParseAddr("10.250.0.20"))

	b.sidecar.Stop()
	var r peer.Conns
	runIn(t, testutil.ProcSpec{Netns: remote}, &r, "conns", "-addr", b.appAddr, "-n", "20", "-parallel", "2")
	if r.OK != 0 || !strings.Contains(r.FirstErr, "connection refused") {
		t.Errorf("with the sidecar down: %+v, want every connection refused", r)
	}
	if peers := accepted(b.app); len(peers) != 0 {
		t.Errorf("the app accepted %v with its sidecar down, want nothing", peers)
	}
	if s := e.stats(); s.Get("inbound_refused") < 20 {
		t.Errorf("inbound_refused = %d, want >= 20", s.Get("inbound_refused"))
	}

	b.sidecar = testutil.StartSidecar(t, testutil.SidecarSpec{Netns: b.ns, Cgroup: b.proxy, UID: proxyUID, GID: proxyUID, Outbound: int(e.cfg.OutboundPort), Inbound: int(e.cfg.InboundPort)})
	runIn(t, testutil.ProcSpec{Netns: remote}, &r, "conns", "-addr", b.appAddr, "-n", "20", "-parallel", "2")
	if r.OK != 20 {
		t.Errorf("with the sidecar back: %+v, want 20 connections", r)
	}
	if n := len(b.sidecar.WaitLogLines("inbound", 20)); n != 20 {
		t.Errorf("the restarted sidecar logged %d inbound connections, want 20", n)
	}
}

// Inbound capture in IPv6: a remote IPv6 client reaches an IPv6 pod's app
// only through its sidecar, which reads [pod]:port with SOL_IPV6
// SO_ORIGINAL_DST and hands it over from ::6.
func TestInboundIPv6(t *testing.T) {
	e := newEnv6(t, withInbound)
	b := e.addPod6("b", podBIP, podB6, pod6Opts{inbound: true})
	if err := e.dp.AttachInbound(b.id, b.ns.Path()); err != nil {
		t.Fatal(err)
	}
	app := testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-log", "-listen", fmt.Sprintf("[::]:%d", appPort)}})
	testutil.WaitListening(t, b.ns, appPort)
	remote := e.net.AddHost("remote", netip.MustParseAddr("10.250.0.20"), netip.MustParseAddr("fd00:250::20"))
	watch := testutil.WatchConntrackFamily(t, b.ns, "ipv6")

	dst := netip.AddrPortFrom(podB6, appPort).String()
	var r peer.Roundtrip
	runIn(t, testutil.ProcSpec{Netns: remote}, &r, "roundtrip", "-addr", dst, "-bytes", fmt.Sprint(16<<20), "-halfclose=false")
	if !r.Intact || hostOf(r.ServerSawPeer) != passthrough6.String() {
		t.Errorf("%+v: want intact, the app seeing ::6", r)
	}
	if d := b.ss.WaitDialled(true, 1); len(d) != 1 || !dialledTo(d[0], podB6, appPort) {
		t.Errorf("B's inbound sidecar dialled %q, want %s\n%s", d, dst, b.ss.Output())
	}
	if n := watch.Stop(); n != 0 {
		t.Errorf("%d IPv6 conntrack entries, want 0", n)
	}
	for _, p := range accepted(app) {
		if hostOf(p) != passthrough6.String() {
			t.Errorf("the app accepted a connection from %s", p)
		}
	}
	// The IPv4 side of the same pod goes through HAProxy's listener.
	var r4 peer.Roundtrip
	runIn(t, testutil.ProcSpec{Netns: remote}, &r4, "roundtrip", "-addr", netip.AddrPortFrom(podBIP, appPort).String(), "-bytes", "65536")
	if !r4.Intact || hostOf(r4.ServerSawPeer) != "127.0.0.6" {
		t.Errorf("IPv4 to the dual-stack pod: %+v, want through HAProxy from 127.0.0.6", r4)
	}
}

// Until the pod's inbound capture is attached to the namespace an app is
// in, the app cannot bind a captured port (EPERM): no window in which a
// connection could reach it past its sidecar. Detaching removes the link.
func TestInboundBindGuard(t *testing.T) {
	e := newEnvWith(t, withInbound)
	p := e.addPod("b", podBIP, podOpts{sidecar: true})
	if err := e.dp.UpsertPod(datapath.Pod{Name: "b", CgroupID: p.id, IPv4: podBIP, Capture: true, Outbound: outboundAll, Inbound: inboundAll}); err != nil {
		t.Fatal(err)
	}
	app := testutil.Start(t, testutil.ProcSpec{Netns: p.ns, Cgroup: p.app, Args: []string{bin.sbpeer, "serve", "-listen", fmt.Sprintf("0.0.0.0:%d", appPort)}})
	if !app.WaitOutput("bind refused", 5*time.Second) {
		t.Fatalf("the app bound a captured port before inbound capture was attached:\n%s", app.Output())
	}
	if s := e.stats(); s.Get("bind_refused") == 0 {
		t.Errorf("bind_refused = 0")
	}
	if err := e.dp.AttachInbound(p.id, p.ns.Path()); err != nil {
		t.Fatal(err)
	}
	if !app.WaitOutput("listening", 5*time.Second) {
		t.Fatalf("the app did not bind once inbound capture was attached:\n%s", app.Output())
	}
	pin := filepath.Join(e.pinDir, "links", "inbound", strconv.FormatUint(p.id, 10))
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("no inbound link pinned at %s: %v", pin, err)
	}
	if err := e.dp.DetachInbound(p.id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); err == nil {
		t.Errorf("inbound link still pinned at %s after detach", pin)
	}
	if got := e.dp.InboundAttached(); len(got) != 0 {
		t.Errorf("inbound attached after detach: %v", got)
	}
}

// The agent attaches inbound capture to a pod created while it runs before
// that pod's first inbound connection (the app cannot even bind until
// then), keeps it across a SIGKILL and restart with not one connection
// missing its sidecar, removes the pod's link when the pod goes, and
// leaves no sk_lookup link after uninstall.
func TestInboundLifecycleWithAgent(t *testing.T) {
	e := newBareEnv(t)
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []any{}})
	args := []string{bin.sockbridge, "agent", "--log-level", "debug", "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile}
	agent := testutil.Start(t, testutil.ProcSpec{Args: args})
	if !agent.WaitOutput("pods synced", agentStartTimeout) {
		t.Fatalf("agent did not start:\n%s", agent.Output())
	}
	if !strings.Contains(agent.Output(), "plan: inbound: on") {
		t.Fatalf("the plan has inbound capture off on this kernel:\n%s", agent.Output())
	}

	// The pod appears while the agent runs: its sandbox (here, the
	// sidecar) first, then its app.
	b := e.addPod("b", podBIP, podOpts{sidecar: true})
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{{"name": "test/b", "cgroup": b.cgroup, "ip": podBIP.String()}}})
	agent.Cmd.Process.Signal(syscall.SIGHUP)
	app := e.startApp(b, appPort)
	appAddr := netip.AddrPortFrom(podBIP, appPort).String()
	remote := e.net.AddHost("remote", netip.MustParseAddr("10.250.0.20"))

	var r peer.Roundtrip
	runIn(t, testutil.ProcSpec{Netns: remote}, &r, "roundtrip", "-addr", appAddr, "-bytes", "65536")
	if !r.Intact || hostOf(r.ServerSawPeer) != "127.0.0.6" {
		t.Fatalf("first inbound connection: %+v; want it through the sidecar (from 127.0.0.6)", r)
	}

	// SIGKILL and restart while a client connects again and again.
	const n = 400
	client := testutil.Start(t, testutil.ProcSpec{Netns: remote, Args: []string{bin.sbpeer, "conns", "-addr", appAddr, "-n", strconv.Itoa(n), "-parallel", "1"}})
	time.Sleep(200 * time.Millisecond)
	// The whole process group, as a container's end kills it: a helper
	// the agent runs keeps its output open, and Wait on the agent alone
	// then never returns (seen once, 30 minutes, at load 8).
	(&testutil.Agent{Proc: agent}).Kill(t)
	agent = testutil.Start(t, testutil.ProcSpec{Args: args})
	if !agent.WaitOutput("pods synced", agentStartTimeout) {
		t.Fatalf("restarted agent did not start:\n%s", agent.Output())
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if done, _ := client.Exited(); done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client did not finish:\n%s", client.Output())
		}
	}
	var cr peer.Conns
	if err := decodeLastJSON(client.Output(), &cr); err != nil {
		t.Fatalf("client output: %v\n%s", err, client.Output())
	}
	if cr.OK != n {
		t.Errorf("across the agent's restart: %+v, want %d connections", cr, n)
	}
	if got := len(b.sidecar.WaitLogLines("inbound", n+1)); got != n+1 {
		t.Errorf("the sidecar logged %d inbound connections, want %d: one reached the app past it", got, n+1)
	}
	for _, p := range accepted(app) {
		if hostOf(p) != "127.0.0.6" {
			t.Errorf("the app accepted a connection from %s, past its sidecar", p)
		}
	}

	// The pod goes: its link goes.
	pin := filepath.Join(e.pinDir, "links", "inbound", strconv.FormatUint(b.id, 10))
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("no inbound link pinned for the pod: %v", err)
	}
	linkID := pinnedLinkID(t, pin)
	writeJSON(t, podFile, map[string]any{"pods": []any{}})
	agent.Cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(pin); os.IsNotExist(err) && exec.Command("bpftool", "link", "show", "id", linkID).Run() != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted pod's inbound link %s is still there:\n%s", linkID, agent.Output())
		}
	}
	stopAgent(t, agent)
	if out, err := exec.Command(bin.sockbridge, "uninstall", "--bpffs-dir", e.pinDir).CombinedOutput(); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
}

// pinnedLinkID returns the id of the link pinned at pin, as bpftool prints
// it.
func pinnedLinkID(t *testing.T, pin string) string {
	t.Helper()
	out, err := exec.Command("bpftool", "link", "show", "pinned", pin, "--json").Output()
	if err != nil {
		t.Fatalf("bpftool link show pinned %s: %v", pin, err)
	}
	var l struct {
		ID int `json:"id"`
	}
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(l.ID)
}

// decodeLastJSON decodes the last line of out that is a JSON object.
func decodeLastJSON(out string, v any) error {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			return json.Unmarshal([]byte(lines[i]), v)
		}
	}
	return fmt.Errorf("no JSON object in the output")
}

// An agent installed on a node whose pods already run: their sidecars
// listened before sockops was attached, so sockops never saw the listen;
// the agent finds those listeners and records them, and inbound capture
// works for the running pods from the start.
func TestInboundSidecarListeningBeforeAgent(t *testing.T) {
	e := newBareEnv(t)
	b := e.addPod("b", podBIP, podOpts{sidecar: true})
	app := e.startApp(b, appPort)
	appAddr := netip.AddrPortFrom(podBIP, appPort).String()
	remote := e.net.AddHost("remote", netip.MustParseAddr("10.250.0.20"))
	podFile := filepath.Join(e.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{{"name": "test/b", "cgroup": b.cgroup, "ip": podBIP.String()}}})
	agent := testutil.Start(t, testutil.ProcSpec{Args: []string{bin.sockbridge, "agent", "--log-level", "debug", "--cgroup", e.cgroup, "--bpffs-dir", e.pinDir, "--pods-file", podFile}})
	if !agent.WaitOutput("recorded the sidecar's existing inbound listeners", agentStartTimeout) {
		t.Fatalf("the agent did not record the sidecar's listener:\n%s", agent.Output())
	}
	var r peer.Roundtrip
	runIn(t, testutil.ProcSpec{Netns: remote}, &r, "roundtrip", "-addr", appAddr, "-bytes", "65536")
	if !r.Intact || hostOf(r.ServerSawPeer) != "127.0.0.6" {
		t.Errorf("%+v: want the connection through the sidecar (from 127.0.0.6)", r)
	}
	if in := b.sidecar.WaitLogLines("inbound", 1); len(in) != 1 || !strings.Contains(in[0], "orig_dst="+appAddr) {
		t.Errorf("the sidecar's inbound log %q, want one connection to %s", in, appAddr)
	}
	for _, p := range accepted(app) {
		if hostOf(p) != "127.0.0.6" {
			t.Errorf("the app accepted a connection from %s, past its sidecar", p)
		}
	}
	stopAgent(t, agent)
}

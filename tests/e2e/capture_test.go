package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

var (
	podAIP = netip.MustParseAddr("10.250.0.2")
	podBIP = netip.MustParseAddr("10.250.0.3")
	podCIP = netip.MustParseAddr("10.250.0.4")
)

// An app in a meshed pod dials the server; the bytes go through HAProxy
// (uid 1337), which learns the destination from SO_ORIGINAL_DST.
func TestOutboundCaptureThroughSidecar(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})

	var r peer.Roundtrip
	a.run(t, &r, "roundtrip", "-addr", serverAddr(), "-bytes", fmt.Sprint(16<<20))
	if !r.Intact {
		t.Fatalf("16 MiB did not round-trip intact: %+v", r)
	}
	if got := hostOf(r.ServerSawPeer); got != podAIP.String() {
		t.Errorf("server saw source %s, want the pod IP %s", r.ServerSawPeer, podAIP)
	}
	if r.Getpeername != serverAddr() {
		t.Errorf("app's getpeername() = %s, want the dialled %s", r.Getpeername, serverAddr())
	}
	if got := hostOf(r.Getsockname); got != podAIP.String() {
		t.Errorf("app's getsockname() = %s, want source %s", r.Getsockname, podAIP)
	}
	lines := a.sidecar.WaitLogLines("outbound", 1)
	if len(lines) != 1 {
		t.Fatalf("sidecar logged %d outbound connections, want 1 (a second one would be its own upstream captured):\n%s",
			len(lines), a.sidecar.Output())
	}
	want := fmt.Sprintf("client=%s:", podAIP)
	if !strings.Contains(lines[0], want) || !strings.Contains(lines[0], "orig_dst="+serverAddr()) {
		t.Errorf("sidecar log %q, want %s... orig_dst=%s", lines[0], want, serverAddr())
	}
	s := e.stats()
	if s.Get("captured") != 1 || s.Get("origdst_answered") < 1 || s.Get("peername_restored") < 1 {
		t.Errorf("counters %v: want captured=1, origdst_answered>=1, peername_restored>=1", s)
	}

	// While a connection is open, its app socket and the sidecar's
	// accepted socket carry the original destination; the handshake
	// tuple has already moved into the sidecar's socket.
	h := testutil.Start(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{bin.sbpeer, "hold", "-addr", serverAddr(), "-for", "30s"}})
	if !h.WaitOutput("connected", 5*time.Second) {
		t.Fatalf("hold: %s", h.Output())
	}
	flows, err := e.dp.Flows()
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]int{}
	for _, f := range flows {
		if f.OrigDst.String() != serverAddr() {
			t.Errorf("flow %+v: original destination, want %s", f, serverAddr())
		}
		roles[f.Role]++
	}
	if roles["app"] != 1 || roles["sidecar"] != 1 || len(flows) != 2 {
		t.Errorf("live flows %+v, want one app and one sidecar socket", flows)
	}
	if n, err := e.dp.InFlightTuples(); err != nil || n != 0 {
		t.Errorf("in-flight tuples = %d (%v) on an established connection, want 0", n, err)
	}
	h.Stop()
}

// Processes outside meshed pods, pods absent from the map, pods with
// capture off and an app's loopback traffic are all left alone.
func TestUncapturedTrafficUntouched(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	b := e.addPod("b", podBIP, podOpts{inMap: false, sidecar: true})
	c := e.addPod("c", podCIP, podOpts{inMap: true, capture: false, sidecar: true})
	outside := testutil.Cgroup(t, e.cgroup, "system.slice")

	direct := func(name string, spec testutil.ProcSpec, ip netip.Addr) {
		t.Run(name, func(t *testing.T) {
			var r peer.Roundtrip
			runIn(t, spec, &r, "roundtrip", "-addr", serverAddr(), "-bytes", "65536")
			if !r.Intact || hostOf(r.ServerSawPeer) != ip.String() || r.Getpeername != serverAddr() {
				t.Errorf("want a direct, intact connection from %s: %+v", ip, r)
			}
		})
	}
	direct("process outside pods in a meshed pod's netns", testutil.ProcSpec{Netns: a.ns, Cgroup: outside}, podAIP)
	direct("pod not in the map", testutil.ProcSpec{Netns: b.ns, Cgroup: b.app}, podBIP)
	direct("pod with capture off", testutil.ProcSpec{Netns: c.ns, Cgroup: c.app}, podCIP)

	t.Run("app loopback", func(t *testing.T) {
		// The app dials its own sidecar's inbound port on 127.0.0.1:
		// HAProxy rejects it (no original destination), which proves
		// it arrived as dialled and was not rewritten to 15001.
		var r peer.Conns
		runIn(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.app}, &r, "conns", "-addr", "127.0.0.1:15006", "-n", "1", "-parallel", "1")
		if r.OK != 0 {
			t.Errorf("loopback connection was served: %+v", r)
		}
	})

	for _, p := range []*pod{a, b, c} {
		if n := len(p.sidecar.LogLines("outbound")); n != 0 {
			t.Errorf("pod %s: sidecar logged %d outbound connections, want 0:\n%s", p.name, n, p.sidecar.Output())
		}
	}
	if s := e.stats(); s.Get("captured") != 0 {
		t.Errorf("captured = %d, want 0", s.Get("captured"))
	}
}

// getpeername() returns what the app dialled and every other getsockopt,
// including calls with a 64 KiB buffer, answers exactly as without the
// datapath (compared with a process outside the attached cgroup).
func TestSockoptsUnchanged(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})

	var captured, plain peer.Sockopts
	a.run(t, &captured, "sockopts", "-addr", serverAddr())
	runIn(t, testutil.ProcSpec{Netns: a.ns}, &plain, "sockopts", "-addr", serverAddr())

	if captured.Getpeername != serverAddr() || plain.Getpeername != serverAddr() {
		t.Errorf("getpeername: captured %s, plain %s, want %s", captured.Getpeername, plain.Getpeername, serverAddr())
	}
	if len(a.sidecar.WaitLogLines("outbound", 1)) != 1 {
		t.Fatalf("the app's connection was not captured:\n%s", a.sidecar.Output())
	}
	if len(plain.Opts) == 0 {
		t.Fatal("no getsockopt results")
	}
	for name, want := range plain.Opts {
		got := captured.Opts[name]
		if got != want {
			t.Errorf("getsockopt %s: captured socket %+v, without the datapath %+v", name, got, want)
		}
	}
}

// A process that connected before its pod was in the map is captured as
// soon as the pod is added, and released as soon as it is removed: no
// state needs a restart to clear (Merbridge #323 cached "not meshed").
func TestCaptureFollowsPodMapWithoutRestart(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	// One long-lived process makes all its connections, so any cache
	// keyed by its cgroup is exercised.
	spec := testutil.ProcSpec{Netns: a.ns, Cgroup: a.app}
	step := func(want int) {
		t.Helper()
		var r peer.Conns
		runIn(t, spec, &r, "conns", "-addr", serverAddr(), "-n", "20", "-parallel", "1")
		if r.OK != 20 {
			t.Fatalf("connections failed: %+v", r)
		}
		if got := len(a.sidecar.WaitLogLines("outbound", want)); got != want {
			t.Fatalf("sidecar has seen %d connections, want %d", got, want)
		}
	}
	step(0)
	if err := e.dp.UpsertPod(datapath.Pod{CgroupID: a.id, IPv4: podAIP, Capture: true, Outbound: outboundAll, Inbound: inboundAll}); err != nil {
		t.Fatal(err)
	}
	step(20)
	if err := e.dp.DeletePod(a.id); err != nil {
		t.Fatal(err)
	}
	step(20)
	if err := e.dp.UpsertPod(datapath.Pod{CgroupID: a.id, IPv4: podAIP, Capture: true, Outbound: outboundAll, Inbound: inboundAll}); err != nil {
		t.Fatal(err)
	}
	step(40)

	// About 120 connects (the app's and the sidecar's upstream ones) from
	// two cgroups across three pod additions: the pod lookup walked the
	// cgroup ancestors once per cgroup and generation, not per connect.
	if s := e.stats(); s.Get("cgroup_walks") == 0 || s.Get("cgroup_walks") > 8 {
		t.Errorf("cgroup_walks = %d after ~120 connects, want a handful (cache)", s.Get("cgroup_walks"))
	}
}

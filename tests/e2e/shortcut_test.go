package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// Pod A's app dials pod B's IP:port. A's sidecar forwards it (uid 1337); its
// connect to B is short-cut to B's inbound port 15006, where B's sidecar
// reads B's IP:port from SO_ORIGINAL_DST and hands the connection to B's app
// from 127.0.0.6, which the datapath leaves alone.
func TestSameNodeShortcutAndPassthrough(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	b := e.addPod("b", podBIP, podOpts{inMap: true, capture: true, sidecar: true})
	testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:9090"}})
	testutil.WaitListening(t, b.ns, 9090)
	bAddr := netip.AddrPortFrom(podBIP, 9090).String()

	var r peer.Roundtrip
	a.run(t, &r, "roundtrip", "-addr", bAddr, "-bytes", fmt.Sprint(1<<20))
	if !r.Intact {
		t.Fatalf("1 MiB did not round-trip intact: %+v", r)
	}
	if r.Getpeername != bAddr {
		t.Errorf("app's getpeername() = %s, want %s", r.Getpeername, bAddr)
	}
	// The inbound passthrough reached B's app directly, from 127.0.0.6.
	if hostOf(r.ServerSawPeer) != "127.0.0.6" {
		t.Errorf("B's app saw %s, want a connection from 127.0.0.6 (Envoy-style inbound passthrough)", r.ServerSawPeer)
	}
	out := a.sidecar.WaitLogLines("outbound", 1)
	if len(out) != 1 || !strings.Contains(out[0], "orig_dst="+bAddr) {
		t.Errorf("A's sidecar outbound log %q, want one connection with orig_dst=%s", out, bAddr)
	}
	in := b.sidecar.WaitLogLines("inbound", 1)
	if len(in) != 1 || !strings.Contains(in[0], "orig_dst="+bAddr) || !strings.Contains(in[0], "client="+podAIP.String()+":") {
		t.Errorf("B's sidecar inbound log %q, want one connection from %s with orig_dst=%s\n%s", in, podAIP, bAddr, b.sidecar.Output())
	}
	if n := len(b.sidecar.LogLines("outbound")); n != 0 {
		t.Errorf("B's sidecar saw %d outbound connections; the passthrough must not be captured", n)
	}
	s := e.stats()
	if s.Get("captured") != 1 || s.Get("shortcut") != 1 {
		t.Errorf("counters %v: want captured=1 shortcut=1", s)
	}

	// A port never captured inbound (15021, Istio's health port) is not
	// short-cut: B's sidecar would reject it, B's app answers it.
	testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:15021"}})
	testutil.WaitListening(t, b.ns, 15021)
	healthAddr := netip.AddrPortFrom(podBIP, 15021).String()
	a.run(t, &r, "roundtrip", "-addr", healthAddr, "-bytes", "1024")
	if !r.Intact || hostOf(r.ServerSawPeer) != podAIP.String() {
		t.Errorf("connection to B's port 15021: %+v; want it straight from A's sidecar (%s)", r, podAIP)
	}
	if s := e.stats(); s.Get("shortcut") != 1 {
		t.Errorf("shortcut = %d after a connection to port 15021, want still 1", s.Get("shortcut"))
	}
}

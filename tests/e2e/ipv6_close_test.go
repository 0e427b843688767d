package e2e

import (
	"bufio"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// A captured native IPv6 connection whose app closes first closes cleanly
// at both ends. The app's orphaned socket answers the sidecar's later FIN
// from TIME-WAIT through the kernel's control socket, which routes a reply
// to ::1 strictly by the interface the FIN came in on; from the pod's
// address to ::1 (what connect6 made before) that interface is the one
// owning the pod address, not lo, so the answer had no route
// (Ip6OutNoRoutes), the sidecar's socket stayed in LAST-ACK and a
// reconnect from the same port (tcp_tw_reuse) timed out
// (tests/bench/testdata/ipv6-lastack.sh shows the kernel's side without
// sockbridge). Now the pair is the pod address at both ends, the sidecar
// listening on [::]:15001 as Envoy and Kuma do; with a loopback-only
// listener (Linkerd's [::1]:4140, OutboundLoopbackOnly) it is ::1 at both
// ends.
//
// The sidecar is HAProxy, which passes the app's close on to the upstream
// and closes the app's end when the upstream closes; the upstream closes
// 300 ms after its client, later than the sidecar's kernel acknowledges the
// app's FIN, so the sidecar's FIN always meets the app's TIME-WAIT socket
// (shadowsocks closes both ways at once, and its FIN mostly meets the app's
// socket before that). Each case has an app that leaves its socket unbound
// and one that binds a fixed port: after each close no LAST-ACK socket is
// left on the sidecar's port, Ip6OutNoRoutes has not grown, and the bound
// app reconnects from the same port at once.
func TestIPv6AppClosesFirst(t *testing.T) {
	for _, tc := range []struct {
		name         string
		loopbackOnly bool
		sidecarAt    netip.Addr // the sidecar's IPv6 outbound listener
		wantPair     netip.Addr // both ends of an unbound app's connection to the sidecar
	}{
		{"wildcard listener (Envoy, Kuma)", false, netip.IPv6Unspecified(), podA6},
		{"loopback-only listener (Linkerd)", true, netip.IPv6Loopback(), netip.IPv6Loopback()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv6(t, func(c *datapath.Config) { c.OutboundLoopbackOnly = tc.loopbackOnly })
			target := netip.AddrPortFrom(serverIP6, 8090)
			testutil.Start(t, testutil.ProcSpec{Netns: e.server, Args: []string{bin.sbpeer, "serve", "-listen", "[::]:8090", "-close-delay", "300ms"}})
			testutil.WaitListening(t, e.server, 8090)
			p := e.addPod6("closer", podAIP, podA6, pod6Opts{upstream6: target, outboundAt: tc.sidecarAt})
			// A same-tuple reconnect reuses a TIME-WAIT socket of a
			// non-loopback pair only under tcp_tw_reuse=1 (the default,
			// 2, is for loopback pairs).
			p.ns.Sysctl(t, "net.ipv4.tcp_tw_reuse", "1")
			port := e.cfg.OutboundPort
			logged := 0
			check := func(t *testing.T, r *peer.Roundtrip, noRoutes uint64) {
				t.Helper()
				if !r.Intact || r.Getpeername != target.String() || hostOf(r.ServerSawPeer) != podA6.String() {
					t.Errorf("%+v: want intact, getpeername %s, the server seeing %s", r, target, podA6)
				}
				src := netip.MustParseAddrPort(r.Getsockname)
				// HAProxy prints IPv6 addresses without brackets.
				want := fmt.Sprintf("outbound6 client=%s:%d local=%s:%d", src.Addr(), src.Port(), src.Addr(), port)
				logged++
				if lines := p.sidecar.WaitLogLines("outbound6", logged); len(lines) != logged || lines[logged-1] != want {
					t.Errorf("HAProxy logged %q, want last %q: the app's connection to the sidecar has the same address at both ends", lines, want)
				}
				assertClosed(t, p, port, noRoutes)
			}

			t.Run("unbound app", func(t *testing.T) {
				noRoutes := ip6OutNoRoutes(t, p.ns)
				r, err := closeFirst(t, p, target, "", "")
				if err != nil {
					t.Fatalf("stream: %v", err)
				}
				if hostOf(r.Getsockname) != tc.wantPair.String() {
					t.Errorf("the app's source is %s, want %s", r.Getsockname, tc.wantPair)
				}
				check(t, r, noRoutes)
			})
			t.Run("app bound its own port, then reconnects from it", func(t *testing.T) {
				bind := netip.AddrPortFrom(tc.wantPair, 40000).String()
				noRoutes := ip6OutNoRoutes(t, p.ns)
				r, err := closeFirst(t, p, target, bind, "")
				if err != nil {
					t.Fatalf("stream from %s: %v", bind, err)
				}
				if r.Getsockname != bind {
					t.Errorf("the app's source is %s, want %s", r.Getsockname, bind)
				}
				check(t, r, noRoutes)
				// tcp_tw_reuse takes a TIME-WAIT socket a second after
				// its last timestamp.
				time.Sleep(1100 * time.Millisecond)
				before := e.stats().Get("captured_v6")
				if r, err = closeFirst(t, p, target, bind, "5s"); err != nil {
					t.Fatalf("reconnect from %s, its TIME-WAIT socket reused: %v", bind, err)
				}
				if got := e.stats().Get("captured_v6"); got != before+1 {
					t.Errorf("captured_v6 went from %d to %d on the reconnect, want one more", before, got)
				}
				check(t, r, noRoutes)
			})
			if s := e.stats(); s.Get("bind_failed") != 0 {
				t.Errorf("bind_failed = %d", s.Get("bind_failed"))
			}
		})
	}
}

// closeFirst runs one sbpeer stream from the pod's app through its sidecar
// to target: 64 KiB echoed, then the app closes its socket and exits
// before the sidecar closes its end. bind is the app's own bind, "" for
// none; timeout bounds the stream, "" for sbpeer's default. An error is
// the stream's failure, such as a connect that timed out.
func closeFirst(t *testing.T, p *pod6, target netip.AddrPort, bind, timeout string) (*peer.Roundtrip, error) {
	t.Helper()
	args := []string{bin.sbpeer, "stream", "-addr", target.String(), "-bytes", strconv.Itoa(64 << 10), "-halfclose=false"}
	if bind != "" {
		args = append(args, "-bind", bind)
	}
	if timeout != "" {
		args = append(args, "-timeout", timeout)
	}
	out, err := testutil.Output(t, time.Minute, testutil.ProcSpec{Netns: p.ns, Cgroup: p.app, Args: args})
	if err != nil {
		return nil, err
	}
	var r peer.Roundtrip
	if err := decodeJSON(string(out), &r); err != nil {
		return nil, fmt.Errorf("decode %q: %w", out, err)
	}
	return &r, nil
}

// assertClosed waits up to 3 s for the sidecar's end of every connection on
// its outbound port to close (no LAST-ACK or CLOSE-WAIT socket left in the
// pod), then checks that no packet lacked a route since noRoutes was read.
// A sidecar socket whose last ACK never comes retransmits its FIN for
// minutes, so 3 s tells a lost ACK from a slow close.
func assertClosed(t *testing.T, p *pod6, port uint16, noRoutes uint64) {
	t.Helper()
	filter := fmt.Sprintf("( sport = :%d or dport = :%d )", port, port)
	var left string
	for deadline := time.Now().Add(3 * time.Second); ; {
		left = strings.TrimSpace(p.ns.Exec(t, "ss", "-Htan", "state", "last-ack", "state", "close-wait", filter))
		if left == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if left != "" {
		t.Errorf("the sidecar's end did not close within 3 s (its last ACK was lost):\n%s", left)
	}
	if got := ip6OutNoRoutes(t, p.ns); got != noRoutes {
		t.Errorf("Ip6OutNoRoutes went from %d to %d in the pod: a reply had no route", noRoutes, got)
	}
}

// ip6OutNoRoutes reads the namespace's Ip6OutNoRoutes counter: IPv6
// packets it could not send for want of a route.
func ip6OutNoRoutes(t *testing.T, ns *testutil.Netns) uint64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(ns.Exec(t, "cat", "/proc/net/snmp6")))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Ip6OutNoRoutes" {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("Ip6OutNoRoutes %q: %v", f[1], err)
			}
			return n
		}
	}
	t.Fatal("no Ip6OutNoRoutes in /proc/net/snmp6")
	return 0
}

package testutil

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// SSSidecar is shadowsocks-libev from Debian standing in for Envoy where
// HAProxy cannot. Its ss-redir reads the original destination of every
// accepted connection with getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) and,
// when that fails, getsockopt(SOL_IP, SO_ORIGINAL_DST) (strace shows both
// calls), so it serves IPv6 and IPv4 alike, as Envoy does. HAProxy 2.6
// reads only getsockname() on an IPv6 listener, with ip6tables REDIRECT as
// with sockbridge, and would dial itself.
//
// The sidecar is two pairs of processes in the pod's cgroup and netns, all
// as the proxy uid: ss-redir on the outbound (and, if asked, inbound) port
// forwards to an ss-server on loopback, which dials the original
// destination. The inbound pair's ss-server leaves from the passthrough
// address (::6 or 127.0.0.6), as Envoy's inbound passthrough does.
type SSSidecar struct {
	// OutRedir and OutServer carry outbound connections; InRedir and
	// InServer inbound ones (nil without an inbound port).
	OutRedir, OutServer, InRedir, InServer *Proc
}

// SSSidecarSpec places a shadowsocks sidecar.
type SSSidecarSpec struct {
	Netns    *Netns
	Cgroup   string
	UID, GID int
	// Outbound is the port ss-redir accepts captured outbound connections
	// on, at OutboundAddr: by default the wildcard [::], as Envoy's
	// virtualOutbound and Kuma's outbound:passthrough:ipv6 listen, which
	// takes both addresses sockbridge sends native IPv6 connections to (the
	// pod's IPv6 address, or ::1 in a pod without one); ::1 stands for a
	// loopback-only listener such as Linkerd's. The wildcard is dual-stack
	// and shares the port with HAProxy's 127.0.0.1 listener through
	// SO_REUSEPORT (both set it, both run as the proxy uid): IPv4
	// connections to 127.0.0.1 still reach HAProxy, the more specific
	// listener.
	Outbound     int
	OutboundAddr netip.Addr
	// Inbound, if not 0, is the inbound port, at InboundAddr (the pod's
	// own IPv6 address: the sidecar's IPv4 inbound listener may be
	// HAProxy's 0.0.0.0:15006). Its upstream connections leave from
	// Passthrough (default ::6, which must be on the pod's loopback).
	Inbound      int
	InboundAddr  netip.Addr
	Passthrough  netip.Addr
	ServerPort   int // ss-server's outbound port on [::1] (default 8388; inbound uses the next one)
	cipher, pass string
}

// StartSSSidecar starts the shadowsocks sidecar and waits until its ports
// listen.
func StartSSSidecar(t TB, s SSSidecarSpec) *SSSidecar {
	t.Helper()
	for _, b := range []string{"ss-redir", "ss-server"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s (Debian's shadowsocks-libev) not installed: %v", b, err)
		}
	}
	if !s.OutboundAddr.IsValid() {
		s.OutboundAddr = netip.IPv6Unspecified()
	}
	if !s.Passthrough.IsValid() {
		s.Passthrough = netip.MustParseAddr("::6")
	}
	if s.ServerPort == 0 {
		s.ServerPort = 8388
	}
	s.cipher, s.pass = "chacha20-ietf-poly1305", "sockbridge-test"
	start := func(args ...string) *Proc {
		return Start(t, ProcSpec{Netns: s.Netns, Cgroup: s.Cgroup, UID: Int(s.UID), GID: Int(s.GID), Args: args})
	}
	common := []string{"-k", s.pass, "-m", s.cipher, "-v", "-t", "120"}
	sc := &SSSidecar{}
	// ss-server listens on [::1] (getaddrinfo with AI_ADDRCONFIG refuses
	// 127.0.0.1 in a pod without an IPv4 address); the address it dials is
	// the one ss-redir sends, of either family.
	sc.OutServer = start(append([]string{"ss-server", "-s", "::1", "-p", fmt.Sprint(s.ServerPort)}, common...)...)
	sc.OutRedir = start(append([]string{"ss-redir", "-s", "::1", "-p", fmt.Sprint(s.ServerPort),
		"-b", s.OutboundAddr.String(), "-l", fmt.Sprint(s.Outbound), "--reuse-port"}, common...)...)
	wait := []int{s.ServerPort, s.Outbound}
	if s.Inbound != 0 {
		sc.InServer = start(append([]string{"ss-server", "-s", "::1", "-p", fmt.Sprint(s.ServerPort + 1),
			"-b", s.Passthrough.String()}, common...)...)
		sc.InRedir = start(append([]string{"ss-redir", "-s", "::1", "-p", fmt.Sprint(s.ServerPort + 1),
			"-b", s.InboundAddr.String(), "-l", fmt.Sprint(s.Inbound)}, common...)...)
		wait = append(wait, s.ServerPort+1, s.Inbound)
	}
	for _, port := range wait {
		if !waitListening(s.Netns, port, 5*time.Second) {
			t.Fatalf("shadowsocks sidecar in %s not listening on %d:\n%s", s.Netns.Name, port, sc.Output())
		}
	}
	return sc
}

// Output is everything the sidecar's processes printed.
func (s *SSSidecar) Output() string {
	var b strings.Builder
	for _, p := range []struct {
		name string
		p    *Proc
	}{{"outbound ss-redir", s.OutRedir}, {"outbound ss-server", s.OutServer}, {"inbound ss-redir", s.InRedir}, {"inbound ss-server", s.InServer}} {
		if p.p != nil {
			fmt.Fprintf(&b, "--- %s:\n%s", p.name, p.p.Output())
		}
	}
	return b.String()
}

// Dialled returns the destinations the outbound (inbound == false) or
// inbound ss-server has dialled so far, as "addr:port" strings from its
// "connect to" log lines: the original destinations ss-redir read.
func (s *SSSidecar) Dialled(inbound bool) []string {
	p := s.OutServer
	if inbound {
		p = s.InServer
	}
	if p == nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(p.Output(), "\n") {
		if i := strings.Index(l, "connect to "); i >= 0 {
			out = append(out, strings.TrimSpace(l[i+len("connect to "):]))
		}
	}
	return out
}

// WaitDialled waits up to 5 s until n destinations were dialled and
// returns them (fewer on timeout, for the caller's check to fail with).
func (s *SSSidecar) WaitDialled(inbound bool, n int) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := s.Dialled(inbound)
		if len(d) >= n || time.Now().After(deadline) {
			return d
		}
		time.Sleep(5 * time.Millisecond)
	}
}

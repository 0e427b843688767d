package testutil

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Sidecar is HAProxy from the distribution standing in for Envoy: it runs
// as the proxy uid inside the pod's cgroup and netns, accepts captured
// outbound connections on 127.0.0.1:15001 and inbound ones on *:15006, and
// forwards each to the address getsockopt(SOL_IP, SO_ORIGINAL_DST) returns
// (`server orig 0.0.0.0:0`). Inbound connections leave from 127.0.0.6, as
// Envoy's inbound passthrough does.
type Sidecar struct {
	*Proc
	Config string
}

// SidecarSpec places a sidecar.
type SidecarSpec struct {
	Netns    *Netns
	Cgroup   string
	UID, GID int
	// Outbound and Inbound are the listening ports (15001, 15006).
	Outbound, Inbound int
	// MaxConn bounds HAProxy's connections; it must fit `ulimit -n`.
	MaxConn int
	// TFO enables TCP Fast Open on both listeners and on the upstream
	// connections (HAProxy's `tfo` bind and server options). Whether the
	// listeners take data in the SYN is then up to the namespace's
	// net.ipv4.tcp_fastopen (server bit 0x2), which a test may flip
	// between connections.
	TFO bool
	// Upstream6, when set, adds an IPv6 outbound listener on
	// [Outbound6]:Outbound (IPV6_V6ONLY, beside the IPv4 one) that
	// forwards every connection to Upstream6 and logs
	// "outbound6 client=<app> local=<where it arrived>". HAProxy 2.6
	// reads no original destination on an IPv6 listener (SSSidecar), so
	// the listener serves tests whose app dials that one address, such as
	// the close-path test: HAProxy passes the app's close on to the
	// upstream and closes the app's end when the upstream closes, later.
	Upstream6 netip.AddrPort
	Outbound6 netip.Addr
}

// sidecarConfig renders the HAProxy configuration. No splice options: data
// spliced by sk_msg is invisible to splice(2). The guard rules reject a
// connection whose SO_ORIGINAL_DST failed, because HAProxy then falls back
// to its own listening address and would dial itself.
func sidecarConfig(s SidecarSpec) string {
	if s.MaxConn == 0 {
		s.MaxConn = 2000
	}
	tfo := ""
	if s.TFO {
		tfo = " tfo"
	}
	return fmt.Sprintf(`global
    nbthread 1
    maxconn %[1]d
    log stdout format raw local0 info

# HAProxy derives a "default" resolvers section from /etc/resolv.conf; keep
# it on loopback.
resolvers default
    nameserver loopback 127.0.0.1:53

defaults
    mode tcp
    log global
    option logasap
    timeout connect 5s
    timeout client 120s
    timeout server 120s

listen outbound
    bind 127.0.0.1:%[2]d%[4]s
    tcp-request connection reject if { dst 127.0.0.1 } { dst_port %[2]d }
    log-format "outbound client=%%ci:%%cp orig_dst=%%fi:%%fp"
    server orig 0.0.0.0:0%[4]s

listen inbound
    bind 0.0.0.0:%[3]d%[4]s
    tcp-request connection reject if { dst_port %[3]d }
    log-format "inbound client=%%ci:%%cp orig_dst=%%fi:%%fp"
    server orig 0.0.0.0:0 source 127.0.0.6%[4]s
`, s.MaxConn, s.Outbound, s.Inbound, tfo) + outbound6Config(s)
}

// outbound6Config is the IPv6 outbound listener of SidecarSpec.Upstream6,
// or nothing. HAProxy takes the port after an IPv6 address's last colon.
func outbound6Config(s SidecarSpec) string {
	if !s.Upstream6.IsValid() {
		return ""
	}
	return fmt.Sprintf(`
listen outbound6
    bind %s:%d v6only
    log-format "outbound6 client=%%ci:%%cp local=%%fi:%%fp"
    server up %s:%d
`, s.Outbound6, s.Outbound, s.Upstream6.Addr(), s.Upstream6.Port())
}

// StartSidecar starts HAProxy and waits until both ports listen.
func StartSidecar(t TB, s SidecarSpec) *Sidecar {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatalf("haproxy not installed: %v", err)
	}
	dir := ReadableTempDir(t, "sockbridge-sidecar-")
	cfg := filepath.Join(dir, fmt.Sprintf("haproxy-%s.cfg", s.Netns.Name))
	text := sidecarConfig(s)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatalf("write haproxy config: %v", err)
	}
	p := Start(t, ProcSpec{
		Netns: s.Netns, Cgroup: s.Cgroup, UID: Int(s.UID), GID: Int(s.GID),
		Args: []string{bin, "-db", "-f", cfg},
	})
	for _, port := range []int{s.Outbound, s.Inbound} {
		if !waitListening(s.Netns, port, 5*time.Second) {
			t.Fatalf("haproxy in %s not listening on %d:\n%s", s.Netns.Name, port, p.Output())
		}
	}
	return &Sidecar{Proc: p, Config: text}
}

// waitListening polls `ss` in ns until a TCP socket listens on port.
func waitListening(ns *Netns, port int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	want := fmt.Sprintf(":%d", port)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("nsenter", "--net="+ns.Path(), "--", "ss", "-Hltn").Output()
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) >= 4 && strings.HasSuffix(f[3], want) {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// WaitListening fails t unless a TCP socket listens on port in ns.
func WaitListening(t TB, ns *Netns, port int) {
	t.Helper()
	if !waitListening(ns, port, 5*time.Second) {
		t.Fatalf("nothing listens on port %d in %s", port, ns.Name)
	}
}

// LogLines returns the sidecar's log lines that start with prefix
// ("outbound" or "inbound") that have reached the test so far. HAProxy
// writes a line when it connects upstream (option logasap), and the line
// then crosses a pipe to the test's reader goroutine: a client's round trip
// can finish before the line arrives. After traffic, use WaitLogLines.
func (s *Sidecar) LogLines(prefix string) []string {
	var lines []string
	for _, l := range strings.Split(s.Output(), "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// WaitLogLines waits up to 5 s until the sidecar has logged at least n
// lines starting with prefix, and returns all of them (fewer than n on
// timeout: the caller's count check then fails with them).
func (s *Sidecar) WaitLogLines(prefix string, n int) []string {
	return s.WaitLogLinesFor(prefix, n, 5*time.Second)
}

// WaitLogLinesFor is WaitLogLines with another timeout.
func (s *Sidecar) WaitLogLinesFor(prefix string, n int, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		lines := s.LogLines(prefix)
		if len(lines) >= n || time.Now().After(deadline) {
			return lines
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package testutil

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Dnsmasq is dnsmasq from Debian (dnsmasq-base) as a DNS server in a test
// namespace: the sidecar's DNS proxy stand-in (on 127.0.0.1 and ::1, port
// 15053, as the proxy uid) or a "cluster DNS" on port 53 of a host of the
// test network. It reads no file of this machine: no /etc/resolv.conf
// (--no-resolv, its upstreams are given), no /etc/hosts (--no-hosts), no
// /etc/dnsmasq.conf (--conf-file=/dev/null); it binds only the addresses
// given (--listen-address with --bind-interfaces), which must be loopback
// or test-network addresses inside namespaces the test created, and it
// never forks (--keep-in-foreground), so the test kills it by PID.
type Dnsmasq struct {
	*Proc
	Spec DnsmasqSpec
}

// DnsmasqSpec places a dnsmasq.
type DnsmasqSpec struct {
	Netns  *Netns // required: never the machine's own namespace
	Cgroup string
	// UID and GID to run as. A dnsmasq started as root changes to the
	// user "nobody" unless --user names another; one started as another
	// uid stays that uid. nil: root, kept as root (--user=root).
	UID, GID *int
	Listen   []netip.Addr
	Port     int
	// Upstreams are the servers it forwards names it does not know to
	// (--server); none means it answers only its own names.
	Upstreams []netip.AddrPort
	// Records are --host-record values: "name,addr[,addr...]"; a name
	// repeated in several records gets all their addresses.
	Records []string
	// Local are domains it answers alone (--local): a name there that it
	// does not know is NXDOMAIN, never forwarded.
	Local []string
	// Quiet leaves out --log-queries (a benchmark's millions of queries);
	// Queries then returns nothing.
	Quiet bool
}

// StartDnsmasq starts dnsmasq, logging every query unless Quiet (Queries
// reads them), and waits until it listens.
func StartDnsmasq(t TB, s DnsmasqSpec) *Dnsmasq {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Fatalf("dnsmasq (Debian's dnsmasq-base) not installed: %v", err)
	}
	if s.Netns == nil {
		t.Fatalf("dnsmasq must run in a test namespace")
	}
	if len(s.Listen) == 0 || s.Port == 0 {
		t.Fatalf("dnsmasq needs listen addresses and a port")
	}
	dir := ReadableTempDir(t, "sockbridge-dnsmasq-")
	if s.UID != nil {
		// The pid file is written by the uid it runs as.
		if err := os.Chown(dir, *s.UID, gidOr(s.GID, *s.UID)); err != nil {
			t.Fatalf("chown %s: %v", dir, err)
		}
	}
	args := []string{bin,
		"--keep-in-foreground", "--log-facility=-",
		"--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
		"--bind-interfaces", "--port=" + strconv.Itoa(s.Port),
		"--pid-file=" + filepath.Join(dir, "dnsmasq.pid"),
		// No DHCP, no cache: every forwarded query reaches its upstream,
		// so the upstream's log shows each one.
		"--cache-size=0",
	}
	if s.UID == nil {
		args = append(args, "--user=root", "--group=root")
	}
	if !s.Quiet {
		args = append(args, "--log-queries")
	}
	for _, a := range s.Listen {
		args = append(args, "--listen-address="+a.String())
	}
	for _, u := range s.Upstreams {
		args = append(args, fmt.Sprintf("--server=%s#%d", u.Addr(), u.Port()))
	}
	for _, r := range s.Records {
		args = append(args, "--host-record="+r)
	}
	for _, d := range s.Local {
		args = append(args, "--local=/"+d+"/")
	}
	p := Start(t, ProcSpec{Netns: s.Netns, Cgroup: s.Cgroup, UID: s.UID, GID: s.GID, Args: args})
	d := &Dnsmasq{Proc: p, Spec: s}
	for _, a := range s.Listen {
		if !waitListeningOn(s.Netns, netip.AddrPortFrom(a, uint16(s.Port)), 5*time.Second) {
			t.Fatalf("dnsmasq in %s not listening on %s:\n%s", s.Netns.Name, netip.AddrPortFrom(a, uint16(s.Port)), p.Output())
		}
	}
	if s.UID != nil {
		if uid := procUID(p.Cmd.Process.Pid); uid != strconv.Itoa(*s.UID) {
			t.Fatalf("dnsmasq runs as uid %q, want %d:\n%s", uid, *s.UID, p.Output())
		}
	}
	return d
}

// waitListeningOn waits until a TCP socket listens on exactly ap in ns.
func waitListeningOn(ns *Netns, ap netip.AddrPort, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		out, _ := exec.Command("nsenter", "--net="+ns.Path(), "--", "ss", "-Hltn").Output()
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) >= 4 && f[3] == ap.String() {
				return true
			}
		}
	}
	return false
}

func gidOr(gid *int, def int) int {
	if gid != nil {
		return *gid
	}
	return def
}

// procUID is the real uid of a process, "" when it is gone.
func procUID(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			return f[1]
		}
	}
	return ""
}

// Query is one query dnsmasq logged.
type Query struct {
	Type, Name string
	From       netip.Addr
}

// Queries returns the queries logged so far ("query[A] name from addr").
func (d *Dnsmasq) Queries() []Query {
	var out []Query
	for _, l := range strings.Split(d.Output(), "\n") {
		i := strings.Index(l, "query[")
		if i < 0 {
			continue
		}
		f := strings.Fields(l[i:])
		if len(f) != 4 || f[2] != "from" {
			continue
		}
		from, err := netip.ParseAddr(f[3])
		if err != nil {
			continue
		}
		out = append(out, Query{Type: strings.TrimSuffix(strings.TrimPrefix(f[0], "query["), "]"), Name: f[1], From: from})
	}
	return out
}

// QueriesFor returns the logged queries for name.
func (d *Dnsmasq) QueriesFor(name string) []Query {
	var out []Query
	for _, q := range d.Queries() {
		if q.Name == name {
			out = append(out, q)
		}
	}
	return out
}

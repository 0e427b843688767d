package e2e

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

var (
	serverIP6 = netip.MustParseAddr("fd00:250::1")
	podA6     = netip.MustParseAddr("fd00:250::2")
	podB6     = netip.MustParseAddr("fd00:250::3")
	podC6     = netip.MustParseAddr("fd00:250::4")
	// Envoy's IPv6 inbound passthrough source; istio-iptables' setup puts
	// it on each pod's loopback.
	passthrough6 = netip.MustParseAddr("::6")
)

// newEnv6 is newEnv with a dual-stack server host.
func newEnv6(t *testing.T, edits ...func(*datapath.Config)) *env {
	t.Helper()
	testutil.RequirePrivileged(t, "ss-redir", "ss-server", "ip6tables", "conntrack")
	e := newBareEnvFamilies(t, true)
	for _, edit := range edits {
		edit(&e.cfg)
	}
	dp, err := datapath.Load(e.cfg)
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	e.dp = dp
	return e
}

// pod6 is a test pod of either or both families with its sidecars: HAProxy
// for the IPv4 listeners (127.0.0.1:15001, 0.0.0.0:15006) when the pod has
// an IPv4 address, and shadowsocks on [::]:15001, as Envoy listens (and,
// with inbound, on [pod IPv6]:15006) for IPv6, since HAProxy reads no
// original destination on an IPv6 listener (testutil.SSSidecar).
type pod6 struct {
	*pod
	v4, v6 netip.Addr
	ss     *testutil.SSSidecar
}

type pod6Opts struct {
	inbound bool // an IPv6 inbound listener on the pod's IPv6:15006
	dualSS  bool // one dual-stack shadowsocks listener [::]:15001 for every family, no HAProxy
	// upstream6, when set, makes HAProxy the IPv6 outbound sidecar too,
	// forwarding every IPv6 connection to this one address
	// (testutil.SidecarSpec.Upstream6); no shadowsocks then. Needs v4.
	upstream6 netip.AddrPort
	// outboundAt is the IPv6 outbound listener's address when not the
	// wildcard [::] (::1 for a loopback-only sidecar such as Linkerd's).
	outboundAt netip.Addr
}

func (e *env) addPod6(name string, v4, v6 netip.Addr, o pod6Opts) *pod6 {
	e.t.Helper()
	var addrs []netip.Addr
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	ns := e.net.AddHost(name, addrs...)
	ns.Sysctl(e.t, "net.ipv4.ip_local_port_range", "1024 65000")
	ns.AddLocalAddr(e.t, passthrough6)
	uid := "0000-" + testutil.RandomSuffix()
	podCg := testutil.Cgroup(e.t, e.cgroup, filepath.Join("kubepods", "burstable", "pod"+uid))
	p := &pod6{pod: &pod{
		name: name, ns: ns, cgroup: podCg,
		app:   testutil.Cgroup(e.t, podCg, "app"),
		proxy: testutil.Cgroup(e.t, podCg, "istio-proxy"),
		id:    testutil.CgroupID(e.t, podCg),
	}, v4: v4, v6: v6}
	if err := e.dp.UpsertPod(datapath.Pod{Name: name, CgroupID: p.id, IPv4: v4, IPv6: v6, Capture: true, Outbound: outboundAll, Inbound: inboundAll}); err != nil {
		e.t.Fatalf("upsert pod %s: %v", name, err)
	}
	ss := testutil.SSSidecarSpec{Netns: ns, Cgroup: p.proxy, UID: proxyUID, GID: proxyUID, Outbound: int(e.cfg.OutboundPort)}
	ss.OutboundAddr = o.outboundAt
	if o.dualSS {
		ss.OutboundAddr = netip.IPv6Unspecified()
	} else if v4.IsValid() {
		spec := testutil.SidecarSpec{
			Netns: ns, Cgroup: p.proxy, UID: proxyUID, GID: proxyUID,
			Outbound: int(e.cfg.OutboundPort), Inbound: int(e.cfg.InboundPort),
		}
		if o.upstream6.IsValid() {
			spec.Upstream6, spec.Outbound6 = o.upstream6, o.outboundAt
			if !o.outboundAt.IsValid() {
				spec.Outbound6 = netip.IPv6Unspecified()
			}
		}
		p.sidecar = testutil.StartSidecar(e.t, spec)
		if o.upstream6.IsValid() {
			return p
		}
	}
	if o.inbound {
		ss.Inbound, ss.InboundAddr, ss.Passthrough = int(e.cfg.InboundPort), v6, passthrough6
	}
	p.ss = testutil.StartSSSidecar(e.t, ss)
	return p
}

func server6Addr() string { return netip.AddrPortFrom(serverIP6, serverPort).String() }

// mapped is addr's IPv4 address as an AF_INET6 socket dials it.
func mapped(addr string) string {
	ap := netip.MustParseAddrPort(addr)
	return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port()).String()
}

// Every socket family a pod can dial with is captured: IPv4 on AF_INET,
// IPv4 on an AF_INET6 socket (v4-mapped, IPV6_V6ONLY off: Java's default),
// and native IPv6, in a dual-stack pod, an IPv6-only pod, and a pod whose
// sidecar has one dual-stack listener. Each 16 MiB round trip is intact,
// the server sees the pod's address of the right family, the sidecar reads
// the original destination as it would under iptables or ip6tables, the
// app's getpeername() is exactly what it dialled, and no conntrack entry is
// created.
func TestIPv6Capture(t *testing.T) {
	e := newEnv6(t)
	dual := e.addPod6("dual", podAIP, podA6, pod6Opts{})
	only6 := e.addPod6("v6only", netip.Addr{}, podB6, pod6Opts{})
	oneListener := e.addPod6("onelistener", podCIP, podC6, pod6Opts{dualSS: true})
	watches := map[string]*testutil.ConntrackWatch{}
	for _, p := range []*pod6{dual, only6, oneListener} {
		for _, family := range []string{"ipv4", "ipv6"} {
			watches[p.name+"/"+family] = testutil.WatchConntrackFamily(t, p.ns, family)
		}
	}

	type check struct {
		name       string
		p          *pod6
		dial       string // what the app dials
		serverSaw  netip.Addr
		viaHAProxy bool // else through shadowsocks
		stat       string
	}
	checks := []check{
		{"dual-stack pod, AF_INET", dual, serverAddr(), podAIP, true, ""},
		{"dual-stack pod, v4-mapped on AF_INET6", dual, mapped(serverAddr()), podAIP, true, "captured_mapped"},
		{"dual-stack pod, IPv6", dual, server6Addr(), podA6, false, "captured_v6"},
		{"IPv6-only pod", only6, server6Addr(), podB6, false, "captured_v6"},
		{"one dual-stack sidecar listener, AF_INET", oneListener, serverAddr(), podCIP, false, ""},
		{"one dual-stack sidecar listener, v4-mapped", oneListener, mapped(serverAddr()), podCIP, false, "captured_mapped"},
		{"one dual-stack sidecar listener, IPv6", oneListener, server6Addr(), podC6, false, "captured_v6"},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			before := e.stats()
			haBefore := 0
			if c.p.sidecar != nil {
				haBefore = len(c.p.sidecar.LogLines("outbound"))
			}
			ssBefore := len(c.p.ss.Dialled(false))

			var r peer.Roundtrip
			c.p.run(t, &r, "roundtrip", "-addr", c.dial, "-bytes", fmt.Sprint(16<<20), "-halfclose="+strconv.FormatBool(c.viaHAProxy))
			if !r.Intact {
				t.Fatalf("16 MiB did not round-trip intact: %+v", r)
			}
			if got := hostOf(r.ServerSawPeer); got != c.serverSaw.String() {
				t.Errorf("server saw source %s, want the pod's %s", r.ServerSawPeer, c.serverSaw)
			}
			if r.Getpeername != c.dial {
				t.Errorf("app's getpeername() = %s, want exactly the dialled %s", r.Getpeername, c.dial)
			}
			wantLocal := c.serverSaw
			if strings.HasPrefix(c.dial, "[::ffff:") {
				wantLocal = netip.AddrFrom16(c.serverSaw.As16())
			}
			if got := hostOf(r.Getsockname); got != wantLocal.String() {
				t.Errorf("app's getsockname() = %s, want source %s", r.Getsockname, wantLocal)
			}
			orig := netip.MustParseAddrPort(c.dial)
			origDst := netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port()).String()
			if c.viaHAProxy {
				lines := c.p.sidecar.WaitLogLines("outbound", haBefore+1)
				if len(lines) != haBefore+1 || !strings.Contains(lines[len(lines)-1], "orig_dst="+origDst) ||
					!strings.Contains(lines[len(lines)-1], "client="+c.serverSaw.String()+":") {
					t.Errorf("HAProxy's new outbound log lines %q, want one from %s with orig_dst=%s", lines[haBefore:], c.serverSaw, origDst)
				}
			} else {
				d := c.p.ss.WaitDialled(false, ssBefore+1)
				if len(d) != ssBefore+1 || !dialledTo(d[len(d)-1], orig.Addr().Unmap(), orig.Port()) {
					t.Errorf("shadowsocks dialled %q, want one connection to %s\n%s", d[ssBefore:], origDst, c.p.ss.Output())
				}
			}
			after := e.stats()
			if after.Get("captured") != before.Get("captured")+1 {
				t.Errorf("captured went from %d to %d, want one more", before.Get("captured"), after.Get("captured"))
			}
			if c.stat != "" && after.Get(c.stat) != before.Get(c.stat)+1 {
				t.Errorf("%s went from %d to %d, want one more", c.stat, before.Get(c.stat), after.Get(c.stat))
			}
			if after.Get("origdst_answered") <= before.Get("origdst_answered") {
				t.Errorf("the sidecar's SO_ORIGINAL_DST was not answered by the datapath: %v", after)
			}
		})
	}
	// ss-redir asks SOL_IPV6 first: on a connection that is IPv4
	// underneath, that level keeps the kernel's answer, as under ip6tables,
	// and SOL_IP gives the destination.
	if s := e.stats(); s.Get("origdst_family") == 0 {
		t.Errorf("origdst_family = 0: ss-redir's SOL_IPV6 question on IPv4 connections was answered (%v)", s)
	}
	for name, w := range watches {
		if n := w.Stop(); n != 0 {
			t.Errorf("%s: %d conntrack entries created by captured connections, want 0", name, n)
		}
	}

	// Control: the same watch sees entries once conntrack is on in the
	// netns (an ip6tables rule that matches nothing captured), so the 0
	// above is a measurement.
	only6.ns.Exec(t, "ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "REDIRECT", "--to-ports", "10")
	w := testutil.WatchConntrackFamily(t, only6.ns, "ipv6")
	var r peer.Roundtrip
	only6.run(t, &r, "roundtrip", "-addr", server6Addr(), "-bytes", "1024", "-halfclose=false")
	if n := w.Stop(); !r.Intact || n < 2 {
		t.Errorf("control with conntrack on: intact=%v, %d NEW events; want >= 2 (app->sidecar, sidecar->server)", r.Intact, n)
	}
}

// dialledTo says whether an ss-server "connect to" entry names addr:port
// (it prints IPv6 addresses without brackets).
func dialledTo(entry string, addr netip.Addr, port uint16) bool {
	return entry == fmt.Sprintf("%s:%d", addr, port) || entry == netip.AddrPortFrom(addr, port).String()
}

// Pod A's sidecar dials pod B's IPv6 address: it is short-cut to B's
// inbound port, B's sidecar reads B's address and port with SOL_IPV6
// SO_ORIGINAL_DST and hands the connection to B's app from ::6, which the
// datapath leaves alone.
func TestIPv6ShortcutAndPassthrough(t *testing.T) {
	e := newEnv6(t)
	a := e.addPod6("a", podAIP, podA6, pod6Opts{})
	b := e.addPod6("b", podBIP, podB6, pod6Opts{inbound: true})
	testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "[::]:9090"}})
	testutil.WaitListening(t, b.ns, 9090)
	bAddr := netip.AddrPortFrom(podB6, 9090).String()

	var r peer.Roundtrip
	a.run(t, &r, "roundtrip", "-addr", bAddr, "-bytes", fmt.Sprint(16<<20), "-halfclose=false")
	if !r.Intact {
		t.Fatalf("16 MiB did not round-trip intact: %+v", r)
	}
	if r.Getpeername != bAddr {
		t.Errorf("app's getpeername() = %s, want %s", r.Getpeername, bAddr)
	}
	if hostOf(r.ServerSawPeer) != passthrough6.String() {
		t.Errorf("B's app saw %s, want a connection from ::6 (Envoy-style IPv6 inbound passthrough)", r.ServerSawPeer)
	}
	if d := a.ss.WaitDialled(false, 1); len(d) != 1 || !dialledTo(d[0], podB6, 9090) {
		t.Errorf("A's sidecar dialled %q, want %s", d, bAddr)
	}
	if d := b.ss.WaitDialled(true, 1); len(d) != 1 || !dialledTo(d[0], podB6, 9090) {
		t.Errorf("B's inbound sidecar dialled %q, want %s (its SO_ORIGINAL_DST)\n%s", d, bAddr, b.ss.Output())
	}
	if d := b.ss.Dialled(false); len(d) != 0 {
		t.Errorf("B's outbound sidecar dialled %q: the passthrough from ::6 must not be captured", d)
	}
	if s := e.stats(); s.Get("captured") != 1 || s.Get("shortcut") != 1 {
		t.Errorf("counters %v: want captured=1 shortcut=1", s)
	}
}

// Splicing carries IPv6: the same-node shortcut between two pods' sidecars
// (the only sockets spliced: never an application's) moves 16 MiB intact
// over IPv6 with its bytes redirected by sk_msg, while the app legs of the
// same flow stay on TCP. Two pods with identical [::1]:40000 ->
// [::1]:15001 tuples at the same time each get their own bytes and
// original destination.
func TestIPv6Splice(t *testing.T) {
	e := newEnv6(t, withSplice(true))
	a := e.addPod6("a", podAIP, podA6, pod6Opts{})
	b := e.addPod6("b", podBIP, podB6, pod6Opts{inbound: true})
	testutil.Start(t, testutil.ProcSpec{Netns: e.server, Args: []string{bin.sbpeer, "serve", "-listen", "[::]:8081"}})
	testutil.WaitListening(t, e.server, 8081)
	testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "[::]:9090"}})
	testutil.WaitListening(t, b.ns, 9090)

	t.Run("IPv6 shortcut between sidecars", func(t *testing.T) {
		dial := netip.AddrPortFrom(podB6, 9090).String()
		before := e.stats()
		var r peer.Roundtrip
		a.run(t, &r, "stream", "-addr", dial, "-bytes", strconv.Itoa(16<<20), "-halfclose=false")
		if !r.Intact || r.Getpeername != dial || hostOf(r.ServerSawPeer) != passthrough6.String() {
			t.Errorf("%+v: want intact, through B's sidecar (from ::6)", r)
		}
		after := e.stats()
		if after.Get("shortcut") != before.Get("shortcut")+1 || after.Get("splice_redirected") == before.Get("splice_redirected") {
			t.Errorf("counters %v -> %v: want one shortcut, spliced", before, after)
		}
	})
	t.Run("the app's legs are not spliced", func(t *testing.T) {
		before := e.stats().Get("splice_added")
		var r peer.Roundtrip
		a.run(t, &r, "stream", "-addr", server6Addr(), "-bytes", strconv.Itoa(1<<20), "-halfclose=false")
		if !r.Intact {
			t.Errorf("%+v", r)
		}
		if got := e.stats().Get("splice_added"); got != before {
			t.Errorf("splice_added went from %d to %d on a flow leaving the mesh: an application socket was spliced", before, got)
		}
	})

	t.Run("identical tuples in two pods", func(t *testing.T) {
		sameTupleStreams(t, map[*pod]string{a.pod: server6Addr(), b.pod: netip.AddrPortFrom(serverIP6, 8081).String()}, "[::1]:40000", "-halfclose=false")
	})
	if s := e.stats(); s.Get("splice_add_failed") != 0 {
		t.Errorf("splice_add_failed = %d", s.Get("splice_add_failed"))
	}
	waitNoFlows(t, e)
}

// Istio's annotation ranges in IPv6 apply with istio-iptables' precedence,
// and each family's ranges only ever match that family: an IPv6 ::/0 does
// not capture IPv4, an IPv4 0.0.0.0/0 does not capture IPv6 (ip6tables and
// iptables are separate tables), while "*" and included ports capture both.
func TestIPv6OutboundPolicy(t *testing.T) {
	e := newEnv6(t)
	a := e.addPod6("a", podAIP, podA6, pod6Opts{})
	s4, s6 := serverAddr(), server6Addr()
	m4 := mapped(s4)
	cases := []struct {
		name     string
		out      policy.Outbound
		captured map[string]bool
	}{
		{"all", policy.Outbound{AllIPs: true}, map[string]bool{s4: true, m4: true, s6: true}},
		{"exclude IPv6 range", policy.Outbound{AllIPs: true, ExcludeCIDRsV6: prefixes("fd00:250::/64")}, map[string]bool{s4: true, s6: false}},
		{"include IPv6 range", policy.Outbound{IncludeCIDRsV6: prefixes("fd00:250::1/128")}, map[string]bool{s4: false, m4: false, s6: true}},
		{"IPv6 ::/0 leaves IPv4 alone", policy.Outbound{IncludeCIDRsV6: prefixes("::/0")}, map[string]bool{s4: false, m4: false, s6: true}},
		{"IPv4 0.0.0.0/0 leaves IPv6 alone", policy.Outbound{IncludeCIDRs: prefixes("0.0.0.0/0")}, map[string]bool{s4: true, m4: true, s6: false}},
		{"exclude beats a longer include", policy.Outbound{ExcludeCIDRsV6: prefixes("fd00::/16"), IncludeCIDRsV6: prefixes("fd00:250::1/128")}, map[string]bool{s6: false}},
		{"excluded range beats included port", policy.Outbound{AllIPs: true, ExcludeCIDRsV6: prefixes("fd00:250::/64"), IncludePorts: []uint16{serverPort}}, map[string]bool{s6: false, s4: true}},
		{"included port captures both families", policy.Outbound{IncludePorts: []uint16{serverPort}}, map[string]bool{s4: true, m4: true, s6: true}},
		{"excluded port beats everything", policy.Outbound{AllIPs: true, ExcludePorts: []uint16{serverPort}}, map[string]bool{s4: false, m4: false, s6: false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := datapath.Pod{CgroupID: a.id, IPv4: podAIP, IPv6: podA6, Capture: true, Outbound: tc.out, Inbound: inboundAll}
			if err := e.dp.UpsertPod(want); err != nil {
				t.Fatal(err)
			}
			if pods, err := e.dp.Pods(); err != nil || len(pods) != 1 || !reflect.DeepEqual(pods[0], want) {
				t.Errorf("map holds %+v (%v)\nwant %+v", pods, err, want)
			}
			for addr, wantCaptured := range tc.captured {
				before := e.stats().Get("captured")
				var r peer.Roundtrip
				a.run(t, &r, "roundtrip", "-addr", addr, "-bytes", "1024", "-halfclose=false")
				got := e.stats().Get("captured") > before
				if !r.Intact || got != wantCaptured || r.Getpeername != addr {
					t.Errorf("%s: captured=%v intact=%v getpeername=%s, want captured=%v", addr, got, r.Intact, r.Getpeername, wantCaptured)
				}
			}
		})
	}
}

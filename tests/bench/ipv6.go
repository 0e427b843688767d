package main

import (
	"net/netip"
	"strings"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// The IPv6 row: an IPv6-only pod's app dials an IPv6 server on another
// host through its sidecar, captured by istio-iptables' ip6tables rules or
// by sockbridge (cgroup/connect6), in the same run, interleaved. HAProxy
// reads no original destination on an IPv6 listener, so both pods run
// shadowsocks-libev as the sidecar, as the e2e IPv6 tests do
// (testutil.SSSidecar): ss-redir on [::]:15001 (as Envoy listens) reads
// getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) and hands the connection to
// an ss-server on loopback, which dials the original destination, all as
// uid 1337.

// IPv6 row variants.
const (
	ip6Rules = "ip6tables (Istio's IPv6 rules)"
	ip6Sockb = "sockbridge (connect6)"
)

var (
	// ipv6RowSubnet is the IPv4 side of the row's bridge, which no host
	// uses: every host is IPv6-only.
	ipv6RowSubnet = netip.MustParsePrefix("10.250.6.0/24")
	ipv6RowServer = netip.MustParseAddr("fd00:250::6:1")
	ipv6RowIPT    = netip.MustParseAddr("fd00:250::6:11")
	ipv6RowSB     = netip.MustParseAddr("fd00:250::6:12")
)

// istioNat6Rules is the nat table istio-iptables hands to
// `ip6tables-restore --noflush` for the injector's defaults: the IPv4
// rules (istioNatRules) with Envoy's IPv6 passthrough source ::6 for
// 127.0.0.6 and ::1 for 127.0.0.1, as its IPv6 goldens read (compare
// tools/istio-iptables/pkg/capture/testdata/ipv6.golden in istio/istio).
func istioNat6Rules() string {
	return strings.NewReplacer("127.0.0.6/32", "::6/128", "127.0.0.1/32", "::1/128").Replace(istioNatRules())
}

// runIPv6Bench builds the IPv6 world, runs every round and returns what it
// measured; environment failures end the run through t.
func runIPv6Bench(t testutil.TB, s settings) *rowResults {
	t.Helper()
	res := newRowResults(s, "ipv6", "IPv6: sockbridge against ip6tables REDIRECT", []string{ip6Rules, ip6Sockb})
	res.Method = "An IPv6-only pod's app (`sbpeer`) dials `[" + ipv6RowServer.String() + "]:8080` on another host; " +
		"the sidecar is shadowsocks-libev (`ss-redir` on `[::]:15001`, reading `IP6T_SO_ORIGINAL_DST`, then `ss-server` on loopback dialling it, uid 1337), " +
		"reached through istio-iptables' ip6tables nat rules (`ipv6.rules`) or sockbridge's connect6. " +
		"Conntrack entries: IPv6 NEW events in the pod during the conntrack run."
	res.CounterKeys = []string{"captured_v6", "origdst_answered", "bind_failed"}
	dir := scratchDir(t)
	sbpeer := s.Sbpeer
	if sbpeer == "" {
		sbpeer = buildSbpeer(t, dir)
	}
	suffix := testutil.RandomSuffix()
	root := testutil.Cgroup(t, "", "sockbridge-bench-ipv6-"+suffix)
	refuseCgroupRoot(t, root)
	nw := testutil.NewNetwork(t, netnsPrefix+suffix[:5], ipv6RowSubnet)
	srv := nw.AddHost("srv6", ipv6RowServer)
	server := startEcho(t, sbpeer, srv, testutil.Cgroup(t, root, "server"), "[::]:8080", echoPort)

	sbAttach := testutil.Cgroup(t, root, "sb-attach")
	dp := loadRowDatapath(t, sbAttach, false)
	plain := testutil.Cgroup(t, root, "plain")
	addr := netip.AddrPortFrom(ipv6RowServer, echoPort).String()
	variant := func(name, host, parent string, ip netip.Addr) (*rowVariant, *rowPod) {
		p := newRowPod(t, nw, host, parent, ip)
		cfg := datapath.IstioDefaults()
		ss := testutil.StartSSSidecar(t, testutil.SSSidecarSpec{Netns: p.ns, Cgroup: p.proxy, UID: proxyUID, GID: proxyUID, Outbound: int(cfg.OutboundPort)})
		return &rowVariant{
			name: name, client: testutil.ProcSpec{Netns: p.ns, Cgroup: p.app}, addr: addr,
			ctNS: p.ns, ctFamily: "ipv6", server: server, source: ip,
			// ss-server prints "connect to <orig dst>" for every
			// connection ss-redir hands it, with blocking writes.
			through: []pathCounter{linesOf("the sidecar's ss-server \"connect to\" lines", ss.OutServer, "connect to ")},
			diagNS:  []*testutil.Netns{p.ns},
		}, p
	}
	ipt, _ := variant(ip6Rules, "ip6t", plain, ipv6RowIPT)
	res.Rules = restoreRules(t, ipt.ctNS, "ip6tables-restore", istioNat6Rules())

	sb, sbPod := variant(ip6Sockb, "sb6", sbAttach, ipv6RowSB)
	out, in := policy.CaptureAll()
	in.ExcludePorts = []uint16{15008, 15020, 15021, 15090}
	pod := datapath.Pod{Name: "bench/ipv6", CgroupID: sbPod.id, IPv6: ipv6RowSB,
		Capture: true, Outbound: out, Inbound: in}
	if err := dp.UpsertPod(pod); err != nil {
		t.Fatalf("put the IPv6 pod in the map: %v", err)
	}
	sb.dp = dp
	sb.through = append(sb.through, counterOf(dp, "captured_v6"))

	runRow(t, s, sbpeer, res, []*rowVariant{ipt, sb})
	return res
}

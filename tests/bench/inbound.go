package main

import (
	"fmt"
	"net/netip"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
)

// The inbound row: a client on another host (another node, as far as the
// pod can tell) dials a meshed server pod's IP and port, which lands on
// the pod's HAProxy sidecar inbound listener (0.0.0.0:15006); HAProxy
// reads the original destination and forwards from 127.0.0.6, Envoy's
// inbound passthrough, to the pod's app. The capture is istio-iptables'
// ISTIO_INBOUND PREROUTING REDIRECT to 15006 in the pod's namespace, or
// sockbridge's sk_lookup program attached to that namespace, in the same
// run, interleaved.

// Inbound row variants.
const (
	inRules = "iptables (Istio's inbound REDIRECT)"
	inSockb = "sockbridge (sk_lookup)"
)

var (
	inboundRowSubnet = netip.MustParsePrefix("10.250.7.0/24")
	inboundRowClient = netip.MustParseAddr("10.250.7.20")
	inboundRowIPT    = netip.MustParseAddr("10.250.7.11")
	inboundRowSB     = netip.MustParseAddr("10.250.7.12")
)

// runInboundBench builds the inbound world, runs every round and returns
// what it measured; environment failures end the run through t.
func runInboundBench(t testutil.TB, s settings) *rowResults {
	t.Helper()
	res := newRowResults(s, "inbound", "Inbound: sockbridge's sk_lookup against Istio's inbound REDIRECT", []string{inRules, inSockb})
	res.Method = fmt.Sprintf("A client on another host (%s) dials the server pod's `<pod IP>:%d`; "+
		"the pod's HAProxy sidecar accepts it on its inbound listener `0.0.0.0:15006`, reads the original destination and "+
		"forwards from 127.0.0.6 to the pod's app (`sbpeer serve`), which must see 127.0.0.6 on every connection. "+
		"Captured by istio-iptables' rules (ISTIO_INBOUND in nat PREROUTING, REDIRECT to 15006; `inbound.rules`) "+
		"or by sockbridge's sk_lookup program attached to the pod's namespace. "+
		"Conntrack entries: IPv4 NEW events in the server pod during the conntrack run.", inboundRowClient, echoPort)
	res.CounterKeys = []string{"inbound_redirected", "inbound_refused", "origdst_inbound"}
	dir := scratchDir(t)
	sbpeer := s.Sbpeer
	if sbpeer == "" {
		sbpeer = buildSbpeer(t, dir)
	}
	suffix := testutil.RandomSuffix()
	root := testutil.Cgroup(t, "", "sockbridge-bench-inbound-"+suffix)
	refuseCgroupRoot(t, root)
	nw := testutil.NewNetwork(t, netnsPrefix+suffix[:5], inboundRowSubnet)
	client := testutil.ProcSpec{Netns: nw.AddHost("client", inboundRowClient), Cgroup: testutil.Cgroup(t, root, "client")}
	client.Netns.Sysctl(t, "net.ipv4.ip_local_port_range", "1024 65000")
	client.Netns.Sysctl(t, "net.ipv4.tcp_tw_reuse", "1")

	sbAttach := testutil.Cgroup(t, root, "sb-attach")
	dp := loadRowDatapath(t, sbAttach, true)
	plain := testutil.Cgroup(t, root, "plain")
	cfg := datapath.IstioDefaults()
	// pod builds a server pod with its sidecar; capture runs between the
	// sidecar's start and the app's, since sockbridge refuses the app's
	// bind until the pod's inbound capture is attached.
	pod := func(name, host, parent string, ip netip.Addr, capture func(p *rowPod)) *rowVariant {
		p := newRowPod(t, nw, host, parent, ip)
		testutil.StartSidecar(t, testutil.SidecarSpec{Netns: p.ns, Cgroup: p.proxy, UID: proxyUID, GID: proxyUID,
			Outbound: int(cfg.OutboundPort), Inbound: int(cfg.InboundPort)})
		capture(p)
		app := startEcho(t, sbpeer, p.ns, p.app, fmt.Sprintf("0.0.0.0:%d", echoPort), echoPort)
		return &rowVariant{
			name: name, client: client, addr: netip.AddrPortFrom(ip, echoPort).String(),
			ctNS: p.ns, ctFamily: "ipv4", server: app, source: passthroughSource,
			diagNS: []*testutil.Netns{client.Netns, p.ns},
		}
	}
	ipt := pod(inRules, "inipt", plain, inboundRowIPT, func(p *rowPod) {
		res.Rules = restoreRules(t, p.ns, "iptables-restore", istioNatRules())
	})
	sb := pod(inSockb, "insb", sbAttach, inboundRowSB, func(p *rowPod) {
		if err := dp.UpsertPod(meshedPod(p.id, inboundRowSB)); err != nil {
			t.Fatalf("put the inbound pod in the map: %v", err)
		}
		if err := dp.AttachInbound(p.id, p.ns.Path()); err != nil {
			t.Fatalf("attach inbound capture: %v", err)
		}
	})
	sb.dp = dp
	sb.through = []pathCounter{counterOf(dp, "inbound_redirected")}

	runRow(t, s, sbpeer, res, []*rowVariant{ipt, sb})
	return res
}

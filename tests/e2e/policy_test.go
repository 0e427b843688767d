package e2e

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// The outbound lists decide with istio-iptables' precedence: excluded
// ports, excluded ranges, included ports, then all or included ranges.
// Each case replaces the previous policy, so stale rules must go.
func TestOutboundPolicy(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	testutil.Start(t, testutil.ProcSpec{Netns: e.server, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:8081"}})
	testutil.WaitListening(t, e.server, 8081)
	s8080 := serverAddr()
	s8081 := netip.AddrPortFrom(serverIP, 8081).String()

	cases := []struct {
		name     string
		out      policy.Outbound
		captured map[string]bool
	}{
		{"all", policy.Outbound{AllIPs: true}, map[string]bool{s8080: true, s8081: true}},
		{"exclude port", policy.Outbound{AllIPs: true, ExcludePorts: []uint16{8081}}, map[string]bool{s8080: true, s8081: false}},
		{"exclude range", policy.Outbound{AllIPs: true, ExcludeCIDRs: prefixes("10.250.0.1/32")}, map[string]bool{s8080: false, s8081: false}},
		{"include range", policy.Outbound{IncludeCIDRs: prefixes("10.250.0.0/24")}, map[string]bool{s8080: true}},
		{"include other range", policy.Outbound{IncludeCIDRs: prefixes("192.168.0.0/16")}, map[string]bool{s8080: false}},
		{"include port only", policy.Outbound{IncludePorts: []uint16{8081}}, map[string]bool{s8080: false, s8081: true}},
		{"exclude beats a longer include", policy.Outbound{ExcludeCIDRs: prefixes("10.250.0.0/16"), IncludeCIDRs: prefixes("10.250.0.1/32")}, map[string]bool{s8080: false}},
		{"excluded range beats included port", policy.Outbound{AllIPs: true, ExcludeCIDRs: prefixes("10.250.0.0/24"), IncludePorts: []uint16{8080}}, map[string]bool{s8080: false}},
		{"excluded port beats included port", policy.Outbound{ExcludePorts: []uint16{8080}, IncludePorts: []uint16{8080}}, map[string]bool{s8080: false}},
		{"nothing", policy.Outbound{}, map[string]bool{s8080: false, s8081: false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := datapath.Pod{Name: "a", CgroupID: a.id, IPv4: podAIP, Capture: true, Outbound: tc.out, Inbound: inboundAll}
			if err := e.dp.UpsertPod(want); err != nil {
				t.Fatal(err)
			}
			pods, err := e.dp.Pods()
			if err != nil || len(pods) != 1 {
				t.Fatalf("pods = %+v, %v", pods, err)
			}
			want.Name = "" // not stored
			if !reflect.DeepEqual(pods[0], want) {
				t.Errorf("map holds %+v\nwant %+v", pods[0], want)
			}
			for addr, wantCaptured := range tc.captured {
				// The datapath's counter says whether connect4 redirected
				// the connection; the sidecar's log, which reaches the
				// test a little later, that it really went through it.
				before, capturedBefore := len(a.sidecar.LogLines("outbound")), e.stats().Get("captured")
				var r peer.Roundtrip
				a.run(t, &r, "roundtrip", "-addr", addr, "-bytes", "1024")
				got := e.stats().Get("captured") > capturedBefore
				if !r.Intact || got != wantCaptured {
					t.Errorf("%s: captured=%v intact=%v, want captured=%v", addr, got, r.Intact, wantCaptured)
				}
				want := before
				if wantCaptured {
					want++
				}
				if n := len(a.sidecar.WaitLogLines("outbound", want)); n != want {
					t.Errorf("%s: the sidecar logged %d new connections, want %d", addr, n-before, want-before)
				}
			}
		})
	}

	// The pod loses its IP (a status update) and gets it back.
	for _, ip := range []netip.Addr{{}, podAIP} {
		if err := e.dp.UpsertPod(datapath.Pod{Name: "a", CgroupID: a.id, IPv4: ip, Capture: true, Outbound: outboundAll, Inbound: inboundAll}); err != nil {
			t.Fatalf("upsert with IP %v: %v", ip, err)
		}
		pods, err := e.dp.Pods()
		if err != nil || len(pods) != 1 || pods[0].IPv4 != ip {
			t.Fatalf("pods = %+v, %v; want IP %v", pods, err, ip)
		}
	}

	// Deleting the pod removes every rule it owned.
	if err := e.dp.DeletePod(a.id); err != nil {
		t.Fatal(err)
	}
	if pods, _ := e.dp.Pods(); len(pods) != 0 {
		t.Errorf("pods after delete: %+v", pods)
	}
}

// Pod B's inbound lists decide whether pod A's sidecar is short-cut to B's
// inbound port.
func TestInboundPolicyShortcut(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	b := e.addPod("b", podBIP, podOpts{inMap: true, capture: true, sidecar: true})
	for _, port := range []string{"9090", "9091"} {
		testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:" + port}})
	}
	testutil.WaitListening(t, b.ns, 9091)
	b9090 := netip.AddrPortFrom(podBIP, 9090).String()
	b9091 := netip.AddrPortFrom(podBIP, 9091).String()

	cases := []struct {
		name string
		in   policy.Inbound
		via  map[string]bool // through B's sidecar
	}{
		{"all ports", policy.Inbound{AllPorts: true}, map[string]bool{b9090: true, b9091: true}},
		{"exclude 9091", policy.Inbound{AllPorts: true, ExcludePorts: []uint16{9091}}, map[string]bool{b9090: true, b9091: false}},
		{"include 9090 only", policy.Inbound{IncludePorts: []uint16{9090}}, map[string]bool{b9090: true, b9091: false}},
		{"none", policy.Inbound{}, map[string]bool{b9090: false, b9091: false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := e.dp.UpsertPod(datapath.Pod{Name: "b", CgroupID: b.id, IPv4: podBIP, Capture: true, Outbound: outboundAll, Inbound: tc.in}); err != nil {
				t.Fatal(err)
			}
			for addr, wantVia := range tc.via {
				before, shortcutBefore := len(b.sidecar.LogLines("inbound")), e.stats().Get("shortcut")
				var r peer.Roundtrip
				a.run(t, &r, "roundtrip", "-addr", addr, "-bytes", "1024")
				via := e.stats().Get("shortcut") > shortcutBefore
				want := before
				if wantVia {
					want++
				}
				if n := len(b.sidecar.WaitLogLines("inbound", want)); n != want {
					t.Errorf("%s: B's sidecar logged %d new inbound connections, want %d", addr, n-before, want-before)
				}
				if !r.Intact || via != wantVia {
					t.Errorf("%s: through B's sidecar=%v intact=%v, want %v", addr, via, r.Intact, wantVia)
				}
				wantPeer := podAIP.String()
				if wantVia {
					wantPeer = "127.0.0.6"
				}
				if hostOf(r.ServerSawPeer) != wantPeer {
					t.Errorf("%s: B's app saw %s, want %s", addr, r.ServerSawPeer, wantPeer)
				}
			}
		})
	}
}

package datapath

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

func TestRulesOfLimits(t *testing.T) {
	many := make([]uint16, policy.MaxPorts+1)
	for i := range many {
		many[i] = uint16(i + 1)
	}
	var ranges []netip.Prefix
	for i := 0; i <= policy.MaxCIDRs; i++ {
		ranges = append(ranges, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))
	}
	tests := []struct {
		name string
		pod  Pod
		err  string
	}{
		{"ok", Pod{Outbound: policy.Outbound{ExcludePorts: []uint16{1, 2}, IncludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/8")}}}, ""},
		{"too many ports", Pod{Name: "ns/p", Inbound: policy.Inbound{ExcludePorts: many}}, "ns/p: 65 inbound exclude ports, at most 64"},
		{"too many ranges", Pod{Outbound: policy.Outbound{ExcludeCIDRs: ranges}}, "65 outbound exclude IPv4 ranges, at most 64"},
		{"port 0", Pod{Outbound: policy.Outbound{IncludePorts: []uint16{0}}}, "port 0 in outbound include ports"},
		{"ipv6 range in the IPv4 list", Pod{Outbound: policy.Outbound{ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}}}, "fd00::/8 in outbound exclude IPv4 ranges is of the other family"},
		{"ipv4 range in the IPv6 list", Pod{Outbound: policy.Outbound{IncludeCIDRsV6: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}, "10.0.0.0/8 in outbound include IPv6 ranges is of the other family"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := rulesOf(tt.pod)
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(r.ports) != 2 || len(r.incl) != 1 {
					t.Fatalf("rules %+v", r)
				}
				for k := range r.incl { // masked to the network
					if k.Prefixlen != 64+32+8 || k.Family != 4 || netToIP4(k.Addr.W[0]) != netip.MustParseAddr("10.0.0.0") {
						t.Errorf("range key %+v", k)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want %q", err, tt.err)
			}
		})
	}
}

func TestIP4ByteOrder(t *testing.T) {
	a := netip.MustParseAddr("10.250.0.2")
	if v := ip4ToNet(a); v != 0x0200fa0a {
		t.Errorf("ip4ToNet = %#x, want the network-order bytes read little-endian", v)
	}
	if netToIP4(ip4ToNet(a)) != a {
		t.Error("round trip")
	}
	if ntohs(0x901f) != 8080 {
		t.Error("ntohs")
	}
}

func TestPresetsGiveValidConfigs(t *testing.T) {
	for _, name := range policy.PresetNames() {
		p, _ := policy.PresetByName(name)
		var c Config
		c.ForPreset(p)
		c.CgroupPath, c.PinDir = "/x", "/y"
		if err := c.Validate(); err != nil {
			t.Errorf("preset %s: %v", name, err)
		}
	}
}

// Both families share one LPM trie per list: the family word keeps an
// IPv6 range from matching IPv4, and the round trip is exact.
func TestCidrKeys(t *testing.T) {
	for _, s := range []string{"10.0.0.0/8", "0.0.0.0/0", "1.2.3.4/32", "fd00::/8", "::/0", "2001:db8::1/128", "::ffff:0:0/96"} {
		pfx := netip.MustParsePrefix(s)
		k := cidrKey(42, pfx)
		if got := cidrOf(k); got != pfx {
			t.Errorf("cidrOf(cidrKey(%s)) = %s", s, got)
		}
		wantFamily := uint32(6)
		if pfx.Addr().Is4() {
			wantFamily = 4
		}
		if k.Family != wantFamily || k.CgroupLo != 42 || k.Prefixlen != uint32(64+32+pfx.Bits()) {
			t.Errorf("cidrKey(%s) = %+v", s, k)
		}
	}
}

func TestPodValueBothFamilies(t *testing.T) {
	p := Pod{CgroupID: 7, IPv4: netip.MustParseAddr("10.250.0.2"), IPv6: netip.MustParseAddr("fd00::2"), Capture: true}
	v := podValue(p)
	addrs := podAddrs(v)
	if len(addrs) != 2 || addrOf(addrs[0]) != p.IPv4 || addrOf(addrs[1]) != p.IPv6 {
		t.Errorf("podAddrs = %v", addrs)
	}
	if got := podAddrs(podValue(Pod{CgroupID: 7, IPv6: p.IPv6})); len(got) != 1 || addrOf(got[0]) != p.IPv6 {
		t.Errorf("IPv6-only pod: %v", got)
	}
}

// TestSplicedSocketsWithoutSplicing: a datapath loaded without splicing has
// no sockhash; the count is 0 and the list nil, neither an error.
func TestSplicedSocketsWithoutSplicing(t *testing.T) {
	dp := &Datapath{}
	if n, err := dp.SplicedSockets(); n != 0 || err != nil {
		t.Errorf("SplicedSockets() = %d, %v; want 0, nil", n, err)
	}
	if list, err := dp.SplicedSocketList(); list != nil || err != nil {
		t.Errorf("SplicedSocketList() = %v, %v; want nil, nil", list, err)
	}
}

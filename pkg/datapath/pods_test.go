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
		{"too many ranges", Pod{Outbound: policy.Outbound{ExcludeCIDRs: ranges}}, "65 outbound exclude ranges, at most 64"},
		{"port 0", Pod{Outbound: policy.Outbound{IncludePorts: []uint16{0}}}, "port 0 in outbound include ports"},
		{"ipv6 range", Pod{Outbound: policy.Outbound{ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}}}, "fd00::/8 in outbound exclude ranges is not an IPv4 range"},
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
					if k.Prefixlen != 64+8 || netToIP4(k.Ip4) != netip.MustParseAddr("10.0.0.0") {
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

func TestForPresetMatchesIstioDefaults(t *testing.T) {
	p, err := policy.PresetByName("istio")
	if err != nil {
		t.Fatal(err)
	}
	var c Config
	c.ForPreset(p)
	d := IstioDefaults()
	if c.ProxyUID != d.ProxyUID || c.ProxyGID != d.ProxyGID || c.OutboundPort != d.OutboundPort ||
		c.InboundPort != d.InboundPort || c.TunnelPort != d.TunnelPort || len(c.InboundSkipPorts) != len(d.InboundSkipPorts) {
		t.Errorf("istio preset gives %+v, defaults %+v", c, d)
	}
	for _, name := range policy.PresetNames() {
		p, _ := policy.PresetByName(name)
		c.ForPreset(p)
		c.CgroupPath, c.PinDir = "/x", "/y"
		if err := c.Validate(); err != nil {
			t.Errorf("preset %s: %v", name, err)
		}
	}
}

package datapath

import (
	"net/netip"
	"testing"
)

func TestAddrEncoding(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want [16]byte
	}{
		{"10.250.0.2", [16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 250, 14: 0, 15: 2}},
		{"::ffff:10.250.0.2", [16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 250, 14: 0, 15: 2}},
		{"fd00::2", [16]byte{0: 0xfd, 15: 2}},
		{"::1", [16]byte{15: 1}},
	} {
		a := netip.MustParseAddr(tc.in)
		v := sbAddr(a)
		var raw [16]byte
		for i, w := range v.W { // the bytes as the kernel holds them
			raw[4*i], raw[4*i+1], raw[4*i+2], raw[4*i+3] = byte(w), byte(w>>8), byte(w>>16), byte(w>>24)
		}
		if raw != tc.want {
			t.Errorf("sbAddr(%s) = % x, want % x", tc.in, raw, tc.want)
		}
		if back := addrOf(v); back != a.Unmap() {
			t.Errorf("addrOf(sbAddr(%s)) = %s", tc.in, back)
		}
	}
	if addrOf(sbAddr(netip.Addr{})).IsValid() {
		t.Error("the zero address does not round-trip")
	}
	if got := netToIP4(ip4ToNet(netip.MustParseAddr("1.2.3.4"))); got != netip.MustParseAddr("1.2.3.4") {
		t.Errorf("ip4 round trip: %s", got)
	}
}

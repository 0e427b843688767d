package datapath

import (
	"encoding/binary"
	"net/netip"
)

// The BPF side keeps every address as struct sb_addr: four 32-bit words in
// network byte order, IPv4 as the v4-mapped IPv6 address ::ffff:a.b.c.d.
// A little-endian machine reads each word of network-order bytes as a
// native integer, which is what the generated types hold.

// sbAddr returns a in the datapath's form (IPv4 v4-mapped); the zero Addr
// gives all zeroes.
func sbAddr(a netip.Addr) datapathSbAddr {
	var v datapathSbAddr
	if !a.IsValid() {
		return v
	}
	b := a.As16() // IPv4 comes out v4-mapped
	for i := range v.W {
		v.W[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return v
}

// addrOf is the inverse of sbAddr: a v4-mapped address comes back as IPv4,
// all zeroes as the zero Addr.
func addrOf(v datapathSbAddr) netip.Addr {
	if v == (datapathSbAddr{}) {
		return netip.Addr{}
	}
	return addr16(v).Unmap()
}

// addr16 returns v as an IPv6 address, exactly (:: and v4-mapped included).
func addr16(v datapathSbAddr) netip.Addr {
	var b [16]byte
	for i, w := range v.W {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b)
}

// ip4ToNet returns a (IPv4) as the __be32 the kernel stores.
func ip4ToNet(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func netToIP4(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// ntohs converts a port the kernel stores in network byte order.
func ntohs(v uint16) uint16 { return v>>8 | v<<8 }

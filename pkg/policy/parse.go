package policy

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ErrOverLimit is wrapped by every Problem whose list holds more entries
// than the datapath's maps take (MaxPorts, MaxCIDRs).
var ErrOverLimit = errors.New("list over the datapath limit")

// ErrUnsupported is wrapped by every Problem about a value sockbridge
// understands but cannot apply yet (interface exclusions, ...).
var ErrUnsupported = errors.New("not supported by sockbridge yet")

// ListSyntax says what one list annotation accepts besides its plain
// entries. Every list is comma separated; whitespace around an entry and
// empty entries ("80,,443", a trailing comma) are ignored, as
// istio-iptables' config.Split ignores empty entries.
type ListSyntax struct {
	// Wildcard: the value "*" on its own means every port or address.
	// "*" inside a list is rejected, as Istio's injector rejects it.
	Wildcard bool
	// Ranges: a port entry may be an inclusive range "a-b" (Linkerd).
	Ranges bool
	// BareIPs: an address entry without "/len" means that single host
	// (Kuma). Istio requires a prefix length.
	BareIPs bool
}

// portList is a parsed port annotation: All for "*", else distinct ports
// in ascending order.
type portList struct {
	All   bool
	Ports []uint16
}

// cidrList is a parsed address annotation: All for "*", else distinct,
// masked prefixes in ascending order, split by family as istio-iptables
// splits them (separateV4V6).
type cidrList struct {
	All    bool
	V4, V6 []netip.Prefix
}

// portSet is a bitmap of the 65536 TCP ports: it counts distinct ports of
// a list with ranges without materialising a 65535-entry slice.
type portSet [65536 / 64]uint64

func (s *portSet) addRange(lo, hi uint16) {
	for p := uint32(lo); p <= uint32(hi); p++ {
		s[p/64] |= 1 << (p % 64)
	}
}

func (s *portSet) count() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

func (s *portSet) ports() []uint16 {
	var out []uint16
	for i, w := range s {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			out = append(out, uint16(i*64+b))
			w &^= 1 << b
		}
	}
	return out
}

// splitList splits a list annotation into its trimmed, non-empty entries.
func splitList(value string) []string {
	var out []string
	for _, e := range strings.Split(value, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// validPorts describes what a port list annotation accepts, for Problems.
func validPorts(syn ListSyntax) string {
	s := "comma-separated TCP ports 1-65535"
	if syn.Ranges {
		s += " or inclusive ranges a-b"
	}
	if syn.Wildcard {
		s = `"*" for all ports, or ` + s
	}
	return s + `, or "" for none`
}

// validCIDRs describes what an address list annotation accepts.
func validCIDRs(syn ListSyntax) string {
	s := "comma-separated CIDRs such as 10.0.0.0/8 or fd00::/8"
	if syn.BareIPs {
		s += ", or single addresses"
	}
	if syn.Wildcard {
		s = `"*" for all addresses, or ` + s
	}
	return s + `, or "" for none`
}

// parsePort reads one port 1-65535 in decimal.
func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number 1-65535", s)
	}
	if n == 0 {
		return 0, errors.New("port 0 matches no TCP connection")
	}
	return uint16(n), nil
}

// parsePortList parses a port list annotation. A list with more than
// MaxPorts distinct ports (after expanding ranges) is rejected with
// ErrOverLimit, never truncated.
func parsePortList(value string, syn ListSyntax) (portList, error) {
	value = strings.TrimSpace(value)
	if syn.Wildcard && value == "*" {
		return portList{All: true}, nil
	}
	type span struct{ lo, hi uint16 }
	var spans []span
	total := 0
	for _, e := range splitList(value) {
		if e == "*" {
			return portList{}, errors.New(`"*" must stand alone`)
		}
		lo, hi, isRange := strings.Cut(e, "-")
		if isRange && !syn.Ranges {
			return portList{}, fmt.Errorf("port ranges such as %q are not accepted here", e)
		}
		first, err := parsePort(strings.TrimSpace(lo))
		if err != nil {
			return portList{}, err
		}
		last := first
		if isRange {
			if last, err = parsePort(strings.TrimSpace(hi)); err != nil {
				return portList{}, err
			}
			if last < first {
				return portList{}, fmt.Errorf("port range %q ends before it starts", e)
			}
		}
		spans = append(spans, span{first, last})
		total += int(last-first) + 1
	}
	var ports []uint16
	if total <= 4*MaxPorts {
		// Few ports: a sorted slice is cheaper than the bitmap.
		for _, sp := range spans {
			for p := uint32(sp.lo); p <= uint32(sp.hi); p++ {
				ports = append(ports, uint16(p))
			}
		}
		ports = mergePorts(ports)
	} else {
		// Wide ranges: count distinct ports without a 65535-entry slice.
		var set portSet
		for _, sp := range spans {
			set.addRange(sp.lo, sp.hi)
		}
		if n := set.count(); n > MaxPorts {
			return portList{}, overPorts(n)
		}
		ports = set.ports()
	}
	if n := len(ports); n > MaxPorts {
		return portList{}, overPorts(n)
	}
	return portList{Ports: ports}, nil
}

func overPorts(n int) error {
	return fmt.Errorf("%d ports, more than the %d the datapath holds: %w", n, MaxPorts, ErrOverLimit)
}

// parseCIDRList parses an address list annotation. Each entry must parse
// as netip.ParsePrefix, the parser Istio's injector and istio-iptables use
// (so a bare address is rejected unless syn.BareIPs). Prefixes are masked
// ("10.1.2.3/8" is 10.0.0.0/8, as iptables applies it) and deduplicated.
// IPv4-mapped IPv6 prefixes stay IPv6, as in istio-iptables. More than
// MaxCIDRs distinct prefixes of one family is rejected with ErrOverLimit.
func parseCIDRList(value string, syn ListSyntax) (cidrList, error) {
	value = strings.TrimSpace(value)
	if syn.Wildcard && value == "*" {
		return cidrList{All: true}, nil
	}
	var out cidrList
	for _, e := range splitList(value) {
		if e == "*" {
			return cidrList{}, errors.New(`"*" must stand alone`)
		}
		p, err := netip.ParsePrefix(e)
		if err != nil && syn.BareIPs && !strings.Contains(e, "/") {
			var a netip.Addr
			if a, err = netip.ParseAddr(e); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			return cidrList{}, fmt.Errorf("%q is not a CIDR: %w", e, err)
		}
		if p.Addr().Zone() != "" {
			return cidrList{}, fmt.Errorf("%q: zoned addresses are not accepted", e)
		}
		p = p.Masked()
		if p.Addr().Is4() {
			out.V4 = append(out.V4, p)
		} else {
			out.V6 = append(out.V6, p)
		}
	}
	out.V4 = sortPrefixes(out.V4)
	out.V6 = sortPrefixes(out.V6)
	for _, l := range []struct {
		family string
		n      int
	}{{"IPv4", len(out.V4)}, {"IPv6", len(out.V6)}} {
		if l.n > MaxCIDRs {
			return cidrList{}, fmt.Errorf("%d %s CIDRs, more than the %d the datapath holds: %w", l.n, l.family, MaxCIDRs, ErrOverLimit)
		}
	}
	return out, nil
}

// sortPrefixes sorts and deduplicates prefixes in place.
func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(ps)
}

// mergePorts returns the sorted union of port lists, without duplicates.
func mergePorts(lists ...[]uint16) []uint16 {
	var out []uint16
	for _, l := range lists {
		out = append(out, l...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

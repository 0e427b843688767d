package main

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Rules per pod for the scaling benchmark (scaling.go).
//
// A pod's policy has eight lists: outbound exclude and include ports,
// inbound exclude and include ports, and outbound exclude and include
// ranges of each family. pkg/policy caps each at 64 entries (MaxPorts,
// MaxCIDRs; docs/annotations.md "Limits") and the datapath rejects a pod
// over a cap (rulesOf in pkg/datapath), so the most a pod can hold is
// 8 × 64 = 512 map entries, of which the inbound exclude list's 4 are
// Istio's never-captured ports (15008, 15020, 15021, 15090): 508 rules a
// user can add. The maps themselves would hold more (16384 ranges, 65536
// ports, shared by all pods), but no policy can express them: 1000 rules
// on one pod needs the per-list caps raised, a change of pkg/policy, not
// of the map layout.

// fixedInboundExcludes are the ports a meshed pod never captures inbound.
var fixedInboundExcludes = []uint16{15008, 15020, 15021, 15090}

// maxScaleRules is the most rules a user can add to one pod.
const maxScaleRules = 4*policy.MaxPorts + 4*policy.MaxCIDRs - 4

// scaleRules builds a client pod's policy with exactly n rules beyond the
// fixed inbound excludes, none of which changes what the benchmark's
// connections do: every target (the destinations the pod's app dials) is
// still captured, on every port in dialPorts. n = 0 is the meshed pod's
// default policy (every destination). With n > 0 the pod captures only
// its include ranges, which hold the targets, so connect4 consults both
// range tries; the IPv4 ranges are chosen to make the trie lookup of a
// target walk deep (siblings along each target's path: prefixes that share
// ever longer beginnings with it without containing it), and they fill
// first since they are the lists connect4 walks for an IPv4 destination;
// the port lists and the IPv6 ranges take the rest. With far, the IPv4
// ranges beyond the targets' own /32s are /24s in 172.16.0.0/12 instead,
// away from every target, as a typical exclude list is: the lookup of a
// target leaves them at the trie's top.
func scaleRules(n int, targets []netip.Addr, dialPorts []uint16, far bool) (policy.Outbound, policy.Inbound, error) {
	out, in := policy.CaptureAll()
	in.ExcludePorts = slices.Clone(fixedInboundExcludes)
	if n == 0 {
		return out, in, nil
	}
	if n < len(targets) || n > maxScaleRules {
		return out, in, fmt.Errorf("%d rules: want %d to %d (the include ranges must hold the %d targets; %d is every list full)",
			n, len(targets), maxScaleRules, len(targets), maxScaleRules)
	}
	out.AllIPs = false
	// How many entries each list gets: the IPv4 tries first, in turn,
	// then the other lists in turn.
	const (
		excl4 = iota
		incl4
		outExclPorts
		outInclPorts
		inExclPorts
		inInclPorts
		excl6
		incl6
		nLists
	)
	capOf := func(l int) int {
		switch l {
		case inExclPorts:
			return policy.MaxPorts - len(fixedInboundExcludes)
		case excl4, incl4, excl6, incl6:
			return policy.MaxCIDRs
		}
		return policy.MaxPorts
	}
	var count [nLists]int
	count[incl4] = len(targets)
	left := n - len(targets)
	for _, group := range [][]int{{excl4, incl4}, {outExclPorts, outInclPorts, inExclPorts, inInclPorts, excl6, incl6}} {
		for progress := true; left > 0 && progress; {
			progress = false
			for _, l := range group {
				if left > 0 && count[l] < capOf(l) {
					count[l]++
					left--
					progress = true
				}
			}
		}
	}
	near := nearPrefixes(targets)
	if far {
		near = farPrefixes()
	}
	if len(near) < count[excl4] || len(near) < count[incl4]-len(targets) {
		return out, in, fmt.Errorf("only %d IPv4 ranges near the targets", len(near))
	}
	out.ExcludeCIDRs = slices.Clone(near[:count[excl4]])
	for _, a := range targets {
		out.IncludeCIDRs = append(out.IncludeCIDRs, netip.PrefixFrom(a, 32))
	}
	out.IncludeCIDRs = append(out.IncludeCIDRs, near[:count[incl4]-len(targets)]...)
	ports := func(base uint16, k int) []uint16 {
		var ps []uint16
		for p := base; len(ps) < k; p++ {
			if !slices.Contains(dialPorts, p) && !slices.Contains(fixedInboundExcludes, p) {
				ps = append(ps, p)
			}
		}
		return ps
	}
	out.ExcludePorts = ports(30000, count[outExclPorts])
	out.IncludePorts = ports(31000, count[outInclPorts])
	in.ExcludePorts = append(in.ExcludePorts, ports(32000, count[inExclPorts])...)
	in.IncludePorts = ports(33000, count[inInclPorts])
	v6 := func(third uint16, k int) []netip.Prefix {
		var ps []netip.Prefix
		for i := 0; i < k; i++ {
			a := [16]byte{0xfd, 0x00, 0x02, 0x50, byte(third >> 8), byte(third), 14: byte(i >> 8), 15: byte(i)}
			ps = append(ps, netip.PrefixFrom(netip.AddrFrom16(a), 128))
		}
		return ps
	}
	out.ExcludeCIDRsV6 = v6(1, count[excl6])
	out.IncludeCIDRsV6 = v6(2, count[incl6])
	for _, l := range [][]uint16{out.ExcludePorts, out.IncludePorts, in.ExcludePorts, in.IncludePorts} {
		slices.Sort(l)
	}
	for _, l := range [][]netip.Prefix{out.ExcludeCIDRs, out.IncludeCIDRs} {
		slices.SortFunc(l, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr())*64 + a.Bits() - b.Bits() })
	}
	return out, in, nil
}

// nearPrefixes are IPv4 prefixes that contain none of the targets, the
// deepest first: for each target and each bit, the prefix that agrees with
// it up to that bit and differs in it (its sibling in the trie), then /32s
// next to the first target. Each target's lookup walks past every sibling
// on its path.
func nearPrefixes(targets []netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		p = p.Masked()
		for _, t := range targets {
			if p.Contains(t) {
				return
			}
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for bit := 31; bit >= 0; bit-- {
		for _, t := range targets {
			b := t.As4()
			b[bit/8] ^= 0x80 >> (bit % 8)
			add(netip.PrefixFrom(netip.AddrFrom4(b), bit+1))
		}
	}
	if len(targets) > 0 {
		for a := targets[0].Next(); len(out) < 2*policy.MaxCIDRs && a.Is4(); a = a.Next() {
			add(netip.PrefixFrom(a, 32))
		}
	}
	return out
}

// farPrefixes are 2 × MaxCIDRs distinct /24s in 172.16.0.0/12.
func farPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for i := 0; i < 2*policy.MaxCIDRs; i++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>8), byte(i), 0}), 24))
	}
	return out
}

// ruleCount is how many rules a pod's lists hold, as map entries (every
// list is free of duplicates, and the benchmark's lists share no port).
func ruleCount(p policy.Pod) int {
	return len(p.Outbound.ExcludePorts) + len(p.Outbound.IncludePorts) +
		len(p.Inbound.ExcludePorts) + len(p.Inbound.IncludePorts) +
		len(p.Outbound.ExcludeCIDRs) + len(p.Outbound.IncludeCIDRs) +
		len(p.Outbound.ExcludeCIDRsV6) + len(p.Outbound.IncludeCIDRsV6)
}

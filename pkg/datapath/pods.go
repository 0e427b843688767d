package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/sockbridge/sockbridge/pkg/bpfobj"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Pod is one pod's entry in the datapath: its policy.
type Pod = policy.Pod

func podValue(p Pod) datapathSbPod {
	v := datapathSbPod{}
	if p.IPv4.Is4() {
		v.Ip4 = ip4ToNet(p.IPv4)
	}
	if p.IPv6.Is6() && !p.IPv6.Is4In6() {
		v.Ip6 = sbAddr(p.IPv6)
	}
	if p.Capture {
		v.Flags |= uint32(datapathSbPodFlagSB_POD_CAPTURE)
	}
	if p.Outbound.AllIPs {
		v.Flags |= uint32(datapathSbPodFlagSB_POD_OUT_ALL_IPS)
	}
	if p.Inbound.AllPorts {
		v.Flags |= uint32(datapathSbPodFlagSB_POD_IN_ALL_PORTS)
	}
	if p.DNS.Capture {
		v.Flags |= uint32(datapathSbPodFlagSB_POD_DNS_CAPTURE)
	}
	if p.DNS.All {
		v.Flags |= uint32(datapathSbPodFlagSB_POD_DNS_ALL)
	}
	return v
}

// podAddrs returns the addresses a pod entry indexes in sb_pod_ips.
func podAddrs(v datapathSbPod) []datapathSbAddr {
	var out []datapathSbAddr
	if v.Ip4 != 0 {
		out = append(out, sbAddr(netToIP4(v.Ip4)))
	}
	if v.Ip6 != (datapathSbAddr{}) {
		out = append(out, v.Ip6)
	}
	return out
}

// cidrKey encodes one range of one pod for sb_cidr_excl or sb_cidr_incl:
// the family word, then the address bits (IPv4 in the first word).
func cidrKey(cgroupID uint64, pfx netip.Prefix) datapathSbCidrKey {
	pfx = pfx.Masked()
	k := datapathSbCidrKey{CgroupLo: uint32(cgroupID), CgroupHi: uint32(cgroupID >> 32)}
	if pfx.Addr().Is4() {
		k.Family = 4
		k.Addr.W[0] = ip4ToNet(pfx.Addr())
	} else {
		k.Family = 6
		k.Addr = sbAddr(pfx.Addr())
	}
	k.Prefixlen = 64 + 32 + uint32(pfx.Bits())
	return k
}

// cidrOf is the inverse of cidrKey.
func cidrOf(k datapathSbCidrKey) netip.Prefix {
	bits := int(k.Prefixlen) - 64 - 32
	if k.Family == 4 {
		return netip.PrefixFrom(netToIP4(k.Addr.W[0]), bits)
	}
	return netip.PrefixFrom(addr16(k.Addr), bits)
}

// podRules are the sb_ports, sb_cidr_* and sb_dns_servers entries one pod
// owns.
type podRules struct {
	ports map[datapathSbPortKey]uint8
	excl  map[datapathSbCidrKey]bool
	incl  map[datapathSbCidrKey]bool
	dns   map[datapathSbDnsKey]bool
}

func newPodRules() *podRules {
	return &podRules{
		ports: map[datapathSbPortKey]uint8{},
		excl:  map[datapathSbCidrKey]bool{},
		incl:  map[datapathSbCidrKey]bool{},
		dns:   map[datapathSbDnsKey]bool{},
	}
}

// rulesOf encodes a pod's lists, checking the limits.
func rulesOf(p Pod) (*podRules, error) {
	r := newPodRules()
	lists := []struct {
		name   string
		ports  []uint16
		dir    datapathSbDirection
		action datapathSbPortAction
	}{
		{"outbound exclude ports", p.Outbound.ExcludePorts, datapathSbDirectionSB_DIR_OUTBOUND, datapathSbPortActionSB_PORT_EXCLUDE},
		{"outbound include ports", p.Outbound.IncludePorts, datapathSbDirectionSB_DIR_OUTBOUND, datapathSbPortActionSB_PORT_INCLUDE},
		{"inbound exclude ports", p.Inbound.ExcludePorts, datapathSbDirectionSB_DIR_INBOUND, datapathSbPortActionSB_PORT_EXCLUDE},
		{"inbound include ports", p.Inbound.IncludePorts, datapathSbDirectionSB_DIR_INBOUND, datapathSbPortActionSB_PORT_INCLUDE},
	}
	for _, l := range lists {
		if len(l.ports) > policy.MaxPorts {
			return nil, fmt.Errorf("pod %s: %d %s, at most %d fit", p.Name, len(l.ports), l.name, policy.MaxPorts)
		}
		for _, port := range l.ports {
			if port == 0 {
				return nil, fmt.Errorf("pod %s: port 0 in %s", p.Name, l.name)
			}
			k := datapathSbPortKey{CgroupId: p.CgroupID, Port: port, Dir: uint8(l.dir)}
			r.ports[k] |= uint8(l.action)
		}
	}
	cidrs := []struct {
		name     string
		prefixes []netip.Prefix
		v6       bool
		into     map[datapathSbCidrKey]bool
	}{
		{"outbound exclude IPv4 ranges", p.Outbound.ExcludeCIDRs, false, r.excl},
		{"outbound include IPv4 ranges", p.Outbound.IncludeCIDRs, false, r.incl},
		{"outbound exclude IPv6 ranges", p.Outbound.ExcludeCIDRsV6, true, r.excl},
		{"outbound include IPv6 ranges", p.Outbound.IncludeCIDRsV6, true, r.incl},
	}
	for _, l := range cidrs {
		if len(l.prefixes) > policy.MaxCIDRs {
			return nil, fmt.Errorf("pod %s: %d %s, at most %d fit", p.Name, len(l.prefixes), l.name, policy.MaxCIDRs)
		}
		for _, pfx := range l.prefixes {
			if pfx.Addr().Is4() == l.v6 || !pfx.IsValid() {
				return nil, fmt.Errorf("pod %s: %s in %s is of the other family", p.Name, pfx, l.name)
			}
			l.into[cidrKey(p.CgroupID, pfx)] = true
		}
	}
	if n := len(p.DNS.Nameservers); n > policy.MaxNameservers {
		return nil, fmt.Errorf("pod %s: %d nameservers, at most %d fit", p.Name, n, policy.MaxNameservers)
	}
	for _, a := range p.DNS.Nameservers {
		if !a.IsValid() || a.Zone() != "" {
			return nil, fmt.Errorf("pod %s: nameserver %q is not an address", p.Name, a)
		}
		r.dns[datapathSbDnsKey{CgroupId: p.CgroupID, Addr: sbAddr(a.Unmap())}] = true
	}
	return r, nil
}

// UpsertPod adds or replaces a pod and its include/exclude lists, keeping
// the IP index (both families) in step. New rules are written before the
// pod entry and stale ones removed after it. The rule index records the new
// rules before any is written, so a failure half-way leaves no map entry
// the index does not know (DeletePod or the next upsert removes it).
func (dp *Datapath) UpsertPod(p Pod) error {
	if p.CgroupID == 0 {
		return fmt.Errorf("upsert pod %s: cgroup id 0", p.Name)
	}
	if p.IPv4.IsValid() && !p.IPv4.Is4() {
		return fmt.Errorf("upsert pod %s: %s is not an IPv4 address", p.Name, p.IPv4)
	}
	if p.IPv6.IsValid() && (!p.IPv6.Is6() || p.IPv6.Is4In6()) {
		return fmt.Errorf("upsert pod %s: %s is not an IPv6 address", p.Name, p.IPv6)
	}
	rules, err := rulesOf(p)
	if err != nil {
		return err
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	old, err := dp.rulesLocked(p.CgroupID)
	if err != nil {
		return err
	}
	dp.rules[p.CgroupID] = old.union(rules)
	for k, v := range rules.ports {
		if err := dp.maps.SbPorts.Put(k, v); err != nil {
			return fmt.Errorf("update pod %s port %d: %w", p.Name, k.Port, err)
		}
	}
	for _, set := range []struct {
		m    *ebpf.Map
		keys map[datapathSbCidrKey]bool
	}{{dp.maps.SbCidrExcl, rules.excl}, {dp.maps.SbCidrIncl, rules.incl}} {
		for k := range set.keys {
			if err := set.m.Put(k, uint8(1)); err != nil {
				return fmt.Errorf("update pod %s range %s: %w", p.Name, cidrOf(k), err)
			}
		}
	}
	for k := range rules.dns {
		if err := dp.maps.SbDnsServers.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("update pod %s nameserver %s: %w", p.Name, addrOf(k.Addr), err)
		}
	}

	value := podValue(p)
	var prev datapathSbPod
	err = dp.maps.SbPods.Lookup(p.CgroupID, &prev)
	isNew := errors.Is(err, ebpf.ErrKeyNotExist)
	if err == nil {
		keep := podAddrs(value)
		for _, a := range podAddrs(prev) {
			if !slices.Contains(keep, a) {
				if err := dp.deleteIP(a, p.CgroupID); err != nil {
					return err
				}
			}
		}
	}
	if err := dp.maps.SbPods.Put(p.CgroupID, value); err != nil {
		return fmt.Errorf("update pod %s: %w", p.Name, err)
	}
	if isNew {
		// After the pod is in sb_pods: the connect hooks forget every
		// cached "in no pod" and walk again.
		if err := dp.bumpGeneration(); err != nil {
			return fmt.Errorf("add pod %s: %w", p.Name, err)
		}
	}
	for _, a := range podAddrs(value) {
		if err := dp.maps.SbPodIps.Put(a, datapathSbPodIp{CgroupId: p.CgroupID}); err != nil {
			return fmt.Errorf("update pod %s ip %s: %w", p.Name, addrOf(a), err)
		}
	}
	if err := dp.deleteStale(old, rules); err != nil {
		return err
	}
	dp.rules[p.CgroupID] = rules
	return nil
}

// union returns the rules in r or o.
func (r *podRules) union(o *podRules) *podRules {
	u := newPodRules()
	for _, from := range []*podRules{r, o} {
		for k, v := range from.ports {
			u.ports[k] |= v
		}
		for k := range from.excl {
			u.excl[k] = true
		}
		for k := range from.incl {
			u.incl[k] = true
		}
		for k := range from.dns {
			u.dns[k] = true
		}
	}
	return u
}

// bumpGeneration invalidates connect4's cached "in no pod" answers.
func (dp *Datapath) bumpGeneration() error {
	var gen uint64
	if err := dp.maps.SbGeneration.Lookup(uint32(0), &gen); err != nil {
		return fmt.Errorf("read pod generation: %w", err)
	}
	if err := dp.maps.SbGeneration.Put(uint32(0), gen+1); err != nil {
		return fmt.Errorf("bump pod generation: %w", err)
	}
	return nil
}

// deleteStale removes the rules in old that are not in keep (nil: all).
func (dp *Datapath) deleteStale(old, keep *podRules) error {
	if keep == nil {
		keep = newPodRules()
	}
	var errs []error
	for k := range old.ports {
		if _, ok := keep.ports[k]; !ok {
			errs = append(errs, ignoreNotExist(dp.maps.SbPorts.Delete(k)))
		}
	}
	for k := range old.excl {
		if !keep.excl[k] {
			errs = append(errs, ignoreNotExist(dp.maps.SbCidrExcl.Delete(k)))
		}
	}
	for k := range old.incl {
		if !keep.incl[k] {
			errs = append(errs, ignoreNotExist(dp.maps.SbCidrIncl.Delete(k)))
		}
	}
	for k := range old.dns {
		if !keep.dns[k] {
			errs = append(errs, ignoreNotExist(dp.maps.SbDnsServers.Delete(k)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete stale rules: %w", err)
	}
	return nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// rulesLocked returns the rules the maps hold for a pod, reading every
// rule map once per agent run to build the index.
func (dp *Datapath) rulesLocked(cgroupID uint64) (*podRules, error) {
	if dp.rules == nil {
		idx, err := dp.readRules()
		if err != nil {
			return nil, err
		}
		dp.rules = idx
	}
	if r, ok := dp.rules[cgroupID]; ok {
		return r, nil
	}
	return newPodRules(), nil
}

func (dp *Datapath) readRules() (map[uint64]*podRules, error) {
	idx := map[uint64]*podRules{}
	get := func(id uint64) *podRules {
		if idx[id] == nil {
			idx[id] = newPodRules()
		}
		return idx[id]
	}
	var (
		pk datapathSbPortKey
		pv uint8
	)
	it := dp.maps.SbPorts.Iterate()
	for it.Next(&pk, &pv) {
		get(pk.CgroupId).ports[pk] = pv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read port rules: %w", err)
	}
	for _, trie := range []struct {
		m    *ebpf.Map
		pick func(*podRules) map[datapathSbCidrKey]bool
	}{
		{dp.maps.SbCidrExcl, func(r *podRules) map[datapathSbCidrKey]bool { return r.excl }},
		{dp.maps.SbCidrIncl, func(r *podRules) map[datapathSbCidrKey]bool { return r.incl }},
	} {
		var (
			ck datapathSbCidrKey
			cv uint8
		)
		it := trie.m.Iterate()
		for it.Next(&ck, &cv) {
			trie.pick(get(uint64(ck.CgroupHi)<<32 | uint64(ck.CgroupLo)))[ck] = true
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("read range rules: %w", err)
		}
	}
	var (
		dk datapathSbDnsKey
		dv uint8
	)
	it = dp.maps.SbDnsServers.Iterate()
	for it.Next(&dk, &dv) {
		get(dk.CgroupId).dns[dk] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read nameservers: %w", err)
	}
	return idx, nil
}

// deleteIP removes a from the IP index if it still points at cgroupID.
func (dp *Datapath) deleteIP(a datapathSbAddr, cgroupID uint64) error {
	var cur datapathSbPodIp
	if err := dp.maps.SbPodIps.Lookup(a, &cur); err != nil || cur.CgroupId != cgroupID {
		return nil
	}
	if err := ignoreNotExist(dp.maps.SbPodIps.Delete(a)); err != nil {
		return fmt.Errorf("delete pod ip %s: %w", addrOf(a), err)
	}
	return nil
}

// DeletePod removes a pod and its rules; removing an absent pod is not an
// error.
func (dp *Datapath) DeletePod(cgroupID uint64) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	old, err := dp.rulesLocked(cgroupID)
	if err != nil {
		return err
	}
	var prev datapathSbPod
	if err := dp.maps.SbPods.Lookup(cgroupID, &prev); err == nil {
		for _, a := range podAddrs(prev) {
			if err := dp.deleteIP(a, cgroupID); err != nil {
				return err
			}
		}
		if err := ignoreNotExist(dp.maps.SbPods.Delete(cgroupID)); err != nil {
			return fmt.Errorf("delete pod %d: %w", cgroupID, err)
		}
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("look up pod %d: %w", cgroupID, err)
	}
	if err := dp.deleteStale(old, nil); err != nil {
		return err
	}
	delete(dp.rules, cgroupID)
	return nil
}

// Pods lists the pods in the map with their rules, ordered by cgroup id.
func (dp *Datapath) Pods() ([]Pod, error) {
	var (
		id   uint64
		v    datapathSbPod
		pods []Pod
	)
	rules, err := dp.readRules()
	if err != nil {
		return nil, err
	}
	it := dp.maps.SbPods.Iterate()
	for it.Next(&id, &v) {
		p := Pod{CgroupID: id, Capture: v.Flags&uint32(datapathSbPodFlagSB_POD_CAPTURE) != 0}
		if v.Ip4 != 0 {
			p.IPv4 = netToIP4(v.Ip4)
		}
		p.IPv6 = addrOf(v.Ip6)
		p.Outbound.AllIPs = v.Flags&uint32(datapathSbPodFlagSB_POD_OUT_ALL_IPS) != 0
		p.Inbound.AllPorts = v.Flags&uint32(datapathSbPodFlagSB_POD_IN_ALL_PORTS) != 0
		p.DNS.Capture = v.Flags&uint32(datapathSbPodFlagSB_POD_DNS_CAPTURE) != 0
		p.DNS.All = v.Flags&uint32(datapathSbPodFlagSB_POD_DNS_ALL) != 0
		if r := rules[id]; r != nil {
			r.decode(&p)
		}
		pods = append(pods, p)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pods: %w", err)
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].CgroupID < pods[j].CgroupID })
	return pods, nil
}

// decode fills p's lists from the rules, sorted.
func (r *podRules) decode(p *Pod) {
	for k, v := range r.ports {
		out := k.Dir == uint8(datapathSbDirectionSB_DIR_OUTBOUND)
		if v&uint8(datapathSbPortActionSB_PORT_EXCLUDE) != 0 {
			if out {
				p.Outbound.ExcludePorts = append(p.Outbound.ExcludePorts, k.Port)
			} else {
				p.Inbound.ExcludePorts = append(p.Inbound.ExcludePorts, k.Port)
			}
		}
		if v&uint8(datapathSbPortActionSB_PORT_INCLUDE) != 0 {
			if out {
				p.Outbound.IncludePorts = append(p.Outbound.IncludePorts, k.Port)
			} else {
				p.Inbound.IncludePorts = append(p.Inbound.IncludePorts, k.Port)
			}
		}
	}
	for _, set := range []struct {
		keys   map[datapathSbCidrKey]bool
		v4, v6 *[]netip.Prefix
	}{
		{r.excl, &p.Outbound.ExcludeCIDRs, &p.Outbound.ExcludeCIDRsV6},
		{r.incl, &p.Outbound.IncludeCIDRs, &p.Outbound.IncludeCIDRsV6},
	} {
		for k := range set.keys {
			if pfx := cidrOf(k); pfx.Addr().Is4() {
				*set.v4 = append(*set.v4, pfx)
			} else {
				*set.v6 = append(*set.v6, pfx)
			}
		}
	}
	for _, l := range [][]uint16{p.Outbound.ExcludePorts, p.Outbound.IncludePorts, p.Inbound.ExcludePorts, p.Inbound.IncludePorts} {
		slices.Sort(l)
	}
	for k := range r.dns {
		p.DNS.Nameservers = append(p.DNS.Nameservers, addrOf(k.Addr))
	}
	slices.SortFunc(p.DNS.Nameservers, netip.Addr.Compare)
	for _, l := range [][]netip.Prefix{p.Outbound.ExcludeCIDRs, p.Outbound.IncludeCIDRs, p.Outbound.ExcludeCIDRsV6, p.Outbound.IncludeCIDRsV6} {
		slices.SortFunc(l, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr())*64 + a.Bits() - b.Bits() })
	}
}

// SyncPods makes the pod map equal want: it upserts every pod in want and
// deletes every other pod. It goes on past a failing pod and returns all
// errors, so one bad entry leaves the others in place.
func (dp *Datapath) SyncPods(want []Pod) error {
	have, err := dp.Pods()
	if err != nil {
		return err
	}
	keep := make(map[uint64]bool, len(want))
	var errs []error
	for _, p := range want {
		keep[p.CgroupID] = true
		if err := dp.UpsertPod(p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range have {
		if !keep[p.CgroupID] {
			if err := dp.DeletePod(p.CgroupID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// InFlightTuples counts handshakes whose original destination has not yet
// reached the sidecar's socket (entries of sb_tuples). It is 0 on an idle
// node.
func (dp *Datapath) InFlightTuples() (int, error) {
	var (
		k datapathSbTuple
		v datapathSbSock
		n int
	)
	it := dp.maps.SbTuples.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate tuples: %w", err)
	}
	return n, nil
}

// SplicedSockets counts the sockets in sb_sockhash (two per spliced flow);
// 0 when the datapath runs without splicing (no sockhash).
func (dp *Datapath) SplicedSockets() (int, error) {
	list, err := dp.SplicedSocketList()
	if err != nil {
		return 0, err
	}
	return len(list), nil
}

// SplicedSocket is one sb_sockhash entry: the key the sk_msg program looks
// its peer up by, and the socket's cookie (what `ss -e` prints as sk:).
type SplicedSocket struct {
	Netns  uint64 // netns cookie, 0 when the key needs none
	Local  netip.AddrPort
	Remote netip.AddrPort
	Cookie uint64
}

// SplicedSocketList lists the sockets in sb_sockhash; nil without
// splicing. Tests print it when a socket outlives its connection.
func (dp *Datapath) SplicedSocketList() ([]SplicedSocket, error) {
	if dp.maps.SbSockhash == nil {
		return nil, nil
	}
	var (
		k    datapathSbSockKey
		v    uint64
		list []SplicedSocket
	)
	it := dp.maps.SbSockhash.Iterate()
	for it.Next(&k, &v) {
		list = append(list, SplicedSocket{
			Netns:  k.Netns,
			Local:  netip.AddrPortFrom(addrOf(k.Local), k.LocalPort),
			Remote: netip.AddrPortFrom(addrOf(k.Remote), k.RemotePort),
			Cookie: v,
		})
	}
	if err := it.Err(); err != nil {
		return list, fmt.Errorf("iterate sockhash: %w", err)
	}
	return list, nil
}

// Stats returns the datapath counters summed over CPUs, named after enum
// sb_stat ("captured" for SB_STAT_CAPTURED); every counter is present.
func (dp *Datapath) Stats() (bpfobj.Values, error) {
	if dp.counters == nil {
		spec, err := loadDatapath()
		if err != nil {
			return nil, fmt.Errorf("load datapath spec: %w", err)
		}
		if dp.counters, err = bpfobj.CountersOf(spec, "sb_stat", "SB_STAT_"); err != nil {
			return nil, err
		}
	}
	return dp.counters.Read(dp.maps.SbStats)
}

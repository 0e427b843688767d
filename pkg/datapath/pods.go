package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Pod is one pod's entry in the datapath: its policy.
type Pod = policy.Pod

func podValue(p Pod) connectSbPod {
	v := connectSbPod{}
	if p.IPv4.Is4() {
		v.Ip4 = ip4ToNet(p.IPv4)
	}
	if p.Capture {
		v.Flags |= uint32(connectSbPodFlagSB_POD_CAPTURE)
	}
	return v
}

// ip4ToNet returns a as the __u32 the kernel stores: network byte order read
// by a little-endian machine as a native integer.
func ip4ToNet(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func netToIP4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)})
}

// ntohs converts a port the kernel stores in network byte order.
func ntohs(v uint16) uint16 { return v>>8 | v<<8 }

// UpsertPod adds or replaces a pod, keeping the IP index in step.
func (dp *Datapath) UpsertPod(p Pod) error {
	if p.CgroupID == 0 {
		return errors.New("upsert pod: cgroup id 0")
	}
	if p.IPv4.IsValid() && !p.IPv4.Is4() {
		return fmt.Errorf("upsert pod %d: %s is not an IPv4 address", p.CgroupID, p.IPv4)
	}
	var old connectSbPod
	if err := dp.maps.SbPods.Lookup(p.CgroupID, &old); err == nil && old.Ip4 != 0 && old.Ip4 != ip4ToNet(p.IPv4) {
		if err := dp.deleteIP(old.Ip4, p.CgroupID); err != nil {
			return err
		}
	}
	if err := dp.maps.SbPods.Put(p.CgroupID, podValue(p)); err != nil {
		return fmt.Errorf("update pod %d: %w", p.CgroupID, err)
	}
	if p.IPv4.Is4() {
		if err := dp.maps.SbPodIps.Put(ip4ToNet(p.IPv4), connectSbPodIp{CgroupId: p.CgroupID}); err != nil {
			return fmt.Errorf("update pod ip %s: %w", p.IPv4, err)
		}
	}
	return nil
}

// deleteIP removes ip from the IP index if it still points at cgroupID.
func (dp *Datapath) deleteIP(ip uint32, cgroupID uint64) error {
	var cur connectSbPodIp
	if err := dp.maps.SbPodIps.Lookup(ip, &cur); err != nil || cur.CgroupId != cgroupID {
		return nil
	}
	if err := dp.maps.SbPodIps.Delete(ip); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete pod ip %s: %w", netToIP4(ip), err)
	}
	return nil
}

// DeletePod removes a pod; removing an absent pod is not an error.
func (dp *Datapath) DeletePod(cgroupID uint64) error {
	var old connectSbPod
	if err := dp.maps.SbPods.Lookup(cgroupID, &old); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("look up pod %d: %w", cgroupID, err)
	}
	if old.Ip4 != 0 {
		if err := dp.deleteIP(old.Ip4, cgroupID); err != nil {
			return err
		}
	}
	if err := dp.maps.SbPods.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete pod %d: %w", cgroupID, err)
	}
	return nil
}

// Pods lists the pods in the map, ordered by cgroup id.
func (dp *Datapath) Pods() ([]Pod, error) {
	var (
		id   uint64
		v    connectSbPod
		pods []Pod
	)
	it := dp.maps.SbPods.Iterate()
	for it.Next(&id, &v) {
		p := Pod{CgroupID: id, Capture: v.Flags&uint32(connectSbPodFlagSB_POD_CAPTURE) != 0}
		if v.Ip4 != 0 {
			p.IPv4 = netToIP4(v.Ip4)
		}
		pods = append(pods, p)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pods: %w", err)
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].CgroupID < pods[j].CgroupID })
	return pods, nil
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
		k connectSbTuple
		v connectSbSock
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

// SplicedSockets counts the sockets in sb_sockhash (two per spliced flow).
func (dp *Datapath) SplicedSockets() (int, error) {
	var (
		k connectSbSockKey
		v uint64
		n int
	)
	it := dp.maps.SbSockhash.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate sockhash: %w", err)
	}
	return n, nil
}

// Stats returns the datapath counters summed over CPUs, by name.
func (dp *Datapath) Stats() (map[string]uint64, error) {
	return readStats(dp.maps.SbStats)
}

// statNames names the counters of enum sb_stat.
var statNames = map[connectSbStat]string{
	connectSbStatSB_STAT_CAPTURED:          "captured",
	connectSbStatSB_STAT_SHORTCUT:          "shortcut",
	connectSbStatSB_STAT_BIND_FAILED:       "bind_failed",
	connectSbStatSB_STAT_STORAGE_FAILED:    "storage_failed",
	connectSbStatSB_STAT_TUPLE_FAILED:      "tuple_failed",
	connectSbStatSB_STAT_ORIGDST_ANSWERED:  "origdst_answered",
	connectSbStatSB_STAT_ORIGDST_UNKNOWN:   "origdst_unknown",
	connectSbStatSB_STAT_PEERNAME_RESTORED: "peername_restored",
	connectSbStatSB_STAT_SPLICE_ADDED:      "splice_added",
	connectSbStatSB_STAT_SPLICE_ADD_FAILED: "splice_add_failed",
	connectSbStatSB_STAT_SPLICE_REDIRECTED: "splice_redirected",
	connectSbStatSB_STAT_SPLICE_PASSED:     "splice_passed",
}

func readStats(m *ebpf.Map) (map[string]uint64, error) {
	out := make(map[string]uint64, len(statNames))
	for i := connectSbStat(0); i < connectSbStatSB_STAT_MAX; i++ {
		var perCPU []uint64
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read counter %d: %w", i, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		name, ok := statNames[i]
		if !ok {
			name = fmt.Sprintf("stat_%d", i)
		}
		out[name] = sum
	}
	return out, nil
}

package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/pkg/sockdiag"
)

// inboundLinksDir is the subdirectory of linksDir holding one pinned
// sk_lookup link per pod network namespace, named after the pod's cgroup
// id.
const inboundLinksDir = "inbound"

// ErrHostNetns is returned when inbound capture is asked for the agent's
// own network namespace: a hostNetwork pod, or a process outside the pod's
// sandbox. Attaching there would capture the node's own traffic.
var ErrHostNetns = errors.New("the node's own network namespace")

func inboundPin(pinDir string, cgroupID uint64) string {
	return filepath.Join(pinDir, linksDir, inboundLinksDir, strconv.FormatUint(cgroupID, 10))
}

// AttachInbound turns inbound capture on for the pod cgroupID, whose
// network namespace is netnsPath (e.g. /proc/PID/ns/net of one of its
// processes): an sk_lookup link on that namespace, pinned as
// links/inbound/<cgroup id>, hands connections to the pod's captured ports
// to its sidecar (bpf/sklookup.c). A link already pinned for the same
// namespace is adopted and updated to this datapath's program; one pinned
// for another namespace (the pod's sandbox was recreated) is replaced. The
// pod must be in the pod map (UpsertPod) for its ports to be captured.
//
// Kernel: sk_lookup 5.9; SO_NETNS_COOKIE 5.14; CAP_SYS_ADMIN to enter the
// namespace.
func (dp *Datapath) AttachInbound(cgroupID uint64, netnsPath string) (err error) {
	prog := dp.coll.Programs[datapathProgSklookupInbound]
	if prog == nil {
		return fmt.Errorf("attach inbound capture for pod %d: inbound capture is off in this datapath", cgroupID)
	}
	ns, err := sockdiag.OpenNetns(netnsPath)
	if err != nil {
		return fmt.Errorf("attach inbound capture for pod %d: %w", cgroupID, err)
	}
	defer ns.Close()
	if host, err := isHostNetns(ns); err != nil {
		return fmt.Errorf("attach inbound capture for pod %d: %w", cgroupID, err)
	} else if host {
		return fmt.Errorf("attach inbound capture for pod %d to %s: %w", cgroupID, netnsPath, ErrHostNetns)
	}
	cookie, err := sockdiag.NetnsCookie(ns.FD())
	if err != nil {
		return fmt.Errorf("attach inbound capture for pod %d: %w", cgroupID, err)
	}

	dp.mu.Lock()
	defer dp.mu.Unlock()
	pin := inboundPin(dp.cfg.PinDir, cgroupID)
	if l, ok := dp.inbound[cgroupID]; ok {
		if ino, err := linkNetnsInode(l); err == nil && ino == ns.Inode {
			return nil // attached already
		}
		// The pod's namespace changed: the old link is defunct or wrong.
		if err := errors.Join(l.Unpin(), l.Close()); err != nil {
			return fmt.Errorf("replace inbound link of pod %d: %w", cgroupID, err)
		}
		delete(dp.inbound, cgroupID)
	}
	// The namespace's cookie first, so that sk_lookup finds the pod's
	// sidecar listener from the first connection on.
	if err := dp.maps.SbPodNetns.Put(cgroupID, cookie); err != nil {
		return fmt.Errorf("attach inbound capture for pod %d: record netns cookie: %w", cgroupID, err)
	}
	l, err := link.AttachNetNs(ns.FD(), prog)
	if err != nil {
		return fmt.Errorf("attach sklookup_inbound to netns %d of pod %d: %w", ns.Inode, cgroupID, err)
	}
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		l.Close()
		return fmt.Errorf("create %s: %w", filepath.Dir(pin), err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return fmt.Errorf("pin inbound link of pod %d: %w", cgroupID, err)
	}
	dp.inbound[cgroupID] = l
	return nil
}

// DetachInbound turns inbound capture off for the pod cgroupID: its
// sk_lookup link is unpinned and closed (the kernel detaches it), then its
// namespace's cookie is forgotten. Detaching a pod without inbound capture
// is not an error.
func (dp *Datapath) DetachInbound(cgroupID uint64) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	var errs []error
	if l, ok := dp.inbound[cgroupID]; ok {
		errs = append(errs, l.Unpin(), l.Close())
		delete(dp.inbound, cgroupID)
	} else if err := removePinnedLink(inboundPin(dp.cfg.PinDir, cgroupID)); err != nil {
		errs = append(errs, err)
	}
	if dp.maps.SbPodNetns != nil {
		errs = append(errs, ignoreNotExist(dp.maps.SbPodNetns.Delete(cgroupID)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach inbound capture of pod %d: %w", cgroupID, err)
	}
	return nil
}

// InboundAttached returns the pods with inbound capture attached, with the
// inode of the network namespace each link is attached to (0 for a link
// whose namespace is gone).
func (dp *Datapath) InboundAttached() map[uint64]uint64 {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	out := make(map[uint64]uint64, len(dp.inbound))
	for id, l := range dp.inbound {
		ino, _ := linkNetnsInode(l)
		out[id] = ino
	}
	return out
}

// adoptInbound takes over the inbound links a previous agent pinned: with
// inbound capture on, each is updated to this datapath's sk_lookup
// program; with it off, each is removed, together with the recorded
// namespace cookies. Links this datapath attached itself are left as they
// are.
func (dp *Datapath) adoptInbound() error {
	dir := filepath.Join(dp.cfg.PinDir, linksDir, inboundLinksDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list inbound links: %w", err)
	}
	prog := dp.coll.Programs[datapathProgSklookupInbound]
	dp.mu.Lock()
	defer dp.mu.Unlock()
	var errs []error
	for _, e := range entries {
		id, perr := strconv.ParseUint(e.Name(), 10, 64)
		pin := filepath.Join(dir, e.Name())
		if perr != nil {
			errs = append(errs, fmt.Errorf("inbound link pin %s: not named after a cgroup id", pin))
			continue
		}
		if _, ok := dp.inbound[id]; ok {
			continue
		}
		if prog == nil {
			errs = append(errs, removePinnedLink(pin))
			if dp.maps.SbPodNetns != nil {
				errs = append(errs, ignoreNotExist(dp.maps.SbPodNetns.Delete(id)))
			}
			continue
		}
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned inbound link %s: %w", pin, err))
			continue
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			errs = append(errs, fmt.Errorf("update pinned inbound link of pod %d: %w", id, err))
			continue
		}
		dp.inbound[id] = l
	}
	return errors.Join(errs...)
}

// removePinnedLink unpins and closes the link pinned at pin, if any.
func removePinnedLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Not a link (or unreadable): remove the pin all the same.
		if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return errors.Join(fmt.Errorf("load pinned link %s: %w", pin, err), rerr)
		}
		return nil
	}
	return errors.Join(l.Unpin(), l.Close())
}

// linkNetnsInode is the inode of the namespace a netns link is attached
// to; 0 once that namespace is gone.
func linkNetnsInode(l link.Link) (uint64, error) {
	info, err := l.Info()
	if err != nil {
		return 0, err
	}
	if n := info.NetNs(); n != nil {
		return uint64(n.NetnsInode), nil
	}
	return 0, fmt.Errorf("link %d is not a netns link", info.ID)
}

// isHostNetns says whether ns is the network namespace the agent itself
// runs in.
func isHostNetns(ns *sockdiag.Netns) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return false, fmt.Errorf("stat the agent's own netns: %w", err)
	}
	return st.Ino == ns.Inode && st.Dev == ns.Dev, nil
}

// SeedListeners puts the inbound listeners a pod's sidecar opened before
// sockops was attached (the agent installed on a node whose pods already
// run, or a fresh sb_listeners after a layout change) into sb_listeners:
// sockops records a listener only at its listen(2). The listening sockets
// on the inbound port in the pod's network namespace (netnsPath) are found
// with sock_diag, the process holding each among pids (the pod's
// processes) through /proc/PID/fd, and a copy of its descriptor is taken
// with pidfd_getfd to update the sockhash; the copy is closed at once, so
// the socket still lives and dies with the sidecar. A family that already
// has a listener recorded is left alone. It returns how many it added.
//
// Kernel: pidfd_open 5.3, pidfd_getfd 5.6; CAP_SYS_PTRACE over the
// sidecar's process.
func (dp *Datapath) SeedListeners(cgroupID uint64, netnsPath string, pids []int) (int, error) {
	if dp.maps.SbListeners == nil {
		return 0, nil // inbound capture off
	}
	ns, err := sockdiag.OpenNetns(netnsPath)
	if err != nil {
		return 0, fmt.Errorf("seed listeners of pod %d: %w", cgroupID, err)
	}
	defer ns.Close()
	cookie, err := sockdiag.NetnsCookie(ns.FD())
	if err != nil {
		return 0, fmt.Errorf("seed listeners of pod %d: %w", cgroupID, err)
	}
	socks, err := sockdiag.Dump(ns.FD(), nil, sockdiag.Options{IncludeWithoutStorage: true})
	if err != nil {
		return 0, fmt.Errorf("seed listeners of pod %d: %w", cgroupID, err)
	}
	want := map[uint32]uint64{} // family (4 or 6) -> socket inode
	for _, s := range socks {
		if s.State != sockdiag.StateListen || s.Local.Port() != dp.cfg.InboundPort || s.Inode == 0 {
			continue
		}
		family := uint32(4)
		if s.Family == sockdiag.IPv6 {
			family = 6
		}
		var have uint64
		if err := dp.maps.SbListeners.Lookup(datapathSbListenerKey{Netns: cookie, Family: family}, &have); err == nil {
			continue
		}
		if _, ok := want[family]; !ok {
			want[family] = s.Inode
		}
	}
	added := 0
	var errs []error
	for family, ino := range want {
		fd, err := stealSocket(pids, ino)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener socket:[%d]: %w", ino, err))
			continue
		}
		err = dp.maps.SbListeners.Update(datapathSbListenerKey{Netns: cookie, Family: family}, uint64(fd), ebpf.UpdateNoExist)
		unix.Close(fd)
		if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			errs = append(errs, fmt.Errorf("record listener socket:[%d]: %w", ino, err))
			continue
		}
		added++
	}
	if err := errors.Join(errs...); err != nil {
		return added, fmt.Errorf("seed listeners of pod %d: %w", cgroupID, err)
	}
	return added, nil
}

// stealSocket returns a copy, in this process, of the descriptor one of
// pids holds for the socket with inode ino.
func stealSocket(pids []int, ino uint64) (int, error) {
	target := fmt.Sprintf("socket:[%d]", ino)
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue // exited, or not ours to read
		}
		for _, e := range entries {
			if l, err := os.Readlink(filepath.Join(dir, e.Name())); err != nil || l != target {
				continue
			}
			n, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			pidfd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
			}
			fd, err := unix.PidfdGetfd(pidfd, n, 0)
			unix.Close(pidfd)
			if err != nil {
				return -1, fmt.Errorf("pidfd_getfd %d/%d (Linux 5.6, CAP_SYS_PTRACE): %w", pid, n, err)
			}
			return fd, nil
		}
	}
	return -1, fmt.Errorf("no process of the pod holds it")
}

// ListenerRecorded says whether sb_listeners holds a listener, of either
// family, for the namespace the pod's inbound capture is attached to.
func (dp *Datapath) ListenerRecorded(cgroupID uint64) bool {
	if dp.maps.SbListeners == nil || dp.maps.SbPodNetns == nil {
		return true // nothing to record
	}
	var cookie, v uint64
	if err := dp.maps.SbPodNetns.Lookup(cgroupID, &cookie); err != nil {
		return false
	}
	for _, family := range []uint32{4, 6} {
		if err := dp.maps.SbListeners.Lookup(datapathSbListenerKey{Netns: cookie, Family: family}, &v); err == nil {
			return true
		}
	}
	return false
}

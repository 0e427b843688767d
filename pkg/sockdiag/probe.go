package sockdiag

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Probe's verdicts, for errors.Is. ErrUnsupported also matches
// ebpf.ErrNotSupported and ErrPermission os.ErrPermission. Any other Probe
// error is a failure of the probe itself.
var (
	// ErrUnsupported: the kernel cannot dump sk storage through sock_diag
	// (before Linux 5.2, or built without CONFIG_BPF_SYSCALL).
	ErrUnsupported = fmt.Errorf("sk storage dump through sock_diag: %w", ebpf.ErrNotSupported)
	// ErrPermission: the process may not use bpf(2) or dump sk storage
	// (needs CAP_BPF or CAP_SYS_ADMIN).
	ErrPermission = fmt.Errorf("sk storage dump through sock_diag: %w", os.ErrPermission)
)

// probeError carries a verdict (ErrUnsupported, ErrPermission or nil) for
// errors.Is without putting its text into the message.
type probeError struct {
	verdict error
	msg     string
	err     error
}

func (e *probeError) Error() string {
	switch {
	case e.err == nil:
		return e.msg
	case e.msg == "":
		return e.err.Error()
	}
	return e.msg + ": " + e.err.Error()
}

func (e *probeError) Unwrap() []error {
	var errs []error
	for _, err := range []error{e.verdict, e.err} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// enotsupp is the kernel-internal ENOTSUPP (524) that bpf(2) leaks.
const enotsupp = syscall.Errno(524)

// classify wraps err, a failure of step ("" if err says it all), with the
// verdict its errno means.
func classify(step string, err error) error {
	var verdict error
	switch {
	case errors.Is(err, ebpf.ErrNotSupported),
		errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, enotsupp),
		errors.Is(err, unix.EPROTONOSUPPORT): // no NETLINK_SOCK_DIAG
		verdict = ErrUnsupported
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		verdict = ErrPermission
	}
	return &probeError{verdict: verdict, msg: step, err: err}
}

// Probe checks that sock_diag returns the sk storage of a socket: it
// listens on 127.0.0.1 (port 0) in the calling thread's network namespace,
// stores a random value for that socket in mapFD from user space (the
// socket's fd as the key), dumps with Dump's request and looks for the
// socket and its value. mapFD must be an sk_storage map of this process;
// the value is gone when Probe returns (it closes the socket).
//
// It returns nil if the value came back. Otherwise errors.Is tells the
// verdict: ErrUnsupported if the kernel lacks a piece (EINVAL, EOPNOTSUPP
// or ENOTSUPP from bpf(2) or sock_diag, no NETLINK_SOCK_DIAG or no TCP
// handler, or a reply without INET_DIAG_SK_BPF_STORAGES for the socket,
// which is what kernels before 5.2 send), ErrPermission for EPERM or
// EACCES (needs CAP_BPF or CAP_SYS_ADMIN), neither for any other failure
// (e.g. mapFD is not an sk_storage map, or the kernel sent another value).
//
// Kernel: Linux 5.2 for both the sock_diag attribute and the user-space
// update of an sk_storage map; map ids (Linux 4.13).
func Probe(mapFD int) error {
	if err := probe(mapFD); err != nil {
		return fmt.Errorf("probe sock_diag sk storage dump: %w", err)
	}
	return nil
}

func probe(mapFD int) error {
	dup, err := unix.FcntlInt(uintptr(mapFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("duplicate map fd %d: %w", mapFD, err)
	}
	m, err := ebpf.NewMapFromFD(dup) // owns dup, even on error
	if err != nil {
		return classify(fmt.Sprintf("inspect map fd %d", mapFD), err)
	}
	defer m.Close()
	if m.Type() != ebpf.SkStorage {
		return fmt.Errorf("map fd %d is a %s map, not sk_storage", mapFD, m.Type())
	}
	info, err := m.Info()
	if err != nil {
		return classify(fmt.Sprintf("map info of fd %d", mapFD), err)
	}
	mapID, ok := info.ID()
	id := uint32(mapID)
	if !ok {
		return fmt.Errorf("map fd %d: kernel reports no map id", mapFD)
	}

	// The listener and the dump must see the same namespace.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open tcp socket: %w", err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return fmt.Errorf("bind 127.0.0.1:0: %w", err)
	}
	if err := unix.Listen(lfd, 1); err != nil {
		return fmt.Errorf("listen on 127.0.0.1: %w", err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		return fmt.Errorf("listening socket's address: %w", err)
	}
	port := uint16(sa.(*unix.SockaddrInet4).Port)
	var st unix.Stat_t
	if err := unix.Fstat(lfd, &st); err != nil {
		return fmt.Errorf("stat listening socket: %w", err)
	}

	value := make([]byte, m.ValueSize())
	if _, err := rand.Read(value); err != nil {
		return fmt.Errorf("random value: %w", err)
	}
	if err := m.Update(uint32(lfd), value, ebpf.UpdateNoExist); err != nil {
		return classify("store a value for a socket in the sk_storage map from user space (Linux 5.2)", err)
	}

	// With the sockets that came without storage, to tell an old kernel
	// (the probe socket has none) from a failure (it is missing).
	socks, err := Dump(CurrentNetns, []int{mapFD}, Options{Protocols: []Protocol{TCP}, Families: []Family{IPv4}, IncludeWithoutStorage: true})
	if errors.Is(err, unix.ENOENT) {
		// No sock_diag handler for TCP (CONFIG_INET_TCP_DIAG).
		return &probeError{verdict: ErrUnsupported, err: err}
	}
	if err != nil {
		return classify("", err)
	}
	return probeVerdict(socks, st.Ino, port, id, value)
}

// probeVerdict looks for the probe's socket (inode, port) in a dump and
// checks that it came with value in map id.
func probeVerdict(socks []Socket, inode uint64, port uint16, id uint32, value []byte) error {
	for _, s := range socks {
		if s.Inode != inode || s.Local.Port() != port {
			continue
		}
		if s.Storage == nil {
			return &probeError{verdict: ErrUnsupported, msg: "kernel sent no sk storage: INET_DIAG_REQ_SK_BPF_STORAGES needs Linux 5.2"}
		}
		got, ok := s.Storage[id]
		if !ok {
			return fmt.Errorf("kernel sent sk storage of map ids %v for the probe socket, not of map %d", mapIDs(s.Storage), id)
		}
		if !bytes.Equal(got, value) {
			return fmt.Errorf("kernel sent value %x for the probe socket, stored %x", got, value)
		}
		return nil
	}
	return fmt.Errorf("the probe's socket 127.0.0.1:%d (inode %d) is missing from the dump of %d sockets", port, inode, len(socks))
}

func mapIDs(m map[uint32][]byte) []uint32 {
	ids := make([]uint32, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	return ids
}

// ProbeSelf is Probe with a temporary sk_storage map it creates (with the
// BTF key and value types the kernel requires for sk_storage maps) and
// removes. Kernel: Linux 5.2 with BTF; on kernels before 5.11 the
// memlock rlimit must allow the map (see rlimit.RemoveMemlock).
func ProbeSelf() error {
	if err := features.HaveMapType(ebpf.SkStorage); err != nil {
		return fmt.Errorf("probe sock_diag sk storage dump: %w", classify("sk_storage maps (Linux 5.2)", err))
	}
	m, err := newStorageMap("sockdiag_probe", 8)
	if err != nil {
		return fmt.Errorf("probe sock_diag sk storage dump: %w", classify("create sk_storage map", err))
	}
	defer m.Close()
	return Probe(m.FD())
}

// newStorageMap creates an sk_storage map with valueSize-byte values. The
// kernel refuses sk_storage maps without BTF for the key (a 32-bit int)
// and the value (bpf_local_storage_map_alloc_check), so the value is
// described as an array of unsigned char.
func newStorageMap(name string, valueSize uint32) (*ebpf.Map, error) {
	u8 := &btf.Int{Name: "unsigned char", Size: 1}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	return ebpf.NewMap(&ebpf.MapSpec{
		Name:      name,
		Type:      ebpf.SkStorage,
		KeySize:   4,
		ValueSize: valueSize,
		Flags:     unix.BPF_F_NO_PREALLOC,
		Key:       &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed},
		Value:     &btf.Array{Index: u32, Type: u8, Nelems: valueSize},
	})
}

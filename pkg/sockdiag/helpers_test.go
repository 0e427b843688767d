package sockdiag

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
)

// requireRoot skips a test that needs root, or fails it under CI.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true and the test needs root")
		}
		t.Skip("needs root (set CI=true to make this a failure)")
	}
}

// testMap creates an sk_storage map closed at cleanup and returns it with
// its id.
func testMap(t *testing.T, valueSize uint32) (*ebpf.Map, uint32) {
	t.Helper()
	m, err := newStorageMap("sockdiag_test", valueSize)
	if err != nil {
		t.Fatalf("create sk_storage map: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("no map id")
	}
	return m, uint32(id)
}

// store sets the socket fd's value in the sk_storage map from user space.
func store(t *testing.T, m *ebpf.Map, fd int, value []byte) {
	t.Helper()
	if err := m.Update(uint32(fd), value, ebpf.UpdateNoExist); err != nil {
		t.Fatalf("store value for socket fd %d: %v", fd, err)
	}
}

func loopback(f Family) netip.Addr {
	if f == IPv6 {
		return netip.IPv6Loopback()
	}
	return netip.MustParseAddr("127.0.0.1")
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// fds collects the sockets a helper opens so that the test can close
// them; helpers return errors because they may run on another thread.
type fds []int

func (f *fds) closeAll() {
	for _, fd := range *f {
		unix.Close(fd)
	}
	*f = nil
}

func (f *fds) socket(family Family, typ int) (int, error) {
	fd, err := unix.Socket(int(family), typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	*f = append(*f, fd)
	return fd, nil
}

// tcpPair opens a listener on the family's loopback address and a
// connection to it: listener, client, accepted server socket.
func (f *fds) tcpPair(family Family) (l, c, s int, err error) {
	if l, err = f.socket(family, unix.SOCK_STREAM); err != nil {
		return
	}
	if err = unix.Bind(l, sockaddr(netip.AddrPortFrom(loopback(family), 0))); err != nil {
		return -1, -1, -1, fmt.Errorf("bind: %w", err)
	}
	if err = unix.Listen(l, 64); err != nil {
		return -1, -1, -1, fmt.Errorf("listen: %w", err)
	}
	sa, err := unix.Getsockname(l)
	if err != nil {
		return -1, -1, -1, err
	}
	if c, err = f.socket(family, unix.SOCK_STREAM); err != nil {
		return
	}
	if err = unix.Connect(c, sa); err != nil {
		return -1, -1, -1, fmt.Errorf("connect: %w", err)
	}
	if s, _, err = unix.Accept4(l, unix.SOCK_CLOEXEC); err != nil {
		return -1, -1, -1, fmt.Errorf("accept: %w", err)
	}
	*f = append(*f, s)
	return l, c, s, nil
}

// listener opens a TCP socket listening on the family's loopback address.
func (f *fds) listener(family Family) (int, error) {
	fd, err := f.socket(family, unix.SOCK_STREAM)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(loopback(family), 0))); err != nil {
		return -1, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}

// withCookies keeps the sockets of a dump that are the given fds.
func withCookies(t *testing.T, socks []Socket, fds ...int) []Socket {
	t.Helper()
	keep := make(map[uint64]bool)
	for _, fd := range fds {
		keep[must(unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE))(t)] = true
	}
	var out []Socket
	for _, s := range socks {
		if keep[s.Cookie] {
			out = append(out, s)
		}
	}
	return out
}

// udp opens a UDP socket bound to the family's loopback address.
func (f *fds) udp(family Family) (int, error) {
	fd, err := f.socket(family, unix.SOCK_DGRAM)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(loopback(family), 0))); err != nil {
		return -1, fmt.Errorf("bind: %w", err)
	}
	return fd, nil
}

// must(f())(t) is f's value, or fails t with f's error.
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// netnsThread is an OS thread alone in a fresh, unnamed network namespace
// (unshare(CLONE_NEWNET)) with loopback up; run executes functions on it,
// so that the sockets they open belong to that namespace. At cleanup the
// thread returns to its namespace (or, failing that, its goroutine exits
// locked and the runtime discards it); the new namespace goes away with
// its last socket.
type netnsThread struct {
	ns   *Netns
	work chan func()
	done chan error
}

func newNetnsThread(t *testing.T) *netnsThread {
	t.Helper()
	h := &netnsThread{work: make(chan func()), done: make(chan error, 1)}
	ready := make(chan error)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(threadNetnsPath(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ready <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // still in its own namespace
			ready <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		ns, err := OpenNetns(threadNetnsPath())
		if err == nil {
			h.ns = ns
			err = loopbackUp()
		}
		ready <- err
		if err == nil {
			for f := range h.work {
				f()
			}
		}
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			h.done <- fmt.Errorf("restore the thread's netns: %w", err)
			return // locked: the runtime discards the thread
		}
		runtime.UnlockOSThread()
		h.done <- nil
	}()
	if err := <-ready; err != nil {
		if h.ns != nil {
			h.ns.Close()
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(h.work)
		if err := <-h.done; err != nil {
			t.Error(err)
		}
		h.ns.Close()
	})
	return h
}

// hostNetns is the inode of the namespace the test's threads are in. Not
// /proc/self/ns/net: that is the main thread's, and a netnsThread may have
// been the main thread.
func hostNetns(t *testing.T) uint64 {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return nsInode(t, threadNetnsPath())
}

func (h *netnsThread) run(f func() error) error {
	errc := make(chan error)
	h.work <- func() { errc <- f() }
	return <-errc
}

// loopbackUp sets lo up in the calling thread's namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// nsInode is the inode of the namespace file at path.
func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// ownCgroupID is the cgroup v2 id of this process, 0 if there is no
// cgroup2 mount.
func ownCgroupID(t *testing.T) uint64 {
	t.Helper()
	root, err := cgroups.Root()
	if err != nil {
		return 0
	}
	id, err := cgroups.ID(filepath.Join(root, ownCgroupPath(t)))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// ownCgroupPath is this process's cgroup v2 path ("0::" in
// /proc/self/cgroup).
func ownCgroupPath(t *testing.T) string {
	t.Helper()
	f := must(os.Open("/proc/self/cgroup"))(t)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p
		}
	}
	t.Fatal("no cgroup v2 line in /proc/self/cgroup")
	return ""
}

// want is a socket a dump must return, described by the test's fd for it.
type want struct {
	name    string
	fd      int
	proto   Protocol
	state   State
	netns   uint64
	cgroup  uint64 // 0: any non-zero id
	storage map[uint32][]byte
}

// checkDump fails t unless got holds exactly the wanted sockets (matched
// by cookie), each with every field right.
func checkDump(t *testing.T, got []Socket, wants ...want) {
	t.Helper()
	if len(wants) == 0 {
		t.Fatal("checkDump without wanted sockets")
	}
	byCookie := make(map[uint64]Socket)
	for _, s := range got {
		if _, dup := byCookie[s.Cookie]; dup {
			t.Errorf("socket cookie %d twice in the dump", s.Cookie)
		}
		byCookie[s.Cookie] = s
	}
	seen := make(map[uint64]bool)
	for _, w := range wants {
		cookie, err := unix.GetsockoptUint64(w.fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err != nil {
			t.Fatalf("%s: SO_COOKIE: %v", w.name, err)
		}
		seen[cookie] = true
		s, ok := byCookie[cookie]
		if !ok {
			t.Errorf("%s (cookie %d) is missing from the dump", w.name, cookie)
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(w.fd, &st); err != nil {
			t.Fatal(err)
		}
		local := addrPort(must(unix.Getsockname(w.fd))(t))
		var remote netip.AddrPort
		if sa, err := unix.Getpeername(w.fd); err == nil {
			remote = addrPort(sa)
		} else if local.Addr().Is4() {
			remote = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		} else {
			remote = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
		}
		family := IPv4
		if local.Addr().Is6() {
			family = IPv6
		}
		nsCookie := must(unix.GetsockoptUint64(w.fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE))(t)

		check := func(field string, got, want any) {
			if got != want {
				t.Errorf("%s: %s = %v, want %v", w.name, field, got, want)
			}
		}
		check("family", s.Family, family)
		check("protocol", s.Protocol, w.proto)
		check("state", s.State, w.state)
		check("local", s.Local, local)
		check("remote", s.Remote, remote)
		check("inode", s.Inode, st.Ino)
		check("uid", s.UID, uint32(0))
		check("netns inode", s.NetnsInode, w.netns)
		check("netns cookie", s.NetnsCookie, nsCookie)
		check("interface", s.Interface, uint32(0))
		check("truncated", s.Truncated, false)
		if w.cgroup != 0 {
			check("cgroup id", s.CgroupID, w.cgroup)
		} else if s.CgroupID == 0 {
			t.Errorf("%s: no cgroup id", w.name)
		}
		if len(s.Storage) != len(w.storage) || !maps.EqualFunc(s.Storage, w.storage, bytes.Equal) {
			t.Errorf("%s: storage %s, want %s", w.name, fmtStorage(s.Storage), fmtStorage(w.storage))
		}
	}
	for _, s := range got {
		if !seen[s.Cookie] {
			t.Errorf("unexpected socket in the dump: %+v", s)
		}
	}
	if len(got) != len(wants) {
		t.Errorf("dump has %d sockets, want %d", len(got), len(wants))
	}
}

func fmtStorage(m map[uint32][]byte) string {
	var b strings.Builder
	for _, id := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "[map %d: %x]", id, m[id])
	}
	return b.String()
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	return len(must(os.ReadDir("/proc/self/fd"))(t))
}

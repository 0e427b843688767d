package sockdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/cgroups"
)

// TestDumpCurrentNetns stores values for some TCP and UDP sockets of both
// families in two maps and checks that each dump returns exactly those
// sockets of the requested maps, protocols and families.
func TestDumpCurrentNetns(t *testing.T) {
	requireRoot(t)
	a, idA := testMap(t, 8)
	b, idB := testMap(t, 16)
	host := hostNetns(t)
	cg := ownCgroupID(t)

	var f fds
	t.Cleanup(f.closeAll)
	l4, c4, s4 := must3(t)(f.tcpPair(IPv4))
	l6, c6, s6 := must3(t)(f.tcpPair(IPv6))
	u4 := must(f.udp(IPv4))(t)
	u6 := must(f.udp(IPv6))(t)

	vC4, vS4, vS4b, vL6, vU4, vU6 := val(8, 1), val(8, 2), val(16, 3), val(8, 4), val(8, 5), val(16, 6)
	store(t, a, c4, vC4)
	store(t, a, s4, vS4)
	store(t, b, s4, vS4b)
	store(t, a, l6, vL6)
	store(t, a, u4, vU4)
	store(t, b, u6, vU6)
	_, _ = c6, s6 // no storage: must not be listed

	both := []int{a.FD(), b.FD()}
	c4w := want{name: "tcp4 client", fd: c4, proto: TCP, state: StateEstablished, netns: host, cgroup: cg,
		storage: map[uint32][]byte{idA: vC4}}
	s4w := want{name: "tcp4 server", fd: s4, proto: TCP, state: StateEstablished, netns: host, cgroup: cg,
		storage: map[uint32][]byte{idA: vS4, idB: vS4b}}
	l6w := want{name: "tcp6 listener", fd: l6, proto: TCP, state: StateListen, netns: host, cgroup: cg,
		storage: map[uint32][]byte{idA: vL6}}
	u4w := want{name: "udp4", fd: u4, proto: UDP, state: StateClose, netns: host, cgroup: cg,
		storage: map[uint32][]byte{idA: vU4}}
	u6w := want{name: "udp6", fd: u6, proto: UDP, state: StateClose, netns: host, cgroup: cg,
		storage: map[uint32][]byte{idB: vU6}}

	t.Run("tcp both maps", func(t *testing.T) {
		checkDump(t, must(Dump(CurrentNetns, both, Options{}))(t), c4w, s4w, l6w)
	})
	t.Run("tcp one map", func(t *testing.T) {
		only := s4w
		only.storage = map[uint32][]byte{idB: vS4b}
		checkDump(t, must(Dump(CurrentNetns, []int{b.FD()}, Options{}))(t), only)
	})
	t.Run("udp", func(t *testing.T) {
		// The kernel sends no storage for UDP sockets (inet_sk_diag_fill
		// stops early for sockets without inet_connection_sock), so a
		// UDP dump lists them only with IncludeWithoutStorage, and
		// without their storage.
		if socks := must(Dump(CurrentNetns, both, Options{Protocols: []Protocol{UDP}}))(t); len(socks) != 0 {
			t.Fatalf("udp sockets with storage: %+v", socks)
		}
		all := must(Dump(CurrentNetns, both, Options{Protocols: []Protocol{UDP}, IncludeWithoutStorage: true}))(t)
		ours := withCookies(t, all, u4, u6)
		u4w.storage, u6w.storage = nil, nil
		checkDump(t, ours, u4w, u6w)
		for _, s := range ours {
			if s.Storage != nil {
				t.Errorf("udp socket %s came with storage %x", s.Local, s.Storage)
			}
		}
	})
	t.Run("tcp and udp ipv4", func(t *testing.T) {
		socks := must(Dump(CurrentNetns, both, Options{Protocols: []Protocol{TCP, UDP}, Families: []Family{IPv4}}))(t)
		checkDump(t, socks, c4w, s4w)
	})
	t.Run("include sockets without storage", func(t *testing.T) {
		all := must(Dump(CurrentNetns, both, Options{Families: []Family{IPv4}, IncludeWithoutStorage: true}))(t)
		l4w := want{name: "tcp4 listener", fd: l4, proto: TCP, state: StateListen, netns: host, cgroup: cg}
		checkDump(t, withCookies(t, all, l4, c4, s4), l4w, c4w, s4w)
	})
	t.Run("ipv6 only", func(t *testing.T) {
		checkDump(t, must(Dump(CurrentNetns, both, Options{Families: []Family{IPv6}}))(t), l6w)
	})
	t.Run("through a netns fd", func(t *testing.T) {
		runtime.LockOSThread()
		ns, err := OpenNetns(threadNetnsPath())
		runtime.UnlockOSThread()
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		if ns.Inode != host {
			t.Fatalf("inode %d, want %d", ns.Inode, host)
		}
		checkDump(t, must(Dump(ns.FD(), both, Options{}))(t), c4w, s4w, l6w)
	})

	t.Run("request errors", func(t *testing.T) {
		hash, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer hash.Close()
		closed := 1 << 20 // above what the process opens, and below the fd limit
		for _, c := range []struct {
			name  string
			fds   []int
			errno syscall.Errno
		}{
			{"not sk_storage", []int{a.FD(), hash.FD()}, unix.EINVAL},
			{"map twice", []int{a.FD(), a.FD()}, unix.EEXIST},
			{"closed fd", []int{closed}, unix.EBADF},
		} {
			_, err := Dump(CurrentNetns, c.fds, Options{})
			if !errors.Is(err, c.errno) {
				t.Errorf("%s: err = %v, want %v", c.name, err, c.errno)
			} else {
				t.Logf("%s: %v", c.name, err)
			}
		}
		if _, err := Dump(-2, both, Options{}); err == nil {
			t.Error("netns fd -2 accepted")
		}
		if _, err := Dump(hash.FD(), both, Options{}); err == nil {
			t.Error("a map fd accepted as netns")
		}
	})
}

func must3(t *testing.T) func(a, b, c int, err error) (int, int, int) {
	return func(a, b, c int, err error) (int, int, int) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b, c
	}
}

// val is a value of n bytes that differs with seed.
func val(n int, seed byte) []byte {
	v := make([]byte, n)
	for i := range v {
		v[i] = seed*31 + byte(i)
	}
	return v
}

// TestDumpOtherNetns puts sockets with storage into an unnamed namespace
// held by one thread, a named one (ip netns add) and the host's, and
// checks Dump of each, Namespaces, and DumpAll with its netns tags.
func TestDumpOtherNetns(t *testing.T) {
	requireRoot(t)
	testutil.RequirePrivileged(t)
	a, idA := testMap(t, 8)
	b, idB := testMap(t, 16)
	host := hostNetns(t)

	var f fds
	t.Cleanup(f.closeAll)

	// Host: one socket with storage, one without.
	hl, hc, _ := must3(t)(f.tcpPair(IPv4))
	vH := val(8, 10)
	store(t, a, hc, vH)
	_ = hl

	// Unnamed namespace X, only reachable through its thread.
	x := newNetnsThread(t)
	var xl, xc, xs, xl6 int
	if err := x.run(func() (err error) {
		if xl, xc, xs, err = f.tcpPair(IPv4); err != nil {
			return err
		}
		xl6, err = f.listener(IPv6)
		return err
	}); err != nil {
		t.Fatalf("sockets in the unnamed netns: %v", err)
	}
	vXC, vXS, vXL6 := val(8, 11), val(16, 12), val(8, 13)
	store(t, a, xc, vXC)
	store(t, b, xs, vXS)
	store(t, a, xl6, vXL6)
	_ = xl

	// Named namespace Y under /run/netns.
	name := "sockdiag-" + testutil.RandomSuffix()
	testutil.NewNetns(t, name)
	y := must(OpenNetns("/run/netns/" + name))(t)
	t.Cleanup(func() { y.Close() })
	var yu, yl int
	if err := inNetns(y.FD(), func() (err error) {
		if yu, err = f.udp(IPv4); err != nil {
			return err
		}
		yl, err = f.listener(IPv4)
		return err
	}); err != nil {
		t.Fatalf("sockets in the named netns: %v", err)
	}
	vYL := val(8, 14)
	store(t, a, yl, vYL)
	store(t, a, yu, val(8, 15)) // udp: never reported

	both := []int{a.FD(), b.FD()}
	hw := want{name: "host client", fd: hc, proto: TCP, state: StateEstablished, netns: host,
		storage: map[uint32][]byte{idA: vH}}
	xcw := want{name: "netns X client", fd: xc, proto: TCP, state: StateEstablished, netns: x.ns.Inode,
		storage: map[uint32][]byte{idA: vXC}}
	xsw := want{name: "netns X server", fd: xs, proto: TCP, state: StateEstablished, netns: x.ns.Inode,
		storage: map[uint32][]byte{idB: vXS}}
	xl6w := want{name: "netns X tcp6 listener", fd: xl6, proto: TCP, state: StateListen, netns: x.ns.Inode,
		storage: map[uint32][]byte{idA: vXL6}}
	ylw := want{name: "netns Y listener", fd: yl, proto: TCP, state: StateListen, netns: y.Inode,
		storage: map[uint32][]byte{idA: vYL}}

	t.Run("dump unnamed", func(t *testing.T) {
		checkDump(t, must(Dump(x.ns.FD(), both, Options{}))(t), xcw, xsw, xl6w)
	})
	t.Run("dump unnamed, every map", func(t *testing.T) {
		// Nothing else lives in X, so every map's storage is ours.
		checkDump(t, must(Dump(x.ns.FD(), nil, Options{}))(t), xcw, xsw, xl6w)
	})
	t.Run("dump named", func(t *testing.T) {
		checkDump(t, must(Dump(y.FD(), both, Options{Protocols: []Protocol{TCP, UDP}}))(t), ylw)
	})
	t.Run("namespaces", func(t *testing.T) {
		nss, err := Namespaces()
		defer func() {
			for _, ns := range nss {
				ns.Close()
			}
		}()
		if err != nil {
			t.Fatal(err)
		}
		found := make(map[uint64]*Netns)
		for _, ns := range nss {
			if found[ns.Inode] != nil {
				t.Errorf("netns %d twice: %s and %s", ns.Inode, found[ns.Inode].Path, ns.Path)
			}
			found[ns.Inode] = ns
			if got := nsInode(t, fmt.Sprintf("/proc/self/fd/%d", ns.FD())); got != ns.Inode {
				t.Errorf("%s: fd is netns %d", ns, got)
			}
		}
		for _, w := range []struct {
			what  string
			inode uint64
			name  string
		}{{"host", host, ""}, {"unnamed", x.ns.Inode, ""}, {"named", y.Inode, name}} {
			ns := found[w.inode]
			if ns == nil {
				t.Errorf("%s netns %d not found among %d", w.what, w.inode, len(nss))
				continue
			}
			if ns.Name != w.name {
				t.Errorf("%s netns: name %q, want %q", w.what, ns.Name, w.name)
			}
		}
		if xs := found[x.ns.Inode]; xs != nil && !strings.Contains(xs.Path, fmt.Sprintf("/proc/%d/task/", os.Getpid())) {
			t.Errorf("unnamed netns found at %s, want this process's thread", xs.Path)
		}
	})
	t.Run("dump all", func(t *testing.T) {
		socks, err := DumpAll(both, Options{Protocols: []Protocol{TCP, UDP}})
		if err != nil {
			t.Fatal(err)
		}
		checkDump(t, socks, hw, xcw, xsw, xl6w, ylw)
	})
	t.Run("threads restored", func(t *testing.T) {
		// Every thread but X's is back in the host namespace.
		tasks := must(os.ReadDir("/proc/self/task"))(t)
		inX := 0
		for _, task := range tasks {
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join("/proc/self/task", task.Name(), "ns/net"), &st); err != nil {
				continue // exited
			}
			switch st.Ino {
			case host:
			case x.ns.Inode:
				inX++
			default:
				t.Errorf("thread %s is in netns %d", task.Name(), st.Ino)
			}
		}
		if inX != 1 {
			t.Errorf("%d threads in netns X, want 1", inX)
		}
	})
}

// TestDumpLargeValues makes each socket's reply bigger than the 32 KiB
// receive buffer, so that the kernel grows its dump buffer and the reader
// grows its own on MSG_TRUNC.
func TestDumpLargeValues(t *testing.T) {
	requireRoot(t)
	// 3 x 15000 bytes make each reply larger than 32 KiB, and stay below
	// net.core.optmem_max (128 KiB), which caps a socket's storage.
	const size = 15000
	var ms []*ebpf.Map
	var ids []uint32
	for range 3 {
		m, id := testMap(t, size)
		ms, ids = append(ms, m), append(ids, id)
	}
	host := hostNetns(t)
	var f fds
	t.Cleanup(f.closeAll)
	var wants []want
	for i := range 2 {
		_, c, s := must3(t)(f.tcpPair(IPv4))
		for j, fd := range []int{c, s} {
			w := want{name: fmt.Sprintf("pair %d socket %d", i, j), fd: fd, proto: TCP, state: StateEstablished,
				netns: host, storage: map[uint32][]byte{}}
			for k, m := range ms {
				v := val(size, byte(10*i+3*j+k))
				store(t, m, fd, v)
				w.storage[ids[k]] = v
			}
			wants = append(wants, w)
		}
	}
	mapFDs := []int{ms[0].FD(), ms[1].FD(), ms[2].FD()}
	checkDump(t, must(Dump(CurrentNetns, mapFDs, Options{Families: []Family{IPv4}}))(t), wants...)

	// The reader's buffer must have grown past one socket's reply.
	c, _, err := dialNetns(CurrentNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := 0
	if err := c.dump(IPv4, TCP, mapFDs, func(p []byte) error {
		if s, has, err := parseSocket(p, TCP); err == nil && has && len(s.Storage) == 3 {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != len(wants) || len(c.buf) < 3*size {
		t.Errorf("%d sockets with 3 storages, buffer %d bytes; want %d, >= %d", n, len(c.buf), len(wants), 3*size)
	}
}

// TestDumpManySockets spreads a dump over many datagrams.
func TestDumpManySockets(t *testing.T) {
	requireRoot(t)
	m, id := testMap(t, 8)
	var f fds
	t.Cleanup(f.closeAll)
	want := make(map[uint64]bool) // cookies
	for range 300 {
		_, c, s := must3(t)(f.tcpPair(IPv4))
		for _, fd := range []int{c, s} {
			cookie := must(unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE))(t)
			store(t, m, fd, binary.LittleEndian.AppendUint64(nil, cookie))
			want[cookie] = true
		}
	}
	socks := must(Dump(CurrentNetns, []int{m.FD()}, Options{}))(t)
	if len(socks) != len(want) {
		t.Fatalf("%d sockets, want %d", len(socks), len(want))
	}
	for _, s := range socks {
		if !want[s.Cookie] {
			t.Fatalf("unexpected socket %+v", s)
		}
		delete(want, s.Cookie)
		if got := s.Storage[id]; len(s.Storage) != 1 || binary.LittleEndian.Uint64(got) != s.Cookie {
			t.Fatalf("socket %d: storage %x", s.Cookie, s.Storage)
		}
	}
}

// TestDumpCgroupID creates a socket while this process sits in a child
// cgroup, and checks INET_DIAG_CGROUP_ID against that cgroup's id.
func TestDumpCgroupID(t *testing.T) {
	requireRoot(t)
	if _, err := cgroups.Root(); err != nil {
		testutil.Unavailable(t, "no cgroup2 mount: %v", err)
	}
	m, id := testMap(t, 8)
	cg := testutil.TestCgroup(t)
	cgID := testutil.CgroupID(t, cg)
	root := must(cgroups.Root())(t)
	orig := filepath.Join(root, ownCgroupPath(t))
	pid := []byte(fmt.Sprint(os.Getpid()))

	var f fds
	t.Cleanup(f.closeAll)
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), pid, 0); err != nil {
		t.Fatalf("move into %s: %v", cg, err)
	}
	fd, err := f.listener(IPv4)
	// Back before anything can fail: the cgroup's cleanup kills what is
	// left in it.
	if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), pid, 0); err != nil {
		t.Fatalf("move back into %s: %v", orig, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	v := val(8, 20)
	store(t, m, fd, v)
	socks := must(Dump(CurrentNetns, []int{m.FD()}, Options{Families: []Family{IPv4}}))(t)
	checkDump(t, socks, want{name: "listener made in a child cgroup", fd: fd, proto: TCP, state: StateListen,
		netns: hostNetns(t), cgroup: cgID, storage: map[uint32][]byte{id: v}})
	if cgID == ownCgroupID(t) {
		t.Fatalf("child cgroup id %d equals this process's", cgID)
	}
}

// TestDumpAllNoFDLeak checks that Namespaces, DumpAll and ProbeSelf close
// everything they open, in a setup with another namespace to enter.
func TestDumpAllNoFDLeak(t *testing.T) {
	requireRoot(t)
	m, _ := testMap(t, 8)
	x := newNetnsThread(t)
	var f fds
	t.Cleanup(f.closeAll)
	var xc int
	if err := x.run(func() (err error) { _, xc, _, err = f.tcpPair(IPv4); return err }); err != nil {
		t.Fatal(err)
	}
	store(t, m, xc, val(8, 30))

	dumpAll := func() {
		socks, err := DumpAll([]int{m.FD()}, Options{Protocols: []Protocol{TCP, UDP}})
		if err != nil {
			t.Fatal(err)
		}
		if len(socks) != 1 || socks[0].NetnsInode != x.ns.Inode {
			t.Fatalf("DumpAll: %+v, want the one socket in netns %d", socks, x.ns.Inode)
		}
	}
	dumpAll() // let the runtime open what it keeps (epoll and the like)
	before := openFDs(t)
	for range 3 {
		dumpAll()
		nss, err := Namespaces()
		if err != nil {
			t.Fatal(err)
		}
		for _, ns := range nss {
			ns.Close()
		}
		if err := ProbeSelf(); err != nil {
			t.Fatal(err)
		}
		if _, err := Dump(CurrentNetns, []int{1 << 20}, Options{}); !errors.Is(err, unix.EBADF) {
			t.Fatalf("a map fd that is not open: %v", err)
		}
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d fds open before, %d after", before, after)
	}
}

// TestProbe runs the probe on this kernel, which has everything (6.x).
func TestProbe(t *testing.T) {
	requireRoot(t)
	if err := ProbeSelf(); err != nil {
		t.Fatalf("ProbeSelf: %v", err)
	}
	m, _ := testMap(t, 24)
	if err := Probe(m.FD()); err != nil {
		t.Fatalf("Probe: %v", err)
	}
	hash, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer hash.Close()
	err = Probe(hash.FD())
	if err == nil || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrPermission) {
		t.Errorf("Probe of a hash map: %v, want a plain failure", err)
	}
	t.Logf("hash map: %v", err)
}

// TestUnprivileged runs Dump and Probe as nobody (a copy of the test binary
// started with uid 65534 and the map fd as fd 3) and checks the kernel's
// EPERM and Probe's verdict.
func TestUnprivileged(t *testing.T) {
	requireRoot(t)
	m, _ := testMap(t, 8)
	dir := testutil.ReadableTempDir(t, "sockdiag-test-")
	bin := filepath.Join(dir, "sockdiag.test")
	exe := must(os.ReadFile("/proc/self/exe"))(t)
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	mapFile := os.NewFile(uintptr(must(unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0))(t)), "map")
	defer mapFile.Close()

	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), helperEnv+"=unprivileged")
	cmd.ExtraFiles = []*os.File{mapFile}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	t.Logf("helper output:\n%s", out)
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	for _, line := range []string{"dump EPERM true", "probe permission true", "probe unsupported false"} {
		if !bytes.Contains(out, []byte(line+"\n")) {
			t.Errorf("helper did not report %q", line)
		}
	}
}

const helperEnv = "SOCKDIAG_TEST_HELPER"

// unprivilegedHelper is TestUnprivileged's other side, run from TestMain.
func unprivilegedHelper() {
	if os.Geteuid() == 0 {
		fmt.Println("still root")
		os.Exit(2)
	}
	_, err := Dump(CurrentNetns, []int{3}, Options{})
	fmt.Printf("dump: %v\n", err)
	fmt.Printf("dump EPERM %v\n", errors.Is(err, unix.EPERM))
	err = Probe(3)
	fmt.Printf("probe: %v\n", err)
	fmt.Printf("probe permission %v\n", errors.Is(err, ErrPermission))
	fmt.Printf("probe unsupported %v\n", errors.Is(err, ErrUnsupported))
}

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "unprivileged" {
		unprivilegedHelper()
		os.Exit(0)
	}
	testutil.Main(m, "sockdiag")
}

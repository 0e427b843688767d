package sockdiag

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// Netns is an open network namespace.
type Netns struct {
	// Inode and Dev identify the namespace: the nsfs file's inode and
	// device (net:[Inode] in /proc/PID/ns/net).
	Inode uint64
	Dev   uint64
	// Path is where the namespace was found first, e.g.
	// /run/netns/NAME or /proc/PID/task/TID/ns/net.
	Path string
	// Name is the namespace's name under /run/netns (ip netns), "" if
	// it has none there.
	Name string

	fd int
}

// FD returns the namespace's file descriptor, for Dump or setns(2). It is
// valid until Close.
func (n *Netns) FD() int { return n.fd }

// Close closes the namespace's file descriptor. It is safe to call twice.
func (n *Netns) Close() error {
	if n == nil || n.fd < 0 {
		return nil
	}
	err := unix.Close(n.fd)
	n.fd = -1
	return err
}

func (n *Netns) String() string {
	if n.Name != "" {
		return fmt.Sprintf("netns %d (%s)", n.Inode, n.Name)
	}
	return fmt.Sprintf("netns %d (%s)", n.Inode, n.Path)
}

// errNotNetns marks a file that is not a network namespace.
var errNotNetns = errors.New("not a network namespace")

// OpenNetns opens the network namespace file at path: /proc/PID/ns/net,
// /proc/PID/task/TID/ns/net, a bind mount such as /run/netns/NAME, or
// /proc/self/fd/N. It fails for a file that is not a network namespace.
func OpenNetns(path string) (*Netns, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("statfs netns %s: %w", path, err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return nil, fmt.Errorf("open netns %s: %w (not on nsfs)", path, errNotNetns)
	}
	// NS_GET_NSTYPE: Linux 4.11; without it, trust the path.
	if typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err == nil && typ != unix.CLONE_NEWNET {
		unix.Close(fd)
		return nil, fmt.Errorf("open netns %s: %w (namespace type %#x)", path, errNotNetns, typ)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat netns %s: %w", path, err)
	}
	return &Netns{Inode: st.Ino, Dev: st.Dev, Path: path, fd: fd}, nil
}

// Namespaces opens every distinct network namespace on the host that a
// process, a thread or an ip-netns bind mount holds: those of
// /proc/*/task/*/ns/net (every thread, since a thread can setns alone) and
// /run/netns/*, deduplicated by device and inode. It is
// NamespacesAt("/proc", "/run/netns").
//
// A namespace that is only held by open file descriptors, sockets or bind
// mounts elsewhere is not found. Processes and threads that exit during
// the walk and entries that cannot be read (EACCES, EPERM) are skipped.
// Other failures are returned, joined, along with the namespaces that
// could be opened: the caller must Close every returned Netns even when
// the error is not nil. Needs read access to other processes' /proc
// entries (root, or CAP_SYS_PTRACE).
func Namespaces() ([]*Netns, error) {
	return NamespacesAt("/proc", "/run/netns")
}

// NamespacesAt is Namespaces with another procfs mount (e.g. the host's
// /proc mounted into a container) and other directories of namespace bind
// mounts (e.g. /run/netns, /var/run/docker/netns). Bind mount directories
// come first, so a namespace found there gets its Name. A missing
// directory is not an error; an unreadable procDir is.
func NamespacesAt(procDir string, netnsDirs ...string) ([]*Netns, error) {
	w := nsWalker{seen: make(map[nsKey]*Netns)}
	for _, dir := range netnsDirs {
		names, err := readDirNames(dir)
		if err != nil {
			w.fail(dir, err)
			continue
		}
		for _, name := range names {
			w.add(filepath.Join(dir, name), name)
		}
	}
	pids, err := readDirNumbers(procDir)
	if err != nil {
		w.closeAll()
		return nil, fmt.Errorf("list processes in %s: %w", procDir, err)
	}
	for _, pid := range pids {
		taskDir := filepath.Join(procDir, pid, "task")
		tids, err := readDirNumbers(taskDir)
		if err != nil {
			w.fail(taskDir, err)
			continue
		}
		for _, tid := range tids {
			w.add(filepath.Join(taskDir, tid, "ns", "net"), "")
		}
	}
	return w.list, errors.Join(w.errs...)
}

type nsKey struct{ dev, ino uint64 }

type nsWalker struct {
	seen map[nsKey]*Netns
	list []*Netns
	errs []error
}

// add opens the namespace at path unless it was seen: a stat of the magic
// link tells its identity without opening it.
func (w *nsWalker) add(path, name string) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		w.fail(path, err)
		return
	}
	if n := w.seen[nsKey{st.Dev, st.Ino}]; n != nil {
		return
	}
	n, err := OpenNetns(path)
	if err != nil {
		w.fail(path, err)
		return
	}
	// The thread may have switched namespaces between stat and open.
	if w.seen[nsKey{n.Dev, n.Inode}] != nil {
		n.Close()
		return
	}
	n.Name = name
	w.seen[nsKey{n.Dev, n.Inode}] = n
	w.list = append(w.list, n)
}

// fail records err unless it says the entry vanished (ENOENT, ESRCH), may
// not be read (EACCES, EPERM) or is no network namespace (a stale
// /run/netns file whose mount is gone).
func (w *nsWalker) fail(path string, err error) {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESRCH),
		errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM),
		errors.Is(err, errNotNetns):
		return
	}
	w.errs = append(w.errs, fmt.Errorf("%s: %w", path, err))
}

func (w *nsWalker) closeAll() {
	for _, n := range w.list {
		n.Close()
	}
	w.list = nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// readDirNumbers returns the numeric names in dir (pids, tids) in
// ascending order, so that the walk meets init and long-lived processes
// first.
func readDirNumbers(dir string) ([]string, error) {
	names, err := readDirNames(dir)
	if err != nil {
		return nil, err
	}
	type entry struct {
		n    uint64
		name string
	}
	nums := make([]entry, 0, len(names))
	for _, name := range names {
		if n, err := strconv.ParseUint(name, 10, 64); err == nil {
			nums = append(nums, entry{n, name})
		}
	}
	slices.SortFunc(nums, func(a, b entry) int { return cmp.Compare(a.n, b.n) })
	out := make([]string, len(nums))
	for i, e := range nums {
		out[i] = e.name
	}
	return out, nil
}

// threadNetnsPath is the calling thread's network namespace file; the
// caller must have locked the goroutine to its thread.
func threadNetnsPath() string {
	return fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
}

// inNetns runs fn on an OS thread that has joined the network namespace
// netnsFD (setns(2) with CLONE_NEWNET, needs CAP_SYS_ADMIN), then moves the
// thread back. fn must not start goroutines that rely on the namespace:
// only the locked thread is in it. A socket fn creates stays in the
// namespace after the thread leaves, which is how Dump reaches other
// namespaces without running the dump itself there.
//
// The work runs on a fresh goroutine locked to its thread
// (runtime.LockOSThread). If the thread cannot be moved back into its
// original namespace, the goroutine exits still locked, so the Go runtime
// terminates the thread instead of reusing it in the wrong namespace; the
// error says so.
func inNetns(netnsFD int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored, err := runInNetns(netnsFD, fn)
		if restored {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// runInNetns does inNetns's work on the locked thread. restored is false
// only if the thread is left in another namespace.
func runInNetns(netnsFD int, fn func() error) (restored bool, err error) {
	orig, err := unix.Open(threadNetnsPath(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return true, fmt.Errorf("open the thread's netns: %w", err)
	}
	defer unix.Close(orig)

	var target, cur unix.Stat_t
	if err := unix.Fstat(netnsFD, &target); err != nil {
		return true, fmt.Errorf("stat netns fd %d: %w", netnsFD, err)
	}
	if err := unix.Fstat(orig, &cur); err != nil {
		return true, fmt.Errorf("stat the thread's netns: %w", err)
	}
	if target.Dev == cur.Dev && target.Ino == cur.Ino {
		return true, fn() // already there
	}

	if err := unix.Setns(netnsFD, unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("enter netns %d: %w", target.Ino, err)
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return false, errors.Join(ferr, fmt.Errorf("restore the thread's netns %d (the thread is discarded): %w", cur.Ino, err))
	}
	return true, ferr
}

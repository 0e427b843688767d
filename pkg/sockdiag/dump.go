package sockdiag

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// CurrentNetns, as Dump's netnsFD, dumps the network namespace of the
// calling thread (normally the process's) without entering any other.
const CurrentNetns = -1

// Dump lists the sockets in one network namespace that carry BPF sk
// storage in any of the sk_storage maps mapFDs (file descriptors of this
// process), with the value each map holds for each socket. An empty mapFDs
// asks for the storage of every sk_storage map on the host, as
// `ss --bpf-maps` does. Sockets without storage in those maps (and the
// TIME_WAIT and SYN_RECV mini-sockets, which never have storage) are
// skipped unless opts.IncludeWithoutStorage. Every state is dumped; opts
// picks the protocols and families. Only TCP sockets ever come with
// storage, see Options.Protocols.
//
// netnsFD is an open network namespace (Netns.FD, or any fd of a
// /proc/PID/ns/net file) or CurrentNetns. A netlink socket stays in the
// namespace it was created in, so Dump creates it on a new goroutine
// locked to its OS thread (runtime.LockOSThread), which joins the
// namespace (setns(2), CLONE_NEWNET: needs CAP_SYS_ADMIN), opens the
// socket and moves back; the dump itself then runs in the calling
// goroutine, and the caller's thread never changes namespace. Should the
// thread fail to move back, its goroutine exits without unlocking, so the
// Go runtime terminates that thread rather than run other goroutines in
// the wrong namespace, and Dump returns an error.
//
// Kernel: Linux 5.2, and CAP_BPF or CAP_SYS_ADMIN (bpf_capable) or the
// kernel answers EPERM; an fd that is not an sk_storage map gets EINVAL,
// a map given twice EEXIST. On kernels before 5.2 the request attribute is
// ignored and Dump returns no sockets without error: use Probe to tell.
// The cgroup id needs Linux 5.7, the netns cookie 5.14.
func Dump(netnsFD int, mapFDs []int, opts Options) ([]Socket, error) {
	c, nsIno, err := dialNetns(netnsFD)
	if err != nil {
		if netnsFD == CurrentNetns {
			return nil, fmt.Errorf("dump sockets in the current netns: %w", err)
		}
		return nil, fmt.Errorf("dump sockets in netns fd %d: %w", netnsFD, err)
	}
	defer c.Close()
	cookie := c.netnsCookie()

	var socks []Socket
	for _, proto := range opts.protocols() {
		for _, family := range opts.families() {
			err := c.dump(family, proto, mapFDs, func(p []byte) error {
				s, hasStorage, err := parseSocket(p, proto)
				if err != nil {
					return err
				}
				if !hasStorage && !opts.IncludeWithoutStorage {
					return nil
				}
				s.NetnsInode = nsIno
				s.NetnsCookie = cookie
				socks = append(socks, s)
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("dump %s sockets in netns %d: %w%s", dumpName(proto, family), nsIno, err, hint(err, len(mapFDs)))
			}
		}
	}
	return socks, nil
}

// dialNetns opens a sock_diag socket in the namespace netnsFD and returns
// it with the namespace's inode.
func dialNetns(netnsFD int) (c *conn, nsIno uint64, err error) {
	open := func() error {
		var st unix.Stat_t
		if err := unix.Stat(threadNetnsPath(), &st); err != nil {
			return fmt.Errorf("stat the thread's netns: %w", err)
		}
		nsIno = st.Ino
		var derr error
		c, derr = dial()
		return derr
	}
	if netnsFD == CurrentNetns {
		runtime.LockOSThread()
		err = open()
		runtime.UnlockOSThread()
	} else if netnsFD < 0 {
		err = fmt.Errorf("invalid netns fd %d", netnsFD)
	} else {
		err = inNetns(netnsFD, open)
	}
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, 0, err
	}
	return c, nsIno, nil
}

func dumpName(proto Protocol, family Family) string {
	switch family {
	case IPv4:
		return proto.String() + "4"
	case IPv6:
		return proto.String() + "6"
	}
	return proto.String() + "/" + family.String()
}

// hint explains the errnos a storage request gets from
// bpf_sk_storage_diag_alloc and sock_diag.
func hint(err error, nMaps int) string {
	switch {
	case errors.Is(err, unix.EPERM):
		return " (dumping sk storage needs CAP_BPF or CAP_SYS_ADMIN)"
	case errors.Is(err, unix.EBADF) && nMaps > 0:
		return " (a map fd is not open)"
	case errors.Is(err, unix.EINVAL) && nMaps > 0:
		return " (is every map fd an sk_storage map?)"
	case errors.Is(err, unix.EEXIST):
		return " (a map is given twice)"
	case errors.Is(err, unix.ENOENT):
		return " (no sock_diag handler for this protocol: CONFIG_INET_UDP_DIAG?)"
	}
	return ""
}

// DumpNamespaces dumps each namespace in nss (see Dump) and returns all
// sockets, each tagged with its namespace's inode. A namespace that fails
// does not stop the others: the errors are returned joined, along with
// the sockets of the namespaces that worked. An error that would repeat in
// every namespace (EPERM, or a bad map fd: EBADF, EINVAL, EEXIST) ends the
// walk at once.
//
// An open Netns keeps its namespace alive, so a namespace cannot vanish
// between Namespaces and its dump; it just has no sockets left once its
// processes are gone.
func DumpNamespaces(nss []*Netns, mapFDs []int, opts Options) ([]Socket, error) {
	var (
		all  []Socket
		errs []error
	)
	for _, ns := range nss {
		socks, err := Dump(ns.FD(), mapFDs, opts)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ns.Path, err))
			if sameEverywhere(err) {
				break
			}
			continue
		}
		all = append(all, socks...)
	}
	return all, errors.Join(errs...)
}

func sameEverywhere(err error) bool {
	for _, e := range []error{unix.EPERM, unix.EACCES, unix.EBADF, unix.EINVAL, unix.EEXIST} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// DumpAll dumps every network namespace Namespaces finds (see Dump and
// DumpNamespaces) and closes them. Processes that exit during the walk are
// skipped; other errors are returned, joined, alongside whatever sockets
// were collected.
func DumpAll(mapFDs []int, opts Options) ([]Socket, error) {
	nss, err := Namespaces()
	defer func() {
		for _, ns := range nss {
			ns.Close()
		}
	}()
	if nss == nil && err != nil {
		return nil, fmt.Errorf("find network namespaces: %w", err)
	}
	socks, derr := DumpNamespaces(nss, mapFDs, opts)
	if err != nil {
		err = fmt.Errorf("find network namespaces: %w", err)
	}
	return socks, errors.Join(err, derr)
}

// NetnsCookie returns the cookie of the network namespace netnsFD (or
// CurrentNetns): what bpf_get_netns_cookie returns to programs running for
// its sockets. It is read with SO_NETNS_COOKIE from a socket created in the
// namespace, as Dump does.
//
// Kernel: 5.14 (SO_NETNS_COOKIE); CAP_SYS_ADMIN to enter another namespace.
func NetnsCookie(netnsFD int) (uint64, error) {
	c, nsIno, err := dialNetns(netnsFD)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer c.Close()
	v, err := unix.GetsockoptUint64(c.fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie of netns %d: SO_NETNS_COOKIE (Linux 5.14): %w", nsIno, err)
	}
	return v, nil
}

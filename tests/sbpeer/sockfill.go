package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// sockfill opens -n loopback TCP sockets (-n/2 connections, both ends kept)
// spread over -listeners listening addresses in 127/8, optionally puts
// every one of them into the pinned sockhash -pin (the datapath's
// sb_splice map: struct sb_sock_key → socket), prints a peer.SockFill and
// then holds them until it is killed. The kernel removes a socket from the
// sockhash when it closes, so killing the process empties the map again.
// For the scaling benchmark: many live spliced sockets, or (without -pin)
// as many sockets in no map.
func sockfill(args []string) error {
	fs := flag.NewFlagSet("sockfill", flag.ExitOnError)
	n := fs.Int("n", 1000, "sockets (two per connection)")
	listeners := fs.Int("listeners", 4, "listening addresses, 127.<block>.0.1 upwards, port 20001")
	block := fs.Int("block", 0, "second byte of the listening addresses: a different one for each sockfill running at once")
	pin := fs.String("pin", "", "pinned sockhash to put every socket in; \"\" keeps them out of any map")
	fs.Parse(args)
	if *n < 0 || *n%2 != 0 || *listeners < 1 || *listeners > 250 || *block < 0 || *block > 255 {
		return fmt.Errorf("-n must be even and non-negative, -listeners 1 to 250, -block 0 to 255")
	}
	if err := raiseNofile(uint64(*n + *listeners + 64)); err != nil {
		return err
	}
	start := time.Now()
	var m *ebpf.Map
	if *pin != "" {
		var err error
		if m, err = ebpf.LoadPinnedMap(*pin, nil); err != nil {
			return fmt.Errorf("open sockhash: %w", err)
		}
		defer m.Close()
	}
	lfds := make([]int, *listeners)
	addrs := make([]netip.AddrPort, *listeners)
	for i := range lfds {
		addrs[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(*block), 0, byte(1 + i)}), 20001)
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.Bind(fd, sockaddr4(addrs[i])); err != nil {
			return fmt.Errorf("bind %s: %w", addrs[i], err)
		}
		if err := unix.Listen(fd, 4096); err != nil {
			return fmt.Errorf("listen %s: %w", addrs[i], err)
		}
		lfds[i] = fd
	}
	res := peer.SockFill{Sockets: *n}
	for i := 0; i < *n/2; i++ {
		l := i % *listeners
		c, err := tcpSocket()
		if err != nil {
			return err
		}
		if err := unix.Connect(c, sockaddr4(addrs[l])); err != nil {
			return fmt.Errorf("connection %d to %s: %w", i+1, addrs[l], err)
		}
		s, _, err := unix.Accept4(lfds[l], unix.SOCK_CLOEXEC)
		if err != nil {
			return fmt.Errorf("accept connection %d: %w", i+1, err)
		}
		if m == nil {
			continue
		}
		for _, fd := range []int{c, s} {
			key, err := sockKey(fd)
			if err != nil {
				return err
			}
			if err := m.Put(key, uint64(fd)); err != nil {
				return fmt.Errorf("put socket %d of connection %d in the sockhash: %w", fd, i+1, err)
			}
			res.Inserted++
		}
	}
	res.Seconds = time.Since(start).Seconds()
	if err := emit(res); err != nil {
		return err
	}
	// Hold every socket until killed.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	return nil
}

func tcpSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	return fd, nil
}

func sockaddr4(ap netip.AddrPort) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
}

// raiseNofile lifts the soft RLIMIT_NOFILE to at least n; the hard limit
// can only be raised with CAP_SYS_RESOURCE, so beyond it the caller must
// spread its sockets over several processes.
func raiseNofile(n uint64) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= n {
		return nil
	}
	lim.Cur = n
	if lim.Max < n {
		lim.Max = n
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d (without CAP_SYS_RESOURCE, at most the hard limit): %w", n, err)
	}
	return nil
}

// sockKeySize is sizeof(struct sb_sock_key) in bpf/lib/sockbridge.h.
const sockKeySize = 48

// sockKey is struct sb_sock_key of a connected IPv4 socket: the netns
// cookie (the ends are loopback, so node-local), the local and remote
// addresses v4-mapped in network byte order, the ports in host byte order.
func sockKey(fd int) ([]byte, error) {
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return nil, fmt.Errorf("SO_NETNS_COOKIE: %w", err)
	}
	la, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	ra, err := unix.Getpeername(fd)
	if err != nil {
		return nil, fmt.Errorf("getpeername: %w", err)
	}
	l, ok1 := la.(*unix.SockaddrInet4)
	r, ok2 := ra.(*unix.SockaddrInet4)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("socket %d is not IPv4", fd)
	}
	return encodeSockKey(cookie, l.Addr, r.Addr, uint16(l.Port), uint16(r.Port)), nil
}

func encodeSockKey(cookie uint64, local, remote [4]byte, lport, rport uint16) []byte {
	k := make([]byte, sockKeySize)
	binary.NativeEndian.PutUint64(k[0:], cookie)
	for off, a := range map[int][4]byte{8: local, 24: remote} {
		k[off+10], k[off+11] = 0xff, 0xff
		copy(k[off+12:off+16], a[:])
	}
	binary.NativeEndian.PutUint16(k[40:], lport)
	binary.NativeEndian.PutUint16(k[42:], rport)
	return k
}

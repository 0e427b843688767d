package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// dial connects to addr in the family its address names: an IPv4 address
// on an AF_INET socket, an IPv6 address on an AF_INET6 socket, and a
// v4-mapped address ([::ffff:a.b.c.d]:port) on an AF_INET6 socket with
// IPV6_V6ONLY off, as Java and other dual-stack runtimes dial IPv4. Go's
// own dialer turns a v4-mapped address into AF_INET, so that case is made
// with raw system calls. bind, if set, is the local address to bind first
// (with SO_REUSEADDR).
func dial(addr, bind string, timeout time.Duration) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	var local netip.AddrPort
	if bind != "" {
		if local, err = netip.ParseAddrPort(bind); err != nil {
			return nil, fmt.Errorf("bind address %q: %w", bind, err)
		}
	}
	if ap.Addr().Is4In6() {
		return dialMapped(ap, local, timeout)
	}
	network := "tcp4"
	if ap.Addr().Is6() {
		network = "tcp6"
	}
	d := net.Dialer{Timeout: timeout}
	if local.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(local)
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return serr
		}
	}
	return d.Dial(network, addr)
}

// dialMapped connects an AF_INET6 socket, IPV6_V6ONLY off, to the
// v4-mapped address ap.
func dialMapped(ap, local netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket(AF_INET6): %w", err)
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, fmt.Errorf("IPV6_V6ONLY off: %w", err)
	}
	if local.IsValid() {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return nil, err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Port: int(local.Port()), Addr: local.Addr().As16()}); err != nil {
			return nil, fmt.Errorf("bind %s: %w", local, err)
		}
	}
	// A blocking connect bounded by SO_SNDTIMEO; net.FileConn then takes
	// the connected socket into Go's poller.
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
		return nil, fmt.Errorf("connect %s on an AF_INET6 socket: %w", ap, err)
	}
	tv = unix.Timeval{}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

// peerName is getpeername(2) exactly as the kernel answers it, mapped form
// included ([::ffff:a.b.c.d]:port on an AF_INET6 socket), which Go's
// RemoteAddr would print as plain IPv4.
func peerName(c net.Conn) string {
	return rawName(c, unix.Getpeername)
}

// sockName is getsockname(2) exactly as the kernel answers it.
func sockName(c net.Conn) string {
	return rawName(c, unix.Getsockname)
}

func rawName(c net.Conn, get func(int) (unix.Sockaddr, error)) string {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c.RemoteAddr().String()
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return "error: " + err.Error()
	}
	var (
		sa   unix.Sockaddr
		gerr error
	)
	raw.Control(func(fd uintptr) { sa, gerr = get(int(fd)) })
	if gerr != nil {
		return "error: " + gerr.Error()
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprintf("family %T", sa)
}

// listenNetwork is the network to listen on for addr: "tcp" (dual-stack)
// for an IPv6 address such as [::]:8080, "tcp4" otherwise.
func listenNetwork(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && !ap.Addr().Is4In6() {
		return "tcp"
	}
	return "tcp4"
}

package probe

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// selfTestEnv names the self-test a re-executed helper process runs.
const selfTestEnv = "SOCKBRIDGE_PROBE_SELFTEST"

// RunHelperIfRequested runs one self-test's helper side and exits when this
// process was started as a helper by the probe (which re-executes
// /proc/self/exe with SOCKBRIDGE_PROBE_SELFTEST set); otherwise it returns
// at once. Every binary that runs the probe calls it first thing in main
// (or TestMain).
func RunHelperIfRequested() {
	if name, ok := os.LookupEnv(selfTestEnv); ok {
		os.Exit(helperMain(name))
	}
}

// helperMain runs in the temporary cgroup and a fresh network namespace.
func helperMain(name string) int {
	tests := map[string]func() (string, error){
		"connect4":   helpConnect4,
		"getsockopt": helpGetsockopt,
		"splice":     helpSplice,
	}
	var res helperResult
	detail, err := "", loopbackUp()
	if err == nil {
		if test, ok := tests[name]; ok {
			detail, err = test()
		} else {
			err = fmt.Errorf("unknown self-test %q", name)
		}
	}
	res.Detail = detail
	if err != nil {
		res.Error = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

// loopbackUp brings up lo, which starts down in a new network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
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
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

func loopback(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// connectedPair opens a listener on port, dials dial and returns both ends
// of the accepted connection. Once accept returns, both sockets have
// passed their sockops ESTABLISHED callbacks.
func connectedPair(port int, dial string) (client, server net.Conn, err error) {
	ln, err := net.Listen("tcp4", loopback(port))
	if err != nil {
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	client, err = net.DialTimeout("tcp4", dial, time.Second)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", dial, err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
	server, err = ln.Accept()
	if err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("accept on %s: %w", loopback(port), err)
	}
	if server.RemoteAddr().String() != client.LocalAddr().String() {
		client.Close()
		server.Close()
		return nil, nil, fmt.Errorf("accepted %s, not the helper's %s", server.RemoteAddr(), client.LocalAddr())
	}
	return client, server, nil
}

// control runs fn on the connection's file descriptor.
func control(c net.Conn, fn func(fd int) error) error {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func helpConnect4() (string, error) {
	dialled := loopback(connectFromPort)
	client, server, err := connectedPair(connectToPort, dialled)
	if err != nil {
		return "", fmt.Errorf("connect4 did not send %s to port %d: %w", dialled, connectToPort, err)
	}
	defer client.Close()
	defer server.Close()
	var peer string
	err = control(client, func(fd int) error {
		sa, err := unix.Getpeername(fd)
		if err != nil {
			return err
		}
		in, ok := sa.(*unix.SockaddrInet4)
		if !ok {
			return fmt.Errorf("getpeername returned %T", sa)
		}
		peer = net.JoinHostPort(net.IP(in.Addr[:]).String(), fmt.Sprint(in.Port))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("getpeername: %w", err)
	}
	if peer != dialled {
		return "", fmt.Errorf("getpeername returned %s, not the dialled %s", peer, dialled)
	}
	return fmt.Sprintf("connect to %s landed on port %d; getpeername returned %s", dialled, connectToPort, peer), nil
}

func helpGetsockopt() (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptInt(fd, unix.SOL_IP, sockoptOptname)
	if err != nil {
		return "", fmt.Errorf("getsockopt(SOL_IP, %#x) was not answered by the program: %w", sockoptOptname, err)
	}
	if uint32(v) != sockoptAnswer {
		return "", fmt.Errorf("getsockopt(SOL_IP, %#x) returned %#x, the program answers %#x", sockoptOptname, v, sockoptAnswer)
	}
	ttl, err := unix.GetsockoptInt(fd, unix.SOL_IP, unix.IP_TTL)
	if err != nil || ttl <= 0 || ttl > 255 {
		return "", fmt.Errorf("getsockopt(SOL_IP, IP_TTL), which the program must leave alone, returned %d, %v", ttl, err)
	}
	return fmt.Sprintf("getsockopt(SOL_IP, %#x) answered by the program; IP_TTL left alone (%d)", sockoptOptname, ttl), nil
}

func helpSplice() (string, error) {
	client, server, err := connectedPair(splicePort, loopback(splicePort))
	if err != nil {
		return "", err
	}
	defer client.Close()
	defer server.Close()

	sent := make([]byte, spliceBytes)
	rand.Read(sent)
	client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if n, err := client.Write(sent); err != nil {
		return "", fmt.Errorf("sender stalled after %d of %d bytes: %w", n, len(sent), err)
	}
	queued, err := waitQueued(server, len(sent), time.Second)
	if err != nil {
		return "", err
	}
	if queued != len(sent) {
		return "", fmt.Errorf("receiver's FIONREAD reports %d bytes queued, %d were sent", queued, len(sent))
	}
	if err := receive(server, sent); err != nil {
		return "", err
	}
	// And back, to the client's receive queue.
	reply := sent[:4096]
	server.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if n, err := server.Write(reply); err != nil {
		return "", fmt.Errorf("reply stalled after %d of %d bytes: %w", n, len(reply), err)
	}
	if err := receive(client, reply); err != nil {
		return "", fmt.Errorf("reply: %w", err)
	}
	tfo, err := helpSpliceTFO()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%d bytes and a %d-byte reply spliced intact; receiver's FIONREAD reported %d; %s", len(sent), len(reply), queued, tfo), nil
}

// waitQueued polls the receiver's FIONREAD until it reports want bytes or
// the timeout passes, and returns the last value.
func waitQueued(c net.Conn, want int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		var queued int
		err := control(c, func(fd int) error {
			var err error
			queued, err = unix.IoctlGetInt(fd, unix.SIOCINQ)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("FIONREAD on the receiver: %w", err)
		}
		if queued == want || time.Now().After(deadline) {
			return queued, nil
		}
		time.Sleep(time.Millisecond)
	}
}

// receive reads len(want) bytes from c and compares them with want.
func receive(c net.Conn, want []byte) error {
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("receiver got %d of %d bytes: %w", n, len(want), err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("the %d bytes arrived altered", len(want))
	}
	return nil
}

// helpSpliceTFO, the splice helper's second part, opens two TCP Fast Open
// connections and a plain one to a Fast Open listener, each with blocking
// sendto/write calls: the first
// without a cookie (the SYN asks for one, the bytes follow the handshake
// from inside the same sendto), the second with the cookie the first got
// (the bytes ride in the SYN). After its first bytes each client writes
// more; the receiver must read them all in order.
func helpSpliceTFO() (string, error) {
	// Client and server Fast Open, in this namespace only.
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_fastopen", []byte("3"), 0); err != nil {
		return "", fmt.Errorf("enable TCP Fast Open in the helper's namespace: %w", err)
	}
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(lfd)
	addr := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: spliceTFOPort}
	if err := unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN, 8); err != nil {
		return "", fmt.Errorf("TCP_FASTOPEN on the listener: %w", err)
	}
	if err := unix.Bind(lfd, addr); err != nil {
		return "", fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(lfd, 8); err != nil {
		return "", fmt.Errorf("listen: %w", err)
	}
	if err := setTimeout(lfd, time.Second); err != nil {
		return "", err
	}
	var details []string
	for _, round := range []string{"fast open without a cookie", "fast open with a cookie", "plain connect"} {
		n, err := tfoRound(lfd, addr, round)
		if err != nil {
			return "", fmt.Errorf("%s: %w", round, err)
		}
		details = append(details, fmt.Sprintf("%s: %d bytes in order", round, n))
	}
	return strings.Join(details, "; "), nil
}

func tfoRound(lfd int, addr *unix.SockaddrInet4, round string) (int, error) {
	first, second := make([]byte, 1000), make([]byte, 3000)
	rand.Read(first)
	rand.Read(second)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := setTimeout(fd, time.Second); err != nil {
		return 0, err
	}
	// Without it Nagle holds the second write until the receiver's
	// delayed ACK of the first: tens of milliseconds for nothing.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return 0, fmt.Errorf("TCP_NODELAY: %w", err)
	}
	if round == "plain connect" {
		err = unix.Connect(fd, addr)
		if err == nil {
			err = writeAll(fd, first)
		}
	} else {
		err = unix.Sendto(fd, first, unix.MSG_FASTOPEN, addr)
	}
	if err != nil {
		return 0, fmt.Errorf("open and send the first bytes: %w", err)
	}
	if err := writeAll(fd, second); err != nil {
		return 0, fmt.Errorf("send the second bytes: %w", err)
	}
	cfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		return 0, fmt.Errorf("accept: %w", err)
	}
	defer unix.Close(cfd)
	if err := setTimeout(cfd, time.Second); err != nil {
		return 0, err
	}
	want := append(first, second...)
	got := make([]byte, len(want))
	for off := 0; off < len(got); {
		k, err := unix.Read(cfd, got[off:])
		if err != nil || k == 0 {
			return 0, fmt.Errorf("the receiver got %d of %d bytes: %v", off, len(got), err)
		}
		off += k
	}
	if !bytes.Equal(got, want) {
		if bytes.Equal(got[:len(second)], second) {
			return 0, errors.New("the receiver got the second write's bytes before the first ones")
		}
		return 0, fmt.Errorf("the %d bytes arrived altered", len(want))
	}
	return len(want), nil
}

// setTimeout bounds every blocking call on fd.
func setTimeout(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			return fmt.Errorf("socket timeout: %w", err)
		}
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

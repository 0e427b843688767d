// Command sbpeer is the application in sockbridge's test, demo and benchmark
// pods: an echo server that first tells the client which address it saw,
// and clients that measure what a captured connection looks like from the
// inside. Output is one JSON object on stdout.
//
// It copies bytes with read/write loops, never io.Copy between two TCP
// connections: Go would use splice(2), which does not see data spliced by
// sk_msg.
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sbpeer serve|roundtrip|conns|sockopts|hold|stream|reset|gosidecar|mserve|mclient|sink|reqresp|bulk [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "roundtrip":
		err = roundtrip(os.Args[2:])
	case "conns":
		err = conns(os.Args[2:])
	case "sockopts":
		err = sockopts(os.Args[2:])
	case "hold":
		err = hold(os.Args[2:])
	case "stream":
		err = stream(os.Args[2:])
	case "reset":
		err = reset(os.Args[2:])
	case "gosidecar":
		err = gosidecar(os.Args[2:])
	case "mserve":
		err = mserve(os.Args[2:])
	case "mclient":
		err = mclient(os.Args[2:])
	case "sink", "reqresp", "bulk": // benchmark modes, bench.go
		err = benchMode(os.Args[1], os.Args[2:])
	case "resolve": // DNS modes, dns.go
		err = resolve(os.Args[2:])
	case "dnsquery":
		err = dnsquery(os.Args[2:])
	case "dnsload":
		err = dnsload(os.Args[2:])
	case "longlived": // upgrade modes, longlived.go
		err = longlived(os.Args[2:])
	case "origdst-echo":
		err = origdstEcho(os.Args[2:])
	case "held":
		err = held(os.Args[2:])
	case "sockfill": // scaling benchmark, sockfill.go
		err = sockfill(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (valid: serve, roundtrip, conns, sockopts, hold, stream, reset, gosidecar, mserve, mclient, sink, reqresp, bulk)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sbpeer:", err)
		os.Exit(1)
	}
}

func emit(v any) error { return json.NewEncoder(os.Stdout).Encode(v) }

// serve accepts connections; on each it writes "peer=<remote> local=<local>\n"
// and then echoes until EOF, when it closes.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "0.0.0.0:8080", "address to listen on")
	resetAfter := fs.Int64("reset-after", 0, "reset each connection (SO_LINGER 0) after echoing this many bytes; 0 never")
	logConns := fs.Bool("log", false, "print \"accepted <peer>\" for each connection")
	closeDelay := fs.Duration("close-delay", 0, "wait this long after the client's EOF before closing (a server that closes a moment after its client)")
	fs.Parse(args)
	return acceptLoop(*listen, func(c net.Conn) {
		if *logConns {
			fmt.Printf("accepted %s\n", c.RemoteAddr())
		}
		fmt.Fprintf(c, "peer=%s local=%s\n", c.RemoteAddr(), c.LocalAddr())
		if *resetAfter > 0 {
			echoThenReset(c.(*net.TCPConn), *resetAfter)
			return
		}
		echo(c)
		time.Sleep(*closeDelay)
	})
}

// acceptLoop listens on addr, says so on stdout and serves each connection
// in its own goroutine, closing it when handle returns. A bind refused with
// EPERM (sockbridge's bind guard, until the pod's inbound capture is
// attached) is retried for up to 10 s, as a restarted container would.
func acceptLoop(addr string, handle func(net.Conn)) error {
	var (
		ln  net.Listener
		err error
	)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ln, err = net.Listen(listenNetwork(addr), addr)
		if err == nil || !errors.Is(err, syscall.EPERM) || time.Now().After(deadline) {
			break
		}
		fmt.Printf("bind refused: %v; retrying\n", err)
	}
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

func echo(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// echoThenReset echoes limit bytes, then resets the connection.
func echoThenReset(c *net.TCPConn, limit int64) {
	buf := make([]byte, 64<<10)
	for done := int64(0); done < limit; {
		n, err := c.Read(buf[:min(int64(len(buf)), limit-done)])
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			done += int64(n)
		}
		if err != nil {
			return
		}
	}
	c.SetLinger(0)
}

// hello reads the server's first line.
func hello(c net.Conn) (string, error) { return readLine(c, "hello") }

// readLine reads one short line byte by byte, so nothing after it is
// consumed.
func readLine(c net.Conn, what string) (string, error) {
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			return "", fmt.Errorf("read %s: %w", what, err)
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
		if len(line) > 256 {
			return "", fmt.Errorf("%s line too long", what)
		}
	}
}

func parseHello(line string) (remote, local string) {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "peer="); ok {
			remote = v
		}
		if v, ok := strings.CutPrefix(f, "local="); ok {
			local = v
		}
	}
	return
}

// roundtrip sends random bytes and checks the echo is identical.
func roundtrip(args []string) error {
	fs := flag.NewFlagSet("roundtrip", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	size := fs.Int("bytes", 1<<20, "payload size")
	halfClose := fs.Bool("halfclose", true, "half-close after sending; false reads the echo by length (for sidecars that close both ways on EOF, such as shadowsocks)")
	fs.Parse(args)
	start := time.Now()
	c, err := dial(*addr, "", 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	line, err := hello(c)
	if err != nil {
		return err
	}
	res := peer.Roundtrip{Getpeername: peerName(c), Getsockname: sockName(c), Bytes: *size}
	res.ServerSawPeer, res.ServerLocal = parseHello(line)

	payload := make([]byte, *size)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	errc := make(chan error, 1)
	go func() {
		for off := 0; off < len(payload); {
			end := min(off+256<<10, len(payload))
			n, err := c.Write(payload[off:end])
			off += n
			if err != nil {
				errc <- err
				return
			}
		}
		if !*halfClose {
			errc <- nil
			return
		}
		errc <- c.(*net.TCPConn).CloseWrite()
	}()
	h := sha256.New()
	buf := make([]byte, 64<<10)
	got := 0
	for got < *size {
		n, err := c.Read(buf)
		h.Write(buf[:n])
		got += n
		if err != nil {
			break
		}
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	res.Intact = got == *size && bytes.Equal(h.Sum(nil), want[:])
	res.ElapsedSeconds = time.Since(start).Seconds()
	return emit(res)
}

// conns opens n connections, P at a time: connect, read the hello, echo one
// byte, close.
func conns(args []string) error {
	fs := flag.NewFlagSet("conns", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	n := fs.Int("n", 1000, "connections")
	par := fs.Int("parallel", 4, "concurrent connections")
	pause := fs.Duration("pause", 0, "pause after each connection (paces a long run)")
	fs.Parse(args)
	var (
		next, ok, failed atomic.Int64
		firstErr         atomic.Value
		wg               sync.WaitGroup
		mu               sync.Mutex
		lat              []time.Duration
		errs             []string
	)
	start := time.Now()
	for w := 0; w < *par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := next.Add(1); i <= int64(*n); i = next.Add(1) {
				d, err := oneConn(*addr)
				time.Sleep(*pause)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					mu.Lock()
					if len(errs) < 20 {
						errs = append(errs, fmt.Sprintf("#%d: %v", i, err))
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
				mine = append(mine, d)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	res := peer.Conns{OK: ok.Load(), Failed: failed.Load(), Errors: errs, Seconds: secs, PerSec: float64(ok.Load()) / secs}
	if v, _ := firstErr.Load().(string); v != "" {
		res.FirstErr = v
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		res.P50Ms = float64(lat[len(lat)/2]) / 1e6
		res.P99Ms = float64(lat[len(lat)*99/100]) / 1e6
	}
	return emit(res)
}

func oneConn(addr string) (time.Duration, error) {
	start := time.Now()
	c, err := dial(addr, "", 5*time.Second)
	if err != nil {
		return 0, err
	}
	d := time.Since(start)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := hello(c); err != nil {
		return 0, err
	}
	if _, err := c.Write([]byte{'x'}); err != nil {
		return 0, err
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		return 0, fmt.Errorf("read echo: %w", err)
	}
	return d, nil
}

// hold connects, prints "connected <local> <peer>" and keeps the connection
// open for the given time, so a test can look at live state.
func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	d := fs.Duration("for", 30*time.Second, "how long to keep the connection")
	fs.Parse(args)
	c, err := dial(*addr, "", 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := hello(c); err != nil {
		return err
	}
	fmt.Printf("connected %s %s\n", c.LocalAddr(), c.RemoteAddr())
	time.Sleep(*d)
	return nil
}

// sockopts connects and reports getpeername and a set of getsockopt calls,
// including ones with a 64 KiB buffer, for comparison with and without the
// datapath.
func sockopts(args []string) error {
	fs := flag.NewFlagSet("sockopts", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	fs.Parse(args)
	c, err := dial(*addr, "", 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := hello(c); err != nil {
		return err
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	res := peer.Sockopts{Getpeername: peerName(c), Opts: map[string]peer.Opt{}}
	calls := []struct {
		name       string
		level, opt int
		bufLen     int
		keepValue  bool
	}{
		{"so_rcvbuf", unix.SOL_SOCKET, unix.SO_RCVBUF, 4, true},
		{"so_type_64k", unix.SOL_SOCKET, unix.SO_TYPE, 64 << 10, true},
		{"tcp_info", unix.SOL_TCP, unix.TCP_INFO, 512, false},
		{"tcp_info_64k", unix.SOL_TCP, unix.TCP_INFO, 64 << 10, false},
		{"ip_tos", unix.SOL_IP, unix.IP_TOS, 4, true},
		{"so_original_dst", unix.SOL_IP, 80, 16, true},
		{"so_original_dst_64k", unix.SOL_IP, 80, 64 << 10, true},
		{"tcp_congestion_64k", unix.SOL_TCP, unix.TCP_CONGESTION, 64 << 10, true},
	}
	for _, call := range calls {
		buf := make([]byte, call.bufLen)
		l := uint32(len(buf))
		var errno syscall.Errno
		raw.Control(func(fd uintptr) {
			_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(call.level), uintptr(call.opt),
				uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		})
		r := peer.Opt{Errno: errnoName(errno), Len: int(l), BufLen: call.bufLen}
		if errno == 0 && call.keepValue {
			r.Value = fmt.Sprintf("%x", buf[:min(int(l), len(buf))])
		}
		res.Opts[call.name] = r
	}
	return emit(res)
}

func unsafePointer[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }

func errnoName(e syscall.Errno) string {
	if e == 0 {
		return "OK"
	}
	return unix.ErrnoName(e)
}

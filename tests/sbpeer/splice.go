package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// stream is roundtrip with knobs for the splicing tests: a fixed source
// address (-bind, so two pods can open connections with identical 4-tuples),
// a pause between connecting and sending (so lifetimes overlap), and the
// size of each write (-chunk, larger than the socket buffer if wanted).
func stream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	bind := fs.String("bind", "", "local address to bind, e.g. 127.0.0.1:40000")
	size := fs.Int("bytes", 1<<20, "payload size")
	chunk := fs.Int("chunk", 256<<10, "bytes per write")
	pause := fs.Duration("pause", 0, "wait after connecting, before sending")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after")
	halfClose := fs.Bool("halfclose", true, "half-close after sending and read the echo to EOF; false reads it by length (for sidecars that close both ways on EOF, such as shadowsocks)")
	fs.Parse(args)

	start := time.Now()
	c, err := dial(*addr, *bind, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))
	line, err := hello(c)
	if err != nil {
		return err
	}
	res := peer.Roundtrip{Getpeername: peerName(c), Getsockname: sockName(c), Bytes: *size}
	res.ServerSawPeer, res.ServerLocal = parseHello(line)
	time.Sleep(*pause)

	payload := make([]byte, *size)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	errc := make(chan error, 1)
	go func() {
		for off := 0; off < len(payload); {
			n, err := c.Write(payload[off:min(off+*chunk, len(payload))])
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
	var got int64
	if *halfClose {
		got, err = io.Copy(h, c)
	} else {
		got, err = io.CopyN(h, c, int64(*size))
	}
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", got, err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	res.Intact = got == int64(*size) && bytes.Equal(h.Sum(nil), want[:])
	res.ElapsedSeconds = time.Since(start).Seconds()
	return emit(res)
}

// reset streams to the server until the connection fails (the test resets
// or kills the other side) and reports how it ended. With -abort it instead
// resets the connection itself (SO_LINGER 0) after -bytes.
func reset(args []string) error {
	fs := flag.NewFlagSet("reset", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	abort := fs.Bool("abort", false, "reset the connection ourselves after -bytes")
	size := fs.Int64("bytes", 1<<20, "bytes to send before -abort")
	timeout := fs.Duration("timeout", 20*time.Second, "give up after")
	fs.Parse(args)
	start := time.Now()
	c, err := dial(*addr, "", 5*time.Second)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	c.SetDeadline(time.Now().Add(*timeout))
	if _, err := hello(c); err != nil {
		return err
	}
	go func() { // drain the echo so the server keeps reading
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	var sent int64
	res := peer.Reset{}
	for {
		if *abort && sent >= *size {
			tc.SetLinger(0)
			c.Close()
			res.Error = "aborted"
			break
		}
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			res.Error = err.Error()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				res.Error = "timeout: " + err.Error()
			}
			break
		}
	}
	res.Sent = sent
	res.Seconds = time.Since(start).Seconds()
	c.Close()
	return emit(res)
}

// gosidecar is a minimal transparent proxy in Go, as many sidecars are: it
// accepts on -listen, reads SO_ORIGINAL_DST and copies bytes both ways with
// io.Copy between the two *net.TCPConn, which Go implements with splice(2).
// It exists to show the sk_msg splicing hazard.
func gosidecar(args []string) error {
	fs := flag.NewFlagSet("gosidecar", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:15001", "address to listen on")
	fs.Parse(args)
	return acceptLoop(*listen, func(c net.Conn) {
		dst, err := origDst(c.(*net.TCPConn))
		if err != nil {
			fmt.Printf("origdst: %v\n", err)
			return
		}
		up, err := net.DialTimeout("tcp4", dst, 5*time.Second)
		if err != nil {
			fmt.Printf("dial %s: %v\n", dst, err)
			return
		}
		defer up.Close()
		done := make(chan struct{})
		go func() {
			io.Copy(up, c) // splice(2) from c
			up.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(c, up)
		c.(*net.TCPConn).CloseWrite()
		<-done
	})
}

func origDst(c *net.TCPConn) (string, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var (
		sa   [16]byte
		serr error
	)
	raw.Control(func(fd uintptr) {
		l := uint32(len(sa))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, 80, uintptr(unsafePointer(&sa[0])), uintptr(unsafePointer(&l)), 0)
		if errno != 0 {
			serr = errno
		}
	})
	if serr != nil {
		return "", serr
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	return fmt.Sprintf("%d.%d.%d.%d:%d", sa[4], sa[5], sa[6], sa[7], port), nil
}

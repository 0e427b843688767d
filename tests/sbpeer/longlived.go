package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// longlived opens -n connections to -addr, prints "open <n>" once they all
// are, and then checks each of them every -every until SIGTERM, when it
// prints a peer.LongLived: getpeername must return -addr, and the
// connection must answer. With -ask echo (the server is sbpeer serve,
// reached through any sidecar) a byte sent comes back; with -ask origdst
// (the sidecar is sbpeer origdst-echo) the sidecar's SO_ORIGINAL_DST, asked
// again at each check, must be -addr. For a datapath switched under open
// connections (an upgrade).
func longlived(args []string) error {
	fs := flag.NewFlagSet("longlived", flag.ExitOnError)
	addr := fs.String("addr", "", "address to dial")
	n := fs.Int("n", 4, "connections")
	ask := fs.String("ask", "echo", "echo or origdst")
	every := fs.Duration("every", 100*time.Millisecond, "pause between rounds of checks")
	fs.Parse(args)
	if *ask != "echo" && *ask != "origdst" {
		return fmt.Errorf("-ask %q: want echo or origdst", *ask)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	type conn struct {
		c net.Conn
		r *bufio.Reader
	}
	var cs []conn
	for i := 0; i < *n; i++ {
		c, err := dial(*addr, "", 5*time.Second)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i+1, err)
		}
		defer c.Close()
		r := bufio.NewReader(c)
		if *ask == "echo" {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := r.ReadString('\n'); err != nil {
				return fmt.Errorf("connection %d: read hello: %w", i+1, err)
			}
		}
		cs = append(cs, conn{c, r})
	}
	fmt.Printf("open %d\n", len(cs))
	res := peer.LongLived{Conns: len(cs)}
	fail := func(i int, format string, a ...any) {
		res.Failed++
		if len(res.Errors) < 20 {
			res.Errors = append(res.Errors, fmt.Sprintf("round %d, connection %d: %s", res.Rounds, i+1, fmt.Sprintf(format, a...)))
		}
	}
	for {
		select {
		case <-stop:
			return emit(res)
		case <-time.After(*every):
		}
		res.Rounds++
		for i, c := range cs {
			res.Checks++
			if got := peerName(c.c); got != *addr {
				fail(i, "getpeername %s", got)
			}
			c.c.SetDeadline(time.Now().Add(10 * time.Second))
			switch *ask {
			case "echo":
				b := []byte{'x'}
				if _, err := c.c.Write(b); err != nil {
					fail(i, "write: %v", err)
				} else if _, err := io.ReadFull(c.r, b); err != nil || b[0] != 'x' {
					fail(i, "echo %q: %v", b, err)
				}
			case "origdst":
				if _, err := io.WriteString(c.c, "?\n"); err != nil {
					fail(i, "write: %v", err)
				} else if line, err := c.r.ReadString('\n'); err != nil {
					fail(i, "read: %v", err)
				} else if got := strings.TrimSpace(line); got != "origdst="+*addr {
					fail(i, "the sidecar says %s", got)
				}
			}
		}
	}
}

// origdstEcho is a sidecar that answers each line "?" of a connection with
// "origdst=<addr>\n", asking getsockopt(SOL_IP, SO_ORIGINAL_DST) again each
// time ("origdst=error <errno>" when the kernel has no answer), to see a
// long-lived accepted socket's answer change or not.
func origdstEcho(args []string) error {
	fs := flag.NewFlagSet("origdst-echo", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:15001", "address to listen on")
	fs.Parse(args)
	return acceptLoop(*listen, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			dst, err := origDst(c.(*net.TCPConn))
			if err != nil {
				dst = "error " + err.Error()
			}
			if _, err := fmt.Fprintf(c, "origdst=%s\n", dst); err != nil {
				return
			}
		}
	})
}

// held opens -n connections at once, each as the conns mode does (dial,
// read the hello, echo a byte), with -timeout for the whole of each, and
// prints a peer.Conns. For handshakes a test holds (packets dropped, the
// sidecar stopped) while it switches the datapath.
func held(args []string) error {
	fs := flag.NewFlagSet("held", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	n := fs.Int("n", 4, "connections")
	timeout := fs.Duration("timeout", time.Minute, "time each connection may take")
	fs.Parse(args)
	type result struct {
		i   int
		err error
	}
	done := make(chan result)
	start := time.Now()
	for i := 1; i <= *n; i++ {
		go func() {
			c, err := dial(*addr, "", *timeout)
			if err == nil {
				defer c.Close()
				c.SetDeadline(start.Add(*timeout))
				r := bufio.NewReader(c)
				b := []byte{'x'}
				if _, err = r.ReadString('\n'); err != nil {
					err = fmt.Errorf("read hello: %w", err)
				} else if _, err = c.Write(b); err == nil {
					_, err = io.ReadFull(r, b)
				}
			}
			done <- result{i, err}
		}()
	}
	var res peer.Conns
	for range *n {
		r := <-done
		if r.err != nil {
			res.Failed++
			res.Errors = append(res.Errors, fmt.Sprintf("#%d: %v", r.i, r.err))
			continue
		}
		res.OK++
	}
	res.Seconds = time.Since(start).Seconds()
	return emit(res)
}

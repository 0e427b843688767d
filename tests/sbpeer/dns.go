package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// resolve looks a name up with Go's own resolver (not cgo: PreferGo, as
// GODEBUG=netdns=go), which reads /etc/resolv.conf, sends A and AAAA
// queries over UDP from connected sockets, retries over TCP when an answer
// is truncated, and drops answers from a source it did not ask.
func resolve(args []string) error {
	fs := flag.NewFlagSet("resolve", flag.ExitOnError)
	name := fs.String("name", "", "name to look up")
	timeout := fs.Duration("timeout", 10*time.Second, "overall time limit")
	fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	r := &net.Resolver{PreferGo: true}
	addrs, err := r.LookupHost(ctx, *name)
	res := struct {
		Addrs []string `json:"addrs"`
		Error string   `json:"error,omitempty"`
	}{Addrs: addrs}
	if err != nil {
		res.Error = err.Error()
	}
	sort.Strings(res.Addrs)
	return emit(res)
}

// dnsResult is what dnsquery reports about one query.
type dnsResult struct {
	// ReplyFrom is the reply's source as recvfrom() gave it (UDP) or the
	// connection's peer (TCP); Getpeername is the socket's peer name when
	// connected.
	ReplyFrom   string   `json:"reply_from"`
	Getpeername string   `json:"getpeername,omitempty"`
	RCode       string   `json:"rcode"`
	Truncated   bool     `json:"truncated"`
	Answers     []string `json:"answers"`
	Error       string   `json:"error,omitempty"`
}

// dnsquery sends one A query for a name to a server from a socket of the
// family asked (4: AF_INET; 6: AF_INET6; mapped: AF_INET6 to the server's
// IPv4 address as ::ffff:a.b.c.d), over unconnected UDP (sendto/recvfrom),
// connected UDP (connect/send/recvfrom) or TCP, and reports the reply's
// source exactly as the socket API gives it.
func dnsquery(args []string) error {
	fs := flag.NewFlagSet("dnsquery", flag.ExitOnError)
	server := fs.String("server", "", "nameserver address:port")
	name := fs.String("name", "", "name to ask for (A)")
	family := fs.String("family", "4", "4, 6 or mapped")
	connected := fs.Bool("connect", false, "connect() the UDP socket")
	tcp := fs.Bool("tcp", false, "ask over TCP")
	timeout := fs.Duration("timeout", 3*time.Second, "time to wait for the reply")
	fs.Parse(args)
	ap, err := netip.ParseAddrPort(*server)
	if err != nil {
		return fmt.Errorf("-server: %w", err)
	}
	res := dnsResult{}
	if err := queryOnce(&res, ap, *name, *family, *connected, *tcp, *timeout); err != nil {
		res.Error = err.Error()
	}
	return emit(res)
}

func queryOnce(res *dnsResult, ap netip.AddrPort, name, family string, connected, tcp bool, timeout time.Duration) error {
	sa, domain, err := sockaddrFor(ap, family)
	if err != nil {
		return err
	}
	typ := unix.SOCK_DGRAM
	if tcp {
		typ = unix.SOCK_STREAM
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	id := uint16(time.Now().UnixNano())
	q, err := buildQuery(id, name)
	if err != nil {
		return err
	}
	var reply []byte
	if tcp || connected {
		if err := unix.Connect(fd, sa); err != nil {
			return fmt.Errorf("connect to %s: %w", ap, err)
		}
		if peer, err := unix.Getpeername(fd); err == nil {
			res.Getpeername = sockaddrString(peer)
		}
	}
	switch {
	case tcp:
		msg := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
		if _, err := unix.Write(fd, append(msg, q...)); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		dup, err := unix.Dup(fd)
		if err != nil {
			return fmt.Errorf("dup: %w", err)
		}
		f := os.NewFile(uintptr(dup), "tcp")
		defer f.Close()
		var n [2]byte
		if _, err := io.ReadFull(f, n[:]); err != nil {
			return fmt.Errorf("read length: %w", err)
		}
		reply = make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(f, reply); err != nil {
			return fmt.Errorf("read reply: %w", err)
		}
		res.ReplyFrom = res.Getpeername
	default:
		if connected {
			err = unix.Send(fd, q, 0)
		} else {
			err = unix.Sendto(fd, q, 0, sa)
		}
		if err != nil {
			return fmt.Errorf("send: %w", err)
		}
		buf := make([]byte, 65536)
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("recvfrom: %w", err)
		}
		reply = buf[:n]
		res.ReplyFrom = sockaddrString(from)
	}
	return parseReply(res, id, reply)
}

func sockaddrFor(ap netip.AddrPort, family string) (unix.Sockaddr, int, error) {
	switch family {
	case "4":
		if !ap.Addr().Is4() {
			return nil, 0, fmt.Errorf("%s is not IPv4", ap.Addr())
		}
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, unix.AF_INET, nil
	case "6", "mapped":
		if (family == "mapped") != ap.Addr().Is4() {
			return nil, 0, fmt.Errorf("family %s does not fit %s", family, ap.Addr())
		}
		return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, unix.AF_INET6, nil
	}
	return nil, 0, fmt.Errorf("family %q: want 4, 6 or mapped", family)
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprintf("%T", sa)
}

func buildQuery(id uint16, name string) ([]byte, error) {
	n, err := dnsmessage.NewName(dnsName(name))
	if err != nil {
		return nil, fmt.Errorf("name %q: %w", name, err)
	}
	m := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	return m.Pack()
}

func dnsName(name string) string {
	if name == "" || name[len(name)-1] != '.' {
		return name + "."
	}
	return name
}

func parseReply(res *dnsResult, id uint16, reply []byte) error {
	var m dnsmessage.Message
	if err := m.Unpack(reply); err != nil {
		return fmt.Errorf("unpack reply: %w", err)
	}
	if m.ID != id {
		return fmt.Errorf("reply id %d, asked %d", m.ID, id)
	}
	res.RCode = m.RCode.String()
	res.Truncated = m.Truncated
	res.Answers = []string{}
	for _, a := range m.Answers {
		if r, ok := a.Body.(*dnsmessage.AResource); ok {
			res.Answers = append(res.Answers, netip.AddrFrom4(r.A).String())
		}
	}
	sort.Strings(res.Answers)
	return nil
}

// dnsload asks a name over and over from conc connected UDP sockets (the
// way glibc and Go ask) for a while and reports queries per second and
// latency percentiles. A reply from another source than the server asked,
// or with another id, counts as failed.
func dnsload(args []string) error {
	fs := flag.NewFlagSet("dnsload", flag.ExitOnError)
	server := fs.String("server", "", "nameserver address:port")
	name := fs.String("name", "", "name to ask for (A)")
	conc := fs.Int("conc", 4, "sockets asking at once")
	dur := fs.Duration("duration", 5*time.Second, "how long to ask")
	fs.Parse(args)
	ap, err := netip.ParseAddrPort(*server)
	if err != nil {
		return fmt.Errorf("-server: %w", err)
	}
	network := "udp4"
	if ap.Addr().Is6() {
		network = "udp6"
	}
	var (
		mu      sync.Mutex
		lat     []time.Duration
		failed  atomic.Int64
		firstMu sync.Mutex
		first   string
	)
	fail := func(err error) {
		failed.Add(1)
		firstMu.Lock()
		if first == "" {
			first = err.Error()
		}
		firstMu.Unlock()
	}
	start := time.Now()
	deadline := start.Add(*dur)
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(ap))
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			buf := make([]byte, 4096)
			var mine []time.Duration
			for id := uint16(w) << 12; time.Now().Before(deadline); id++ {
				q, err := buildQuery(id, *name)
				if err != nil {
					fail(err)
					return
				}
				t0 := time.Now()
				c.SetDeadline(t0.Add(2 * time.Second))
				if _, err := c.Write(q); err != nil {
					fail(err)
					continue
				}
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					fail(err)
					continue
				}
				if from.Addr().Unmap() != ap.Addr().Unmap() || from.Port() != ap.Port() {
					fail(fmt.Errorf("reply from %s, asked %s", from, ap))
					continue
				}
				var r dnsResult
				if err := parseReply(&r, id, buf[:n]); err != nil || len(r.Answers) == 0 {
					fail(errors.Join(err, fmt.Errorf("reply %+v", r)))
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	return emit(struct {
		OK       int     `json:"ok"`
		Failed   int64   `json:"failed"`
		FirstErr string  `json:"first_error,omitempty"`
		PerSec   float64 `json:"per_second"`
		P50us    float64 `json:"p50_us"`
		P99us    float64 `json:"p99_us"`
	}{len(lat), failed.Load(), first, float64(len(lat)) / elapsed.Seconds(), percentileUs(lat, 50), percentileUs(lat, 99)})
}

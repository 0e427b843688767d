package main

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

func patternOf(seed uint64, n int64) []byte {
	b := make([]byte, n)
	fillPattern(seed, 0, b)
	return b
}

// The verifier is what makes the splice matrix able to fail: each kind of
// damage must show at the right offset.
func TestVerifierFindsDamage(t *testing.T) {
	const seed, n = 42, 10000
	good := patternOf(seed, n)
	cut := func(b []byte, from, to int) []byte { return append(append([]byte{}, b[:from]...), b[to:]...) }
	tests := []struct {
		name     string
		got      []byte
		ok       bool
		mismatch int64
		bytes    int64
	}{
		{"intact", good, true, -1, n},
		{"one byte lost", cut(good, 5000, 5001), false, 5000, n - 1},
		{"a chunk lost at the end", good[:n-100], false, -1, n - 100},
		{"a chunk duplicated", append(append(append([]byte{}, good[:6000]...), good[5000:6000]...), good[6000:]...), false, 6000, n + 1000},
		{"two chunks swapped", append(append(append([]byte{}, good[4000:8000]...), good[:4000]...), good[8000:]...), false, 0, n},
		{"another stream's bytes", patternOf(seed+1, n), false, 0, n},
		{"extra bytes after the end", append(append([]byte{}, good...), 1, 2, 3), false, n, n + 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := newVerifier(seed, peer.Stream{Bytes: n})
			for b := tc.got; len(b) > 0; b = b[min(len(b), 777):] {
				v.feed(b[:min(len(b), 777)])
			}
			r := v.result()
			if r.OK() != tc.ok || r.FirstMismatch != tc.mismatch || r.Bytes != tc.bytes {
				t.Errorf("got %+v (ok %v), want ok %v, first mismatch %d, %d bytes", r, r.OK(), tc.ok, tc.mismatch, tc.bytes)
			}
		})
	}
}

// A stream written with MSG_OOB is right with its urgent byte in place,
// without it, or cut short with every byte before the end right.
func TestVerifierUrgentByte(t *testing.T) {
	const seed, n = 7, 4000
	st := peer.Stream{Bytes: n, Write: peer.WriteOOB}
	good := patternOf(seed, n)
	at := st.OOBOffset()
	without := append(append([]byte{}, good[:at]...), good[at+1:]...)
	for _, tc := range []struct {
		name string
		got  []byte
		oob  string
		ok   bool
	}{
		{"inline", good, "inline", true},
		{"absent", without, "absent", true},
		{"cut at the mark", good[:at], "cut", false},
		{"damaged", append(append([]byte{}, without[:100]...), without[101:]...), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVerifier(seed, st)
			v.feed(tc.got)
			r := v.result()
			if r.OOB != tc.oob || r.OK() != tc.ok {
				t.Errorf("got %+v, want oob %q ok %v", r, tc.oob, tc.ok)
			}
		})
	}
}

// The client and server halves agree over plain loopback TCP, in every way
// of writing and reading, both directions at once: what the matrix sees
// through the datapath is then the datapath's doing.
func TestMatrixPeersOverLoopback(t *testing.T) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 16); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	const stall = 10 * time.Second
	served := make(chan peer.ServerResult)
	go func() {
		for {
			fd, sa, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if err != nil {
				close(served)
				return
			}
			go func() {
				defer unix.Close(fd)
				served <- serveCase(fd, sa, stall)
			}()
		}
	}()
	for i, w := range peer.Writes {
		for j, r := range peer.Reads {
			n := i*len(peer.Reads) + j
			c := peer.Case{ID: fmt.Sprint("loopback/", n), Open: peer.OpenConnect,
				Up:   peer.Stream{Bytes: 40000 + int64(n), Write: w, Chunk: 3000 + n, Read: peer.Reads[(n+3)%len(peer.Reads)]},
				Down: peer.Stream{Bytes: 30000 + int64(n), Write: peer.Writes[(n+5)%len(peer.Writes)], Chunk: 2000, Read: r},
			}
			cr := runCase(ap, c, stall)
			sr := <-served
			// TCP itself takes the urgent byte out of the stream for a
			// reader without SO_OOBINLINE.
			if cr.Error != "" || cr.Up.Error != "" || !cr.Down.OK() || sr.Error != "" || !sr.Up.OK() || sr.Down.Error != "" {
				t.Errorf("case %s (up %s, down %s): client %+v, server %+v", c.ID, c.Up, c.Down, cr, sr)
			}
		}
	}
}

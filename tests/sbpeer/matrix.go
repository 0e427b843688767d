package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// The splice matrix (tests/e2e/matrix_test.go): mclient opens one
// connection per case in every way an application can open and write TCP,
// mserve answers, and each side checks the other's stream byte by byte
// against a pattern, to EOF, with a deadline on progress. Everything here
// uses raw syscalls (golang.org/x/sys/unix) on blocking sockets, not Go's
// net package, so that each way is exactly the syscall it is named after.
//
// Go's runtime preempts goroutines with signals, which cut blocking calls
// short; the tests run both modes with GODEBUG=asyncpreemptoff=1 so that a
// short recv(MSG_WAITALL) means the kernel returned short.

// mserve listens on -listen and answers each matrix connection: it reads
// the case header, then sends the case's down stream while it reads and
// checks the up stream, and prints one peer.ServerResult line per
// connection.
func mserve(args []string) error {
	fs := flag.NewFlagSet("mserve", flag.ExitOnError)
	listen := fs.String("listen", "0.0.0.0:8080", "address to listen on")
	tfoQueue := fs.Int("tfo", 0, "TCP_FASTOPEN queue length of the listener; 0 leaves Fast Open off")
	stall := fs.Duration("stall", 10*time.Second, "a stream that makes no progress for this long has stalled")
	fs.Parse(args)

	ap, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return err
	}
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("SO_REUSEADDR: %w", err)
	}
	if *tfoQueue > 0 {
		if err := unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN, *tfoQueue); err != nil {
			return fmt.Errorf("TCP_FASTOPEN: %w", err)
		}
	}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
		return fmt.Errorf("bind %s: %w", ap, err)
	}
	if err := unix.Listen(lfd, 512); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Printf("listening %s\n", ap)
	out := &lineWriter{}
	for {
		fd, sa, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go func() {
			defer unix.Close(fd)
			out.emit(serveCase(fd, sa, *stall))
		}()
	}
}

func serveCase(fd int, sa unix.Sockaddr, stall time.Duration) peer.ServerResult {
	var res peer.ServerResult
	if in, ok := sa.(*unix.SockaddrInet4); ok {
		res.Peer = netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(in.Port)).String()
	}
	if err := setTimeouts(fd, stall); err != nil {
		res.Error = err.Error()
		return res
	}
	c, err := readHeader(fd)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.ID = c.ID
	if err := setBuffers(fd, c.Down.SndBuf, c.Up.RcvBuf); err != nil {
		res.Error = err.Error()
		return res
	}
	if c.Sequential {
		res.Up = receive(fd, c.Up, seedOf(c.ID, "up"), stall)
		res.Down = send(fd, c.Down, nil, seedOf(c.ID, "down"), 0, stall)
		return res
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		res.Down = send(fd, c.Down, nil, seedOf(c.ID, "down"), 0, stall)
	}()
	res.Up = receive(fd, c.Up, seedOf(c.ID, "up"), stall)
	wg.Wait()
	return res
}

// readHeader reads the case header with plain blocking reads.
func readHeader(fd int) (peer.Case, error) {
	var c peer.Case
	buf := make([]byte, peer.HeaderSize)
	for got := 0; got < len(buf); {
		n, err := unix.Read(fd, buf[got:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return c, fmt.Errorf("read the case header after %d bytes: %w", got, err)
		}
		if n == 0 {
			return c, fmt.Errorf("the stream ended after %d bytes of the case header", got)
		}
		got += n
	}
	if err := json.Unmarshal(bytes.TrimRight(buf, " "), &c); err != nil {
		return c, fmt.Errorf("decode the case header %q: %w", buf, err)
	}
	return c, nil
}

// header renders c as the first HeaderSize bytes of the client's stream.
func header(c peer.Case) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	if len(b) > peer.HeaderSize {
		return nil, fmt.Errorf("case %s: header of %d bytes, at most %d", c.ID, len(b), peer.HeaderSize)
	}
	return append(b, bytes.Repeat([]byte{' '}, peer.HeaderSize-len(b))...), nil
}

// mclient runs the cases given as a JSON array, one connection each, one
// after the other, and prints one peer.ClientResult line per case.
func mclient(args []string) error {
	fs := flag.NewFlagSet("mclient", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	casesJSON := fs.String("cases", "", "the cases, a JSON array of peer.Case")
	stall := fs.Duration("stall", 10*time.Second, "a stream that makes no progress for this long has stalled")
	fs.Parse(args)
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil {
		return err
	}
	var cases []peer.Case
	if err := json.Unmarshal([]byte(*casesJSON), &cases); err != nil {
		return fmt.Errorf("decode -cases: %w", err)
	}
	out := &lineWriter{}
	for _, c := range cases {
		start := time.Now()
		res := runCase(ap, c, *stall)
		res.ID = c.ID
		res.Seconds = time.Since(start).Seconds()
		out.emit(res)
	}
	return nil
}

func runCase(ap netip.AddrPort, c peer.Case, stall time.Duration) peer.ClientResult {
	var res peer.ClientResult
	hdr, err := header(c)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		res.Error = fmt.Sprintf("socket: %v", err)
		return res
	}
	defer unix.Close(fd)
	if err := setTimeouts(fd, stall); err != nil {
		res.Error = err.Error()
		return res
	}
	if err := setBuffers(fd, c.Up.SndBuf, c.Down.RcvBuf); err != nil {
		res.Error = err.Error()
		return res
	}
	sa := &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	var sent int64
	switch c.Open {
	case peer.OpenConnect:
		err = retryEINTR(func() error { return unix.Connect(fd, sa) })
	case peer.OpenTFOConnect:
		if err = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1); err == nil {
			err = retryEINTR(func() error { return unix.Connect(fd, sa) })
		}
	case peer.OpenTFOSendto:
		s := streamBytes{prefix: hdr, seed: seedOf(c.ID, "up"), n: c.Up.Bytes}
		first := make([]byte, min(s.total(), int64(max(c.Up.Chunk, 1))))
		s.fill(0, first)
		var n int
		n, err = sendtoFastOpen(fd, first, ap)
		sent = int64(n)
	default:
		err = fmt.Errorf("unknown open %q", c.Open)
	}
	if err != nil {
		res.Error = fmt.Sprintf("%s to %s: %v", c.Open, ap, err)
		return res
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		res.Up = send(fd, c.Up, hdr, seedOf(c.ID, "up"), sent, stall)
	}()
	res.Down = receive(fd, c.Down, seedOf(c.ID, "down"), stall)
	wg.Wait()
	return res
}

// sendtoFastOpen is sendto(fd, b, MSG_FASTOPEN, ap): connect and send in
// one call, the SYN carrying b when the client holds a cookie.
func sendtoFastOpen(fd int, b []byte, ap netip.AddrPort) (int, error) {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	for {
		n, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			unix.MSG_FASTOPEN, uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// setTimeouts bounds every blocking call on fd: a call that makes no
// progress for d returns EAGAIN (or a short count), which the callers
// report as a stall.
func setTimeouts(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			return fmt.Errorf("set socket timeout: %w", err)
		}
	}
	return nil
}

func setBuffers(fd, sndbuf, rcvbuf int) error {
	if sndbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf); err != nil {
			return fmt.Errorf("SO_SNDBUF: %w", err)
		}
	}
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return fmt.Errorf("SO_RCVBUF: %w", err)
		}
	}
	return nil
}

// lineWriter prints one JSON line at a time.
type lineWriter struct{ mu sync.Mutex }

func (w *lineWriter) emit(v any) {
	b, _ := json.Marshal(v)
	w.mu.Lock()
	defer w.mu.Unlock()
	os.Stdout.Write(append(b, '\n'))
}

// The pattern: byte off of a stream depends on the stream's seed and on
// off, so a lost, duplicated or reordered byte (or one from another
// connection or direction) shows as a mismatch at its offset.

func seedOf(id, dir string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id + "/" + dir))
	return h.Sum64()
}

func patternByte(seed uint64, off int64) byte {
	x := (uint64(off>>3) + seed) * 0x9e3779b97f4a7c15
	x ^= x >> 29
	return byte(x >> (8 * uint(off&7)))
}

func fillPattern(seed uint64, off int64, b []byte) {
	for i := range b {
		b[i] = patternByte(seed, off+int64(i))
	}
}

// streamBytes is what a sender writes: prefix (the client's case header), then
// n pattern bytes.
type streamBytes struct {
	prefix []byte
	seed   uint64
	n      int64
}

func (s streamBytes) total() int64 { return int64(len(s.prefix)) + s.n }

// fill copies the bytes at off (counted from the start of the prefix).
func (s streamBytes) fill(off int64, b []byte) {
	k := 0
	if off < int64(len(s.prefix)) {
		k = copy(b, s.prefix[off:])
	}
	fillPattern(s.seed, off+int64(k)-int64(len(s.prefix)), b[k:])
}

// send writes the stream st describes, from offset done on (bytes a TFO
// sendto already sent), in the way st.Write says, then half-closes.
func send(fd int, st peer.Stream, prefix []byte, seed uint64, done int64, stall time.Duration) peer.Sent {
	s := streamBytes{prefix: prefix, seed: seed, n: st.Bytes}
	w := &writer{fd: fd, st: st, s: s, done: done, stall: stall}
	err := w.run()
	if err == nil {
		err = retryEINTR(func() error { return unix.Shutdown(fd, unix.SHUT_WR) })
		if err != nil {
			err = fmt.Errorf("shutdown(SHUT_WR): %w", err)
		}
	}
	res := peer.Sent{Bytes: max(w.done-int64(len(prefix)), 0)}
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

type writer struct {
	fd    int
	st    peer.Stream
	s     streamBytes
	done  int64
	stall time.Duration
	start time.Time // of the current call
	calls int
	buf   []byte
	memfd int
	pipe  [2]int
}

func (w *writer) run() (err error) {
	chunk := int64(max(w.st.Chunk, 1))
	w.buf = make([]byte, min(chunk, w.s.total()))
	switch w.st.Write {
	case peer.WriteSendfile:
		if err := w.openMemfd(); err != nil {
			return err
		}
		defer unix.Close(w.memfd)
	case peer.WriteSplice:
		if err := unix.Pipe2(w.pipe[:], unix.O_CLOEXEC); err != nil {
			return fmt.Errorf("pipe: %w", err)
		}
		defer unix.Close(w.pipe[0])
		defer unix.Close(w.pipe[1])
	case peer.WriteCork:
		if err := unix.SetsockoptInt(w.fd, unix.IPPROTO_TCP, unix.TCP_CORK, 1); err != nil {
			return fmt.Errorf("TCP_CORK: %w", err)
		}
	}
	oob := int64(-1)
	if w.st.Write == peer.WriteOOB {
		oob = int64(len(w.s.prefix)) + w.st.OOBOffset()
	}
	end := w.s.total()
	if w.st.HoldAt > 0 {
		end = min(end, int64(len(w.s.prefix))+w.st.HoldAt)
	}
	for w.done < end {
		n := min(chunk, end-w.done)
		if oob >= 0 && w.done < oob && w.done+n > oob {
			n = oob - w.done // stop right before the urgent byte
		}
		var k int64
		if w.done == oob {
			k, err = w.sendFlags(1, unix.MSG_OOB)
		} else {
			k, err = w.write(n)
		}
		w.done += k
		w.calls++
		if err != nil {
			return err
		}
	}
	if w.st.Write == peer.WriteCork {
		if err := unix.SetsockoptInt(w.fd, unix.IPPROTO_TCP, unix.TCP_CORK, 0); err != nil {
			return fmt.Errorf("TCP_CORK off: %w", err)
		}
	}
	if w.st.HoldAt > 0 {
		time.Sleep(2 * w.stall)
		return fmt.Errorf("held the stream after %d bytes, as asked", w.st.HoldAt)
	}
	return nil
}

// write makes one call of the stream's kind for up to n bytes at w.done
// and returns how many bytes it took.
func (w *writer) write(n int64) (int64, error) {
	switch w.st.Write {
	case peer.WriteWrite, peer.WriteOOB:
		return w.syscall("write", n, func(b []byte) (int, error) { return unix.Write(w.fd, b) })
	case peer.WriteWritev:
		return w.syscall("writev", n, func(b []byte) (int, error) {
			third := len(b) / 3
			return unix.Writev(w.fd, [][]byte{b[:third], b[third : 2*third], b[2*third:]})
		})
	case peer.WriteSendmsg:
		return w.sendFlags(n, 0)
	case peer.WriteMore:
		flags := unix.MSG_MORE
		if w.calls%4 == 3 || w.done+n == w.s.total() {
			flags = 0
		}
		return w.sendFlags(n, flags)
	case peer.WriteCork:
		k, err := w.sendFlags(n, 0)
		if err == nil && w.calls%4 == 3 {
			// Uncork (which pushes what is queued) and cork again.
			if err = unix.SetsockoptInt(w.fd, unix.IPPROTO_TCP, unix.TCP_CORK, 0); err == nil {
				err = unix.SetsockoptInt(w.fd, unix.IPPROTO_TCP, unix.TCP_CORK, 1)
			}
			if err != nil {
				err = fmt.Errorf("TCP_CORK: %w", err)
			}
		}
		return k, err
	case peer.WriteSendfile:
		return w.sendfile(n)
	case peer.WriteSplice:
		return w.splice(n)
	}
	return 0, fmt.Errorf("unknown write %q", w.st.Write)
}

func (w *writer) sendFlags(n int64, flags int) (int64, error) {
	return w.syscall(fmt.Sprintf("sendmsg(flags %#x)", flags), n, func(b []byte) (int, error) {
		return unix.SendmsgN(w.fd, b, nil, nil, flags)
	})
}

// syscall fills the buffer with the next n bytes and writes them with
// call, which may take fewer.
func (w *writer) syscall(name string, n int64, call func([]byte) (int, error)) (int64, error) {
	b := w.buf[:n]
	w.s.fill(w.done, b)
	for {
		w.start = time.Now()
		k, err := call(b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return w.result(name, int64(max(k, 0)), err)
	}
}

// result turns a write's outcome into bytes taken and an error that says
// a stall is a stall.
func (w *writer) result(name string, k int64, err error) (int64, error) {
	if errors.Is(err, unix.EAGAIN) {
		if d := time.Since(w.start); d < w.stall*9/10 {
			return k, fmt.Errorf("%s on a blocking socket returned EAGAIN after %s, before its %s timeout, at %d of %d bytes",
				name, d.Round(time.Millisecond), w.stall, w.done, w.s.total())
		}
		return k, fmt.Errorf("stalled: %s took nothing for %s after %d of %d bytes", name, w.stall, w.done, w.s.total())
	}
	if err != nil {
		return k, fmt.Errorf("%s after %d of %d bytes: %w", name, w.done, w.s.total(), err)
	}
	return k, nil
}

func (w *writer) openMemfd() error {
	fd, err := unix.MemfdCreate("sbpeer-stream", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < w.s.total(); {
		b := buf[:min(int64(len(buf)), w.s.total()-off)]
		w.s.fill(off, b)
		n, err := unix.Pwrite(fd, b, off)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("fill the memfd: %w", err)
		}
		off += int64(n)
	}
	w.memfd = fd
	return nil
}

func (w *writer) sendfile(n int64) (int64, error) {
	for {
		off := w.done
		w.start = time.Now()
		k, err := unix.Sendfile(w.fd, w.memfd, &off, int(n))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return w.result("sendfile", int64(max(k, 0)), err)
	}
}

// splice moves up to n bytes (at most the pipe's 64 KiB) through the pipe
// into the socket; it returns once the pipe is empty again.
func (w *writer) splice(n int64) (int64, error) {
	b := w.buf[:min(n, 64<<10)]
	w.s.fill(w.done, b)
	for off := 0; off < len(b); {
		k, err := unix.Write(w.pipe[1], b[off:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("write the pipe: %w", err)
		}
		off += k
	}
	var moved int64
	for moved < int64(len(b)) {
		w.start = time.Now()
		k, err := unix.Splice(w.pipe[0], nil, w.fd, nil, len(b)-int(moved), unix.SPLICE_F_MOVE)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		moved += max(k, 0)
		if err != nil {
			// The bytes left in the pipe were not sent: count only
			// what reached the socket.
			return w.result("splice", moved, err)
		}
	}
	return moved, nil
}

// receive reads the stream st describes to EOF in the way st.Read says and
// checks it against the pattern.
func receive(fd int, st peer.Stream, seed uint64, stall time.Duration) peer.Received {
	r := &reader{fd: fd, st: st, stall: stall, v: newVerifier(seed, st), oob: -1}
	if st.Write == peer.WriteOOB {
		r.oob = st.OOBOffset()
	}
	err := r.run()
	res := r.v.result()
	if err != nil {
		res.Error = err.Error()
	} else if r.shortWaitall != "" {
		res.Error = r.shortWaitall
	}
	return res
}

type reader struct {
	fd    int
	st    peer.Stream
	stall time.Duration
	v     *verifier
	// shortWaitall describes the first recv(MSG_WAITALL) that returned
	// less than asked before the stream's end.
	shortWaitall string
	// oob is the offset of the urgent mark in a stream written with
	// MSG_OOB (-1 in any other stream): TCP stops a read there, and
	// FIONREAD says 0, whatever the datapath does.
	oob int64
}

const readSize = 32 << 10

func (r *reader) stalled(how string) error {
	return fmt.Errorf("stalled: %s: nothing for %s after %d of %d bytes", how, r.stall, r.v.got, r.v.want)
}

// eagain explains EAGAIN from a blocking call that started at start: a
// stall when the socket timeout expired, otherwise a blocking socket that
// returned EAGAIN early, which no application expects.
func (r *reader) eagain(how string, start time.Time) error {
	if d := time.Since(start); d < r.stall*9/10 {
		return fmt.Errorf("%s on a blocking socket returned EAGAIN after %s, before its %s timeout, at %d of %d bytes",
			how, d.Round(time.Millisecond), r.stall, r.v.got, r.v.want)
	}
	return r.stalled(how)
}

func (r *reader) run() error {
	buf := make([]byte, readSize)
	switch r.st.Read {
	case peer.ReadRead:
		for {
			start := time.Now()
			n, err := unix.Read(r.fd, buf)
			if done, err := r.took("read", start, n, err, buf); done || err != nil {
				return err
			}
		}
	case peer.ReadWaitall:
		// A short return counts only when more bytes follow it: at
		// the end of the stream it is what MSG_WAITALL does.
		pending := ""
		for {
			want := int64(len(buf))
			if left := r.v.want - r.v.got; left > 0 {
				want = min(want, left)
			}
			start := time.Now()
			n, _, err := unix.Recvfrom(r.fd, buf[:want], unix.MSG_WAITALL)
			// TCP itself ends a read at the urgent mark.
			atMark := r.oob >= 0 && r.v.got+int64(n) == r.oob
			if err == nil && n > 0 && pending != "" && r.shortWaitall == "" {
				r.shortWaitall = pending
			}
			pending = ""
			if err == nil && n > 0 && int64(n) < want && time.Since(start) < r.stall && !atMark {
				pending = fmt.Sprintf("recv(MSG_WAITALL) returned %d of %d bytes at offset %d, and more bytes followed", n, want, r.v.got)
			}
			if err == nil && n > 0 && int64(n) < want && time.Since(start) >= r.stall {
				r.v.feed(buf[:n])
				return r.stalled("recv(MSG_WAITALL)")
			}
			if done, err := r.took("recv(MSG_WAITALL)", start, n, err, buf); done || err != nil {
				return err
			}
		}
	case peer.ReadPeek:
		seen := make([]byte, readSize)
		for {
			start := time.Now()
			n, _, err := unix.Recvfrom(r.fd, buf, unix.MSG_PEEK)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				return r.eagain("recv(MSG_PEEK)", start)
			}
			if err != nil {
				return fmt.Errorf("recv(MSG_PEEK) after %d bytes: %w", r.v.got, err)
			}
			if n == 0 {
				// EOF: a read must say so too.
				m, err := unix.Read(r.fd, buf)
				if err != nil || m != 0 {
					return fmt.Errorf("recv(MSG_PEEK) saw the end after %d bytes, then read returned %d, %v", r.v.got, m, err)
				}
				return nil
			}
			copy(seen, buf[:n])
			m, _, err := unix.Recvfrom(r.fd, buf[:n], unix.MSG_WAITALL)
			if err != nil || m != n || !bytes.Equal(buf[:m], seen[:n]) {
				if m > 0 {
					r.v.feed(buf[:m])
				}
				return fmt.Errorf("recv(MSG_PEEK) returned %d bytes at offset %d, then reading them returned %d bytes (same bytes: %v), %v",
					n, r.v.got, m, m > 0 && bytes.Equal(buf[:min(m, n)], seen[:min(m, n)]), err)
			}
			r.v.feed(buf[:m])
		}
	case peer.ReadPoll, peer.ReadFIONREAD:
		return r.poll(buf)
	case peer.ReadEpollLT, peer.ReadEpollET:
		return r.epoll(buf, r.st.Read == peer.ReadEpollET)
	}
	return fmt.Errorf("unknown read %q", r.st.Read)
}

// took handles one blocking read's outcome: done at EOF.
func (r *reader) took(name string, start time.Time, n int, err error, buf []byte) (bool, error) {
	switch {
	case errors.Is(err, unix.EINTR):
		return false, nil
	case errors.Is(err, unix.EAGAIN):
		return false, r.eagain(name, start)
	case err != nil:
		return false, fmt.Errorf("%s after %d bytes: %w", name, r.v.got, err)
	case n == 0:
		return true, nil
	}
	r.v.feed(buf[:n])
	return false, nil
}

// drain reads without blocking until EAGAIN (or once, when once is set).
// It returns eof at the end of the stream.
func (r *reader) drain(buf []byte, once bool) (eof bool, err error) {
	for {
		n, _, err := unix.Recvfrom(r.fd, buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return false, nil
		case err != nil:
			return false, fmt.Errorf("recv(MSG_DONTWAIT) after %d bytes: %w", r.v.got, err)
		case n == 0:
			return true, nil
		}
		r.v.feed(buf[:n])
		if once {
			return false, nil
		}
	}
}

func (r *reader) poll(buf []byte) error {
	fionread := r.st.Read == peer.ReadFIONREAD
	for {
		fds := []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(r.stall.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			return r.stalled("poll(POLLIN)")
		}
		if !fionread {
			if eof, err := r.drain(buf, false); eof || err != nil {
				return err
			}
			continue
		}
		// An application that trusts FIONREAD reads exactly what it
		// says is queued.
		queued, err := unix.IoctlGetInt(r.fd, unix.SIOCINQ)
		if err != nil {
			return fmt.Errorf("FIONREAD: %w", err)
		}
		if queued == 0 {
			m, _, err := unix.Recvfrom(r.fd, buf, unix.MSG_DONTWAIT|unix.MSG_PEEK)
			switch {
			case m == 0 && err == nil:
				return nil // readable and nothing queued: the end
			case m > 0 && r.oob >= 0 && r.v.got == r.oob:
				// At the urgent mark, TCP itself reports 0.
				if _, err := r.drain(buf, true); err != nil {
					return err
				}
				continue
			case m > 0:
				return fmt.Errorf("FIONREAD said 0 bytes queued at offset %d, but %d bytes could be read", r.v.got, m)
			}
			continue // readable for another reason (EAGAIN): poll again
		}
		b := buf
		if queued < len(b) {
			b = buf[:queued]
		}
		m, _, err := unix.Recvfrom(r.fd, b, unix.MSG_DONTWAIT)
		if err != nil || m != len(b) {
			if m > 0 {
				r.v.feed(buf[:m])
			}
			return fmt.Errorf("FIONREAD said %d bytes queued at offset %d, a read of %d returned %d, %v", queued, r.v.got, len(b), m, err)
		}
		r.v.feed(b)
	}
}

func (r *reader) epoll(buf []byte, edge bool) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	defer unix.Close(ep)
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(r.fd)}
	name := "level-triggered epoll"
	if edge {
		ev.Events |= unix.EPOLLET
		name = "edge-triggered epoll"
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, r.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	events := make([]unix.EpollEvent, 1)
	for {
		n, err := unix.EpollWait(ep, events, int(r.stall.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		if n == 0 {
			return r.stalled(name)
		}
		// Level-triggered: one read a wake-up, the rest is reported
		// again. Edge-triggered: drain, or no wake-up comes.
		if eof, err := r.drain(buf, !edge); eof || err != nil {
			return err
		}
	}
}

// verifier checks a received stream against the sender's pattern. For a
// stream written with MSG_OOB it checks two readings at once: the urgent
// byte in its place, and the urgent byte taken out of the stream (what
// TCP gives a reader without SO_OOBINLINE).
type verifier struct {
	seed     uint64
	want     int64
	got      int64
	mismatch int64
	skip     int64 // offset of the byte this reading leaves out, -1 none
	alt      *verifier
}

func newVerifier(seed uint64, st peer.Stream) *verifier {
	v := &verifier{seed: seed, want: st.Bytes, mismatch: -1, skip: -1}
	if st.Write == peer.WriteOOB {
		v.alt = &verifier{seed: seed, want: st.Bytes - 1, mismatch: -1, skip: st.OOBOffset()}
	}
	return v
}

func (v *verifier) feed(b []byte) {
	if v.alt != nil {
		v.alt.feed(b)
	}
	if v.mismatch >= 0 {
		v.got += int64(len(b))
		return
	}
	for i, c := range b {
		off := v.got + int64(i)
		src := off
		if v.skip >= 0 && off >= v.skip {
			src++
		}
		if off >= v.want || c != patternByte(v.seed, src) {
			v.mismatch = off
			break
		}
	}
	v.got += int64(len(b))
}

func (v *verifier) ok() bool { return v.mismatch < 0 && v.got == v.want }

// clean reports whether every byte so far matched.
func (v *verifier) clean() bool { return v.mismatch < 0 }

func (v *verifier) result() peer.Received {
	use, oob := v, ""
	if v.alt != nil {
		switch {
		case v.ok():
			oob = "inline"
		case v.alt.ok():
			use, oob = v.alt, "absent"
		case v.clean() || v.alt.clean():
			// A clean beginning that ended early.
			if !v.clean() {
				use = v.alt
			}
			oob = "cut"
		}
	}
	return peer.Received{Bytes: use.got, Want: use.want, FirstMismatch: use.mismatch, OOB: oob}
}

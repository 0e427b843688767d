package main

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// Benchmark modes: a sink server, a request/response client for the echo
// server and a bulk upload client for the sink. Every mode checks the bytes
// it got back, so a benchmark run also proves the variant moved them
// correctly. Clients are bounded in count and time.

// castagnoli is CRC-32C, which the CPU computes (SSE 4.2) far faster than
// the network moves bytes, so checking a bulk transfer costs little.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sink accepts connections; on each it writes the hello line, reads until
// EOF and answers "bytes=<n> crc32c=<hex>\n" before closing.
func sink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ExitOnError)
	listen := fs.String("listen", "0.0.0.0:8081", "address to listen on")
	fs.Parse(args)
	return acceptLoop(*listen, drain)
}

func drain(c net.Conn) {
	fmt.Fprintf(c, "peer=%s local=%s\n", c.RemoteAddr(), c.LocalAddr())
	h := crc32.New(castagnoli)
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, err := c.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
	}
	fmt.Fprintf(c, "bytes=%d crc32c=%08x\n", n, h.Sum32())
}

// reqresp sends one request of -size bytes at a time over one connection to
// the echo server and waits for the whole echo: ping-pong latency and
// requests per second.
func reqresp(args []string) error {
	fs := flag.NewFlagSet("reqresp", flag.ExitOnError)
	addr := fs.String("addr", "", "echo server address")
	size := fs.Int("size", 64, "request (and response) size in bytes, at least 8")
	limit := fs.Int("n", 1_000_000, "at most this many requests")
	dur := fs.Duration("duration", 3*time.Second, "at most this long")
	fs.Parse(args)
	if *size < 8 || *limit < 1 {
		return fmt.Errorf("need -size >= 8 and -n >= 1")
	}
	c, err := dial(*addr, "", 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*dur + 30*time.Second))
	line, err := hello(c)
	if err != nil {
		return err
	}
	res := peer.ReqResp{Size: *size, Intact: true}
	res.ServerSaw, _ = parseHello(line)
	lat, secs, err := pingpong(c, *size, *limit, *dur)
	if err != nil {
		res.Intact, res.FirstErr = false, err.Error()
	}
	res.Requests, res.Seconds = len(lat), secs
	if secs > 0 {
		res.PerSec = float64(len(lat)) / secs
	}
	res.P50Us, res.P99Us = percentileUs(lat, 50), percentileUs(lat, 99)
	return emit(res)
}

// pingpong runs the request loop; each request carries its sequence number
// so a stale or reordered echo is caught.
func pingpong(c net.Conn, size, limit int, dur time.Duration) ([]time.Duration, float64, error) {
	req := make([]byte, size)
	rand.Read(req)
	resp := make([]byte, size)
	lat := make([]time.Duration, 0, min(limit, 1<<20))
	start := time.Now()
	deadline := start.Add(dur)
	for i := 0; i < limit && time.Now().Before(deadline); i++ {
		binary.LittleEndian.PutUint64(req, uint64(i))
		t0 := time.Now()
		if _, err := c.Write(req); err != nil {
			return lat, time.Since(start).Seconds(), fmt.Errorf("write request %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return lat, time.Since(start).Seconds(), fmt.Errorf("read response %d: %w", i, err)
		}
		lat = append(lat, time.Since(t0))
		if !bytes.Equal(req, resp) {
			return lat, time.Since(start).Seconds(), fmt.Errorf("response %d differs from the request", i)
		}
	}
	return lat, time.Since(start).Seconds(), nil
}

// percentileUs returns the p-th percentile of d in microseconds (d is
// sorted in place).
func percentileUs(d []time.Duration, p int) float64 {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	i := min(len(d)*p/100, len(d)-1)
	return float64(d[i]) / 1e3
}

// bulk uploads -bytes to the sink, half-closes and compares the sink's
// byte count and CRC-32C with its own. Throughput counts from the first
// write to the sink's answer, in MB (10^6 bytes) per second.
func bulk(args []string) error {
	fs := flag.NewFlagSet("bulk", flag.ExitOnError)
	addr := fs.String("addr", "", "sink address")
	size := fs.Int64("bytes", 1<<30, "bytes to upload")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	fs.Parse(args)
	c, err := dial(*addr, "", 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))
	line, err := hello(c)
	if err != nil {
		return err
	}
	res := peer.Bulk{Bytes: *size}
	res.ServerSaw, _ = parseHello(line)
	start := time.Now()
	sum, err := upload(c, *size)
	if err != nil {
		return err
	}
	if res.Server, err = readLine(c, "sink result"); err != nil {
		return err
	}
	res.Seconds = time.Since(start).Seconds()
	res.MBPerSec = float64(*size) / 1e6 / res.Seconds
	n, crc := parseSinkResult(res.Server)
	res.Intact = n == *size && crc == sum
	return emit(res)
}

// upload writes size bytes of a random 256 KiB pattern, then half-closes,
// and returns the CRC-32C of what it wrote.
func upload(c net.Conn, size int64) (uint32, error) {
	buf := make([]byte, 256<<10)
	rand.Read(buf)
	h := crc32.New(castagnoli)
	for sent := int64(0); sent < size; {
		chunk := buf[:min(int64(len(buf)), size-sent)]
		n, err := c.Write(chunk)
		h.Write(chunk[:n])
		sent += int64(n)
		if err != nil {
			return 0, fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, fmt.Errorf("half-close: %w", err)
	}
	return h.Sum32(), nil
}

func parseSinkResult(line string) (n int64, crc uint32) {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "bytes="); ok {
			n, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(f, "crc32c="); ok {
			c, _ := strconv.ParseUint(v, 16, 32)
			crc = uint32(c)
		}
	}
	return n, crc
}

// benchMode runs one of the benchmark modes.
func benchMode(mode string, args []string) error {
	switch mode {
	case "sink":
		return sink(args)
	case "reqresp":
		return reqresp(args)
	case "bulk":
		return bulk(args)
	}
	return fmt.Errorf("unknown benchmark mode %q", mode)
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// metric is one number the benchmark reports per variant and round.
type metric struct {
	key          string
	label        string
	unit         string
	higherBetter bool
}

var metrics = []metric{
	{"pingpong64_p50_us", "64 B ping-pong p50", "µs", false},
	{"pingpong64_p99_us", "64 B ping-pong p99", "µs", false},
	{"pingpong64_rps", "64 B ping-pong", "req/s", true},
	{"rr1k_p50_us", "1 KiB req/resp p50", "µs", false},
	{"rr1k_p99_us", "1 KiB req/resp p99", "µs", false},
	{"rr1k_rps", "1 KiB req/resp", "req/s", true},
	{"rr16k_p50_us", "16 KiB req/resp p50", "µs", false},
	{"rr16k_p99_us", "16 KiB req/resp p99", "µs", false},
	{"rr16k_rps", "16 KiB req/resp", "req/s", true},
	{"bulk_mbps", "bulk upload", "MB/s", true},
	{"bulk_cpu_s_per_gib", "bulk CPU, pod + server cgroups", "CPU-s/GiB", false},
	{"bulk_node_cpu_s_per_gib", "bulk CPU, whole machine", "CPU-s/GiB", false},
	{"conn_per_s", "connect + 1 B echo + close", "conn/s", true},
	{"conn_p99_ms", "connect p99", "ms", false},
	{"conn_cpu_ms_per_1k", "connection CPU, pod + server cgroups", "CPU-ms/1000 conns", false},
	{"conn_node_cpu_ms_per_1k", "connection CPU, whole machine", "CPU-ms/1000 conns", false},
	{"ct_per_conn", "conntrack entries per connection", "", false},
}

func metricByKey(key string) (metric, bool) {
	for _, m := range allMetrics() {
		if m.key == key {
			return m, true
		}
	}
	return metric{}, false
}

// workload runs once against one variant and returns its metrics and how
// many connections it opened, which the variant's proxy must have logged.
type workload struct {
	name string
	run  func(v *variant) (map[string]float64, int, error)
	// applies says which variants run it; nil: every variant.
	applies func(v *variant) bool
}

func (b *bench) workloads() []workload {
	wls := []workload{
		{name: "pingpong64", run: b.reqresp("pingpong64", 64)},
		{name: "rr1k", run: b.reqresp("rr1k", 1<<10)},
		{name: "rr16k", run: b.reqresp("rr16k", 16<<10)},
		{name: "bulk", run: b.bulk},
		{name: "conns", run: b.conns},
		{name: "conntrack", run: b.conntrack},
	}
	for _, m := range meshSizes {
		wls = append(wls, workload{name: m.label, run: b.meshReqResp(m.label, m.size),
			applies: func(v *variant) bool { return v.mesh != nil }})
	}
	return wls
}

// reqRespOK is nil when a request/response run of sbpeer completed with
// every response intact.
func reqRespOK(r peer.ReqResp, err error) error {
	switch {
	case err != nil:
		return err
	case !r.Intact:
		return fmt.Errorf("responses not intact after %d requests: %s", r.Requests, r.FirstErr)
	case r.Requests == 0:
		return errors.New("no request completed")
	}
	return nil
}

func (b *bench) reqresp(label string, size int) func(v *variant) (map[string]float64, int, error) {
	return func(v *variant) (map[string]float64, int, error) {
		var r peer.ReqResp
		err := b.sbpeer(v, &r, b.s.Duration+time.Minute, "reqresp", "-addr", v.echoAddr,
			"-size", strconv.Itoa(size), "-n", strconv.Itoa(b.s.ReqMax), "-duration", b.s.Duration.String())
		if err := reqRespOK(r, err); err != nil {
			return nil, 0, err
		}
		if err := b.checkSource(v, r.ServerSaw); err != nil {
			return nil, 0, err
		}
		return map[string]float64{label + "_p50_us": r.P50Us, label + "_p99_us": r.P99Us, label + "_rps": r.PerSec}, 1, nil
	}
}

// bulk uploads BulkBytes to the sink and charges the CPU time of the pod
// (app and sidecar) and of the server's cgroups, and of the machine, to it.
func (b *bench) bulk(v *variant) (map[string]float64, int, error) {
	meter, err := startCPU(v.pod.cgroup, b.w.serverCg)
	if err != nil {
		return nil, 0, err
	}
	var r peer.Bulk
	timeout := time.Minute + time.Duration(b.s.BulkBytes/(10<<20))*time.Second // at worst 10 MiB/s
	err = b.sbpeer(v, &r, timeout, "bulk", "-addr", v.sinkAddr,
		"-bytes", strconv.FormatInt(b.s.BulkBytes, 10), "-timeout", timeout.String())
	if err != nil {
		return nil, 0, err
	}
	cg, node, err := meter.stop()
	if err != nil {
		return nil, 0, err
	}
	if !r.Intact {
		return nil, 0, fmt.Errorf("sink got %q for %d bytes sent", r.Server, r.Bytes)
	}
	if err := b.checkSource(v, r.ServerSaw); err != nil {
		return nil, 0, err
	}
	gib := float64(b.s.BulkBytes) / (1 << 30)
	return map[string]float64{
		"bulk_mbps":               r.MBPerSec,
		"bulk_cpu_s_per_gib":      cg.Seconds() / gib,
		"bulk_node_cpu_s_per_gib": node.Seconds() / gib,
	}, 1, nil
}

// conns opens Conns connections (connect, 1 B echo, close) and charges
// the CPU time of the pod and server cgroups and of the machine, and the
// run time of the variant's BPF programs (cost.go), to them.
func (b *bench) conns(v *variant) (map[string]float64, int, error) {
	meter, err := startCPU(v.pod.cgroup, b.w.serverCg)
	if err != nil {
		return nil, 0, err
	}
	start := b.progSnapshot(v)
	r, err := b.runConns(v, b.s.Conns, b.s.ConnsParallel)
	if err != nil {
		return nil, 0, err
	}
	progs := b.progDelta(v, start)
	cg, node, err := meter.stop()
	if err != nil {
		return nil, 0, err
	}
	perK := func(d time.Duration) float64 { return d.Seconds() * 1e3 / float64(r.OK) * 1000 }
	vals := map[string]float64{
		"conn_per_s": r.PerSec, "conn_p99_ms": r.P99Ms,
		"conn_cpu_ms_per_1k": perK(cg), "conn_node_cpu_ms_per_1k": perK(node),
	}
	if progs != nil {
		vals["bpf_ns_per_conn"] = b.recordConnCost(v, progs, uint64(r.OK))
	}
	return vals, int(r.OK), nil
}

// conntrack counts the conntrack entries (TCP, both families) the pod's
// namespace creates for CTConns sequential connections (countConntrack),
// in a run of its own so the event listener does not slow the
// connection-rate run of one variant only. A failed connection is never
// retried.
func (b *bench) conntrack(v *variant) (map[string]float64, int, error) {
	return ctPerConn(b.w.t, fmt.Sprintf("round %d %s", b.curRound, v.name), ctScope{ns: v.pod.ns, proto: "tcp"},
		&b.res.CTFromTable, func() (peer.Conns, error) { return b.runConns(v, b.s.CTConns, 1) })
}

func (b *bench) runConns(v *variant, n, parallel int) (peer.Conns, error) {
	var r peer.Conns
	err := b.sbpeer(v, &r, 5*time.Minute, "conns", "-addr", v.echoAddr,
		"-n", strconv.Itoa(n), "-parallel", strconv.Itoa(parallel))
	switch {
	case err != nil:
		return r, err
	case r.Failed > 0:
		return r, fmt.Errorf("%d of %d connections failed, first: %s", r.Failed, n, r.FirstErr)
	case r.OK == 0:
		return r, errors.New("no connection completed")
	}
	return r, nil
}

// sbpeer runs sbpeer in the pod's app container and decodes its JSON.
func (b *bench) sbpeer(v *variant, out any, timeout time.Duration, args ...string) error {
	spec := testutil.ProcSpec{Netns: v.pod.ns, Cgroup: v.pod.app, Args: append([]string{b.w.sbpeer}, args...)}
	raw, err := testutil.Output(b.w.t, timeout, spec)
	if err != nil {
		return fmt.Errorf("sbpeer: %w", err)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decode sbpeer %s output %q: %w", args[0], raw, err)
	}
	return nil
}

// checkSource makes sure the server saw the pod's IP as the source, as it
// does with and without a sidecar in every variant.
func (b *bench) checkSource(v *variant, serverSaw string) error {
	ap, err := netip.ParseAddrPort(serverSaw)
	if err != nil || ap.Addr() != v.pod.ns.Addr {
		return fmt.Errorf("server saw source %q, want the pod IP %s", serverSaw, v.pod.ns.Addr)
	}
	return nil
}

// pathMark is what a variant's proxy and datapath had counted before a
// workload ran.
type pathMark struct {
	lines    int
	captured uint64
}

func (b *bench) markPath(v *variant) pathMark {
	m := pathMark{lines: countLines(v.proxy, v.logPrefixOrOutbound())}
	if v.dp != nil {
		if s, err := v.dp.Stats(); err == nil {
			m.captured = s.Get("captured")
		}
	}
	return m
}

// checkPath makes sure the workload's connections took the variant's path:
// through the proxy (its log has a line per connection) and, for
// sockbridge, through the datapath's capture; for direct, not through the
// sidecar at all.
func (b *bench) checkPath(v *variant, before pathMark, conns int) error {
	after := b.markPath(v)
	// HAProxy's log lines reach us through a pipe and a goroutine: on a
	// loaded machine the last ones can trail the workload's end.
	for deadline := time.Now().Add(logGrace); v.logPrefix != "" && after.lines-before.lines < conns && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		after = b.markPath(v)
	}
	lines := after.lines - before.lines
	if v.logPrefix == "" {
		if lines != 0 {
			return fmt.Errorf("direct variant: the sidecar logged %d outbound connections", lines)
		}
		return nil
	}
	if lines < conns {
		return fmt.Errorf("the proxy logged %d %q connections for %d made: traffic did not take this variant's path", lines, v.logPrefix, conns)
	}
	if v.dp != nil && after.captured-before.captured < uint64(conns) {
		return fmt.Errorf("the datapath captured %d connections of %d", after.captured-before.captured, conns)
	}
	return nil
}

// logGrace is how long checkPath waits for the proxy's log lines of a
// finished workload.
const logGrace = 3 * time.Second

func (v *variant) logPrefixOrOutbound() string {
	if v.logPrefix == "" {
		return "outbound"
	}
	return v.logPrefix
}

// countLines counts the lines of p's output that start with prefix and a
// space, as HAProxy's log-format lines do.
func countLines(p *testutil.Proc, prefix string) int {
	n := 0
	for _, l := range strings.Split(p.Output(), "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			n++
		}
	}
	return n
}

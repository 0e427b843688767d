package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// How cost grows (issue 14): the scaling benchmark. The design says the
// per-connection and per-message cost does not depend on how full the maps
// are: pods are found by hash lookups, rules by one hash lookup (ports) and
// one LPM trie lookup per list (ranges), spliced sockets by a sockhash
// lookup. This measures it. A world of its own holds one real captured
// pod with its HAProxy sidecar and a meshed server pod behind its own
// sidecar (variant 5's pods: the datapath with splicing on); for each point
// of each axis the maps are filled to that size, then three things are
// measured, and the maps are emptied again:
//
//   - connect4's BPF run time per call (kernel BPF stats) over Conns
//     sequential connections of the app to the server through its sidecar
//     (the app's connect and the sidecar's upstream connect);
//   - those connections' connect latency, p50 and p99;
//   - the 64 B request/response p50 of the sidecar-to-sidecar path, spliced.
//
// Axes: pods in sb_pods (synthetic pods through UpsertPod, with cgroup ids
// from 2^62 up, which no cgroup has), rules on the real client pod
// (scaling_rules.go), and live sockets in the sockhash (put there by
// sbpeer sockfill from a namespace of their own), with a control point
// holding as many sockets in no map. Rounds interleave the points, in
// alternating order; every point is reported as a ratio to the smallest.

// scaleSettings are the sizes of a scaling run.
type scaleSettings struct {
	Rounds   int
	Pods     []int // pods in sb_pods in all, the two real ones included
	Rules    []int // rules added to the client pod (scaling_rules.go)
	Sockets  []int // sockets in the sockhash
	Unmapped int   // control point: sockets held in no map; 0: none
	Conns    int   // sequential connections per point
	Duration time.Duration
}

func scalingSettings(s settings) scaleSettings {
	if s.Smoke {
		return scaleSettings{Rounds: 1, Pods: []int{2, 10}, Rules: []int{0, 2, 20, maxScaleRules},
			Sockets: []int{0, 100}, Unmapped: 100, Conns: 50, Duration: 300 * time.Millisecond}
	}
	return scaleSettings{Rounds: s.Rounds, Pods: []int{2, 100, 1000, 4000}, Rules: []int{0, 2, 100, maxScaleRules},
		Sockets: []int{0, 10_000, 100_000}, Unmapped: 100_000, Conns: 2000, Duration: 2 * time.Second}
}

// realPods are the pods of the scaling world: the client and the mesh
// server.
const realPods = 2

// syntheticCgroupBase is the first fake cgroup id: cgroup ids count up
// from 1, so no cgroup will ever have one this large.
const syntheticCgroupBase = uint64(1) << 62

// Axes of the scaling benchmark.
const (
	axisPods    = "pods"
	axisRules   = "rules"
	axisSockets = "sockets"
)

// scalePoint is one size on one axis.
type scalePoint struct {
	Axis string
	N    int
	// Unmapped is the sockets axis' control point: N sockets held, in no
	// map.
	Unmapped bool
	// Far is the rules axis' control point: as many rules, with the IPv4
	// ranges far from the destinations (scaleRules).
	Far bool
}

func (p scalePoint) String() string {
	switch {
	case p.Unmapped:
		return fmt.Sprintf("%d in no map", p.N)
	case p.Far:
		return fmt.Sprintf("%d far", p.N)
	case p.Axis == axisPods && p.N == realPods:
		return fmt.Sprintf("%d (the real ones)", p.N)
	}
	return strconv.Itoa(p.N)
}

// points are the points of every axis, in order, smallest first.
func (ss scaleSettings) points() [][]scalePoint {
	var axes [][]scalePoint
	for _, a := range []struct {
		name string
		ns   []int
	}{{axisPods, ss.Pods}, {axisRules, ss.Rules}, {axisSockets, ss.Sockets}} {
		var ps []scalePoint
		for _, n := range a.ns {
			ps = append(ps, scalePoint{Axis: a.name, N: n})
		}
		if a.name == axisSockets && ss.Unmapped > 0 {
			ps = append(ps, scalePoint{Axis: a.name, N: ss.Unmapped, Unmapped: true})
		}
		if a.name == axisRules && len(a.ns) > 0 {
			ps = append(ps, scalePoint{Axis: a.name, N: slices.Max(a.ns), Far: true})
		}
		axes = append(axes, ps)
	}
	return axes
}

// scaleSample is one metric at one point in one round.
type scaleSample struct {
	Round  int
	Point  scalePoint
	Metric string
	Value  float64
}

// scaleCheck is what the maps held at one point: Want entries were asked
// for, Held were there during the measurement (before and after it), and
// After were left once the point was torn down, against Baseline before
// it was set up.
type scaleCheck struct {
	Round                        int
	Point                        scalePoint
	Want, Held, HeldAfter        int
	Baseline, After              int
	HelperSockets, HelperInserts int // sockets axis: what sockfill reported
}

// scaleResults is everything a scaling run measured.
type scaleResults struct {
	Settings scaleSettings
	Command  string
	Samples  []scaleSample
	Checks   []scaleCheck
	Failures []string
	// Note says why nothing was measured, when nothing was.
	Note string
}

// scaleMetrics are the scaling benchmark's metrics, in table order.
var scaleMetrics = []metric{
	{"connect4_ns", "connect4 BPF per call", "ns", false},
	{"connect_p50_us", "connect p50", "µs", false},
	{"connect_p99_us", "connect p99", "µs", false},
	{"splice64_p50_us", "64 B req/resp p50, spliced", "µs", false},
}

// scaler runs the scaling benchmark in its world.
type scaler struct {
	t        testutil.TB
	b        *bench // for its sbpeer runner
	v        *variant
	ss       scaleSettings
	res      *scaleResults
	connect4 map[string]*ebpf.Program
	fillNs   *testutil.Netns
	fillCg   string
}

// runScaling builds the scaling world and runs every round. Environment
// failures end the run through t; a failing point is recorded and the run
// goes on.
func runScaling(t testutil.TB, s settings) *scaleResults {
	t.Helper()
	ss := scalingSettings(s)
	res := &scaleResults{Settings: ss, Command: s.Command}
	ws := s
	ws.Variants = []int{splice}
	w := buildWorld(t, ws)
	v := w.variants[0]
	if v.unavailable != "" {
		res.Note = "the datapath with splicing is not available: " + v.unavailable
		return res
	}
	sc := &scaler{t: t, b: &bench{w: w, s: s, res: &results{}}, v: v, ss: ss, res: res}
	if err := enableBPFStats(t); err != nil {
		res.Note = err.Error()
		return res
	}
	progs, err := bpfPrograms(datapath.MapDir(v.pinDir))
	if err != nil {
		t.Fatalf("find the datapath's programs: %v", err)
	}
	t.Cleanup(func() { closeAll(progs) })
	for name, p := range progs {
		if p.Type() == ebpf.CGroupSockAddr && strings.HasPrefix(name, "connect4") {
			sc.connect4 = map[string]*ebpf.Program{name: p}
		}
	}
	if sc.connect4 == nil {
		t.Fatalf("no connect4 program among the datapath's %d programs", len(progs))
	}
	// One untimed pass first: the first connections after the world is
	// built pay for cold caches and the proxies' start.
	if _, err := sc.measure(); err != nil {
		t.Logf("scaling warm-up: %v", err)
	}
	for r := 1; r <= ss.Rounds; r++ {
		for _, axis := range ss.points() {
			if r%2 == 0 {
				slices.Reverse(axis)
			}
			for _, p := range axis {
				sc.point(r, p)
			}
		}
	}
	return res
}

// point fills the maps to p, measures, and empties them again.
func (sc *scaler) point(r int, p scalePoint) {
	fail := func(err error) {
		msg := fmt.Sprintf("round %d, %s %s: %v", r, p.Axis, p, err)
		sc.res.Failures = append(sc.res.Failures, msg)
		sc.t.Logf("FAILED %s", msg)
	}
	c := scaleCheck{Round: r, Point: p}
	var err error
	if p.Axis == axisSockets {
		// The sockhash empties as the connections an earlier point
		// measured finish closing (a point of another axis does not
		// wait for them): start from rest, or from what is left after
		// settle's wait.
		c.Baseline, err = sc.settle(p.Axis, 0)
	} else {
		c.Baseline, err = sc.count(p.Axis)
	}
	if err != nil {
		fail(err)
		return
	}
	teardown, err := sc.fill(p, &c)
	if err == nil {
		c.Held, err = sc.count(p.Axis)
	}
	var vals map[string]float64
	if err == nil {
		vals, err = sc.measure()
	}
	if err == nil {
		// The measured connections' own sockets leave the sockhash
		// as their close completes.
		c.HeldAfter, err = sc.settle(p.Axis, c.Want)
	}
	if teardown != nil {
		err = errors.Join(err, teardown())
	}
	after, cerr := sc.settle(p.Axis, c.Baseline)
	c.After = after
	sc.res.Checks = append(sc.res.Checks, c)
	if err = errors.Join(err, cerr); err == nil && (c.Held != c.Want || c.HeldAfter != c.Want) {
		err = fmt.Errorf("the maps held %d and %d entries, want %d", c.Held, c.HeldAfter, c.Want)
	}
	if err == nil && c.After != c.Baseline {
		err = fmt.Errorf("%d entries left after the point, %d before it", c.After, c.Baseline)
	}
	if err != nil {
		fail(err)
		return
	}
	var parts []string
	for _, m := range append(scaleMetrics, metric{key: "connect4_calls_per_conn"}) {
		if x, ok := vals[m.key]; ok {
			sc.res.Samples = append(sc.res.Samples, scaleSample{Round: r, Point: p, Metric: m.key, Value: x})
			parts = append(parts, fmt.Sprintf("%s=%.4g", m.key, x))
		}
	}
	sc.t.Logf("scaling round %d %-7s %-18s held %d: %s", r, p.Axis, p, c.Held, strings.Join(parts, " "))
}

// count is what the maps hold on an axis: pods in sb_pods, the client
// pod's rules, or sockets in the sockhash.
func (sc *scaler) count(axis string) (int, error) {
	dp := sc.v.dp
	switch axis {
	case axisPods, axisRules:
		pods, err := dp.Pods()
		if err != nil {
			return 0, fmt.Errorf("read pods: %w", err)
		}
		if axis == axisPods {
			return len(pods), nil
		}
		for _, p := range pods {
			if p.CgroupID == sc.v.pod.id {
				return ruleCount(p), nil
			}
		}
		return 0, errors.New("the client pod is not in the map")
	default:
		n, err := dp.SplicedSockets()
		if err != nil {
			return 0, fmt.Errorf("count spliced sockets: %w", err)
		}
		return n, nil
	}
}

// settle waits up to 30 s for the axis to hold want entries (closed
// sockets leave the sockhash as their close completes) and returns what it
// holds.
func (sc *scaler) settle(axis string, want int) (int, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := sc.count(axis)
		if err != nil || n == want || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fill puts p's entries in the maps, sets c.Want to what the map must then
// hold and returns how to take them out again.
func (sc *scaler) fill(p scalePoint, c *scaleCheck) (func() error, error) {
	switch p.Axis {
	case axisPods:
		return sc.fillPods(p.N, c)
	case axisRules:
		return sc.fillRules(p, c)
	default:
		return sc.fillSockets(p, c)
	}
}

// fillPods adds synthetic pods until sb_pods holds n, each with an IPv4
// address in 100.64.0.0/10 (sb_pod_ips grows too; nothing dials them).
func (sc *scaler) fillPods(n int, c *scaleCheck) (func() error, error) {
	c.Want = max(n, c.Baseline)
	var ids []uint64
	teardown := func() error {
		var errs []error
		for _, id := range ids {
			errs = append(errs, sc.v.dp.DeletePod(id))
		}
		return errors.Join(errs...)
	}
	for i := 0; i < n-c.Baseline; i++ {
		id := syntheticCgroupBase + uint64(i)
		ip := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		pod := meshedPod(id, ip)
		pod.Name = fmt.Sprintf("scaling/synthetic-%d", i)
		ids = append(ids, id)
		if err := sc.v.dp.UpsertPod(pod); err != nil {
			return teardown, fmt.Errorf("add synthetic pod %d: %w", i, err)
		}
	}
	return teardown, nil
}

// fillRules gives the client pod p.N rules beyond its fixed ones.
func (sc *scaler) fillRules(p scalePoint, c *scaleCheck) (func() error, error) {
	n := p.N
	pod := meshedPod(sc.v.pod.id, sc.v.pod.ns.Addr)
	restore := func() error { return sc.v.dp.UpsertPod(pod) }
	targets := []netip.Addr{serverIP, sc.v.mesh.pod.ns.Addr}
	withRules := pod
	var err error
	withRules.Outbound, withRules.Inbound, err = scaleRules(n, targets, []uint16{echoPort, sinkPort, 15001, 15006}, p.Far)
	if err != nil {
		return nil, err
	}
	c.Want = ruleCount(withRules)
	if err := sc.v.dp.UpsertPod(withRules); err != nil {
		return restore, fmt.Errorf("put %d rules on the client pod: %w", n, err)
	}
	return restore, nil
}

// fillSockets starts sbpeer sockfill processes holding p.N sockets in
// all, in the sockhash unless p is the control point. One process holds
// at most what RLIMIT_NOFILE's hard limit lets it open (raising it takes
// CAP_SYS_RESOURCE, which a container may not have), so the sockets are
// spread over as many as it takes, each with listening addresses of its
// own.
func (sc *scaler) fillSockets(p scalePoint, c *scaleCheck) (func() error, error) {
	c.Want = c.Baseline
	if !p.Unmapped {
		c.Want += p.N
	}
	if p.N == 0 {
		return nil, nil
	}
	if sc.fillNs == nil {
		w := sc.b.w
		sc.fillNs = testutil.NewNetns(sc.t, w.net.Prefix()+"-fill")
		// Room for 64k connections per listening address.
		sc.fillNs.Sysctl(sc.t, "net.ipv4.ip_local_port_range", "1024 65000")
		sc.fillCg = testutil.Cgroup(sc.t, w.root, "fill")
	}
	per, err := socketsPerProcess()
	if err != nil {
		return nil, err
	}
	var procs []*testutil.Proc
	teardown := func() error {
		for _, proc := range procs {
			proc.Stop()
		}
		return nil
	}
	for left, block := p.N, 1; left > 0; block++ {
		n := min(left, per)
		left -= n
		args := []string{sc.b.w.sbpeer, "sockfill", "-n", strconv.Itoa(n), "-listeners", "1", "-block", strconv.Itoa(block)}
		if !p.Unmapped {
			args = append(args, "-pin", datapath.MapDir(sc.v.pinDir)+"/sb_sockhash")
		}
		procs = append(procs, testutil.Start(sc.t, testutil.ProcSpec{Netns: sc.fillNs, Cgroup: sc.fillCg, Args: args}))
	}
	for _, proc := range procs {
		if !proc.WaitOutput("\"sockets\"", 3*time.Minute) {
			return teardown, fmt.Errorf("sockfill did not get ready: %s", proc.Output())
		}
		var fill peer.SockFill
		if err := json.Unmarshal([]byte(strings.TrimSpace(proc.Output())), &fill); err != nil {
			return teardown, fmt.Errorf("decode sockfill output %q: %w", proc.Output(), err)
		}
		c.HelperSockets += fill.Sockets
		c.HelperInserts += fill.Inserted
	}
	if wantIns := c.Want - c.Baseline; c.HelperSockets != p.N || c.HelperInserts != wantIns {
		return teardown, fmt.Errorf("sockfill holds %d sockets, %d in the sockhash; want %d, %d", c.HelperSockets, c.HelperInserts, p.N, wantIns)
	}
	return teardown, nil
}

// socketsPerProcess is how many sockets one sockfill may hold: an even
// number below the hard RLIMIT_NOFILE it inherits, with room for the
// runtime's own files.
func socketsPerProcess() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	per := int(min(lim.Max, 1<<20)) - 512
	if per < 2 {
		return 0, fmt.Errorf("RLIMIT_NOFILE hard limit %d leaves no room for sockets", lim.Max)
	}
	return per &^ 1, nil
}

// measure runs the connection and splice workloads once and returns their
// metrics.
func (sc *scaler) measure() (map[string]float64, error) {
	v, dp := sc.v, sc.v.dp
	stats, err := dp.Stats()
	if err != nil {
		return nil, fmt.Errorf("read datapath counters: %w", err)
	}
	captured := stats.Get("captured")
	start, err := readProgStats(sc.connect4)
	if err != nil {
		return nil, err
	}
	r, err := sc.b.runConns(v, sc.ss.Conns, 1)
	if err != nil {
		return nil, fmt.Errorf("connections: %w", err)
	}
	end, err := readProgStats(sc.connect4)
	if err != nil {
		return nil, err
	}
	if stats, err = dp.Stats(); err != nil {
		return nil, fmt.Errorf("read datapath counters: %w", err)
	}
	if got := stats.Get("captured") - captured; got < uint64(r.OK) {
		return nil, fmt.Errorf("the datapath captured %d of %d connections", got, r.OK)
	}
	var runs uint64
	var ns time.Duration
	for name, e := range end {
		runs += e.runs - start[name].runs
		ns += e.runtime - start[name].runtime
	}
	if runs == 0 {
		return nil, errors.New("connect4 did not run")
	}
	vals := map[string]float64{
		"connect4_ns": float64(ns.Nanoseconds()) / float64(runs),
		// In scaling.csv only: how many of those calls one connection
		// makes (the app's and the sidecar's upstream connect).
		"connect4_calls_per_conn": float64(runs) / float64(r.OK),
		"connect_p50_us":          r.P50Ms * 1000,
		"connect_p99_us":          r.P99Ms * 1000,
	}
	redirected, err := spliceRedirected(v)
	if err != nil {
		return nil, err
	}
	var rr peer.ReqResp
	err = sc.b.sbpeer(v, &rr, sc.ss.Duration+time.Minute, "reqresp", "-addr", v.mesh.addr,
		"-size", "64", "-n", "1000000", "-duration", sc.ss.Duration.String())
	switch {
	case err != nil:
		return nil, err
	case !rr.Intact:
		return nil, fmt.Errorf("responses not intact after %d requests: %s", rr.Requests, rr.FirstErr)
	case rr.Requests == 0:
		return nil, errors.New("no request completed")
	}
	if ap, err := netip.ParseAddrPort(rr.ServerSaw); err != nil || ap.Addr() != passthroughSource {
		return nil, fmt.Errorf("the mesh server saw source %q, want %s: the server sidecar was skipped", rr.ServerSaw, passthroughSource)
	}
	after, err := spliceRedirected(v)
	if err != nil {
		return nil, err
	}
	if after == redirected {
		return nil, errors.New("sk_msg redirected no message: the sidecar-to-sidecar path was not spliced")
	}
	vals["splice64_p50_us"] = rr.P50Us
	return vals, nil
}

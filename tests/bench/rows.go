package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// The IPv6 row (ipv6.go) and the inbound row (inbound.go) each compare
// sockbridge with istio-iptables' rules on one path, as the DNS row does:
// a world of their own, two variants (the rules first, sockbridge second),
// interleaved rounds that alternate which variant goes first. This file
// holds what the two rows share: the variant's shape, the workloads, the
// check that every connection took the variant's path, and the report.

// rowVariant is one side of a row.
type rowVariant struct {
	name   string
	client testutil.ProcSpec // where sbpeer's client runs (no Args)
	addr   string            // what the client dials
	// ctNS and ctFamily are where conntrack entries are counted.
	ctNS     *testutil.Netns
	ctFamily string
	// server is the echo server (sbpeer serve -log) the connections end
	// at; every connection it accepts during a run must come from source.
	server *testutil.Proc
	source netip.Addr
	// through are counters that must each grow by at least one per
	// connection: the sidecar's own log of what it dialled, the
	// datapath's capture counter.
	through []pathCounter
	// diagNS are the namespaces whose TCP counters and sockets are shown
	// when connections fail.
	diagNS []*testutil.Netns
	dp     *datapath.Datapath
}

// pathCounter is one count that grows by one per connection that took a
// variant's path.
type pathCounter struct {
	what string
	read func() (uint64, error)
}

// rowSample is one metric of one variant in one round.
type rowSample struct {
	Round   int
	Variant string
	Metric  string
	Value   float64
}

// rowResults is what one row measured.
type rowResults struct {
	Settings settings
	Key      string // file names: <key>.csv, <key>.rules
	Title    string
	Method   string
	Variants []string // the rules' variant first, sockbridge second
	Samples  []rowSample
	Failures []string
	// Made and Failed count every connection of the connection-rate and
	// conntrack runs, by variant: failed ones are never retried.
	Made, Failed map[string]int64
	// CTFromTable counts conntrack runs counted from the table because
	// `conntrack -E` lost events (ENOBUFS) on a busy machine.
	CTFromTable int
	Rules       string
	Counters    map[string]uint64 // sockbridge's datapath counters at the end
	CounterKeys []string          // which of them the report shows
	Diagnostics []string          // TCP counters and sockets after failed connections
}

// rowMetrics are the numbers each row reports per variant and round.
var rowMetrics = []metric{
	{"conn_per_s", "connect + 1 B echo + close", "conn/s", true},
	{"conn_p99_ms", "connect p99", "ms", false},
	{"rr64_p50_us", "64 B request/response p50", "µs", false},
	{"rr64_p99_us", "64 B request/response p99", "µs", false},
	{"ct_per_conn", "conntrack entries per connection", "", false},
	{"out_noroutes", "unroutable packets per connection-rate run", "", false},
	{"lastack_left", "sockets left in LAST-ACK after it", "", false},
}

// rowWorkload runs once against one variant and returns its metrics and
// how many connections it opened.
type rowWorkload struct {
	name string
	run  func(v *rowVariant) (map[string]float64, int, error)
}

// rowBench runs one row.
type rowBench struct {
	t      testutil.TB
	s      settings
	sbpeer string
	res    *rowResults
	round  int
}

func newRowResults(s settings, key, title string, variants []string) *rowResults {
	return &rowResults{Settings: s, Key: key, Title: title, Variants: variants,
		Made: map[string]int64{}, Failed: map[string]int64{}}
}

// runRow runs every round: for each workload both variants in turn, the
// first one alternating from round to round.
func runRow(t testutil.TB, s settings, sbpeer string, res *rowResults, vs []*rowVariant) {
	t.Helper()
	b := &rowBench{t: t, s: s, sbpeer: sbpeer, res: res}
	wls := []rowWorkload{
		{"conns", b.conns},
		{"rr64", b.reqresp},
		{"conntrack", b.conntrack},
	}
	for r := 1; r <= s.Rounds; r++ {
		b.round = r
		k := (r - 1) % len(vs)
		order := append(append([]*rowVariant{}, vs[k:]...), vs[:k]...)
		for _, wl := range wls {
			for _, v := range order {
				b.runOne(wl, v)
			}
		}
	}
	for _, v := range vs {
		if v.dp == nil {
			continue
		}
		if st, err := v.dp.Stats(); err == nil {
			res.Counters = st
		}
	}
}

func (b *rowBench) runOne(wl rowWorkload, v *rowVariant) {
	before, err := markRow(v)
	var vals map[string]float64
	var conns int
	if err == nil {
		vals, conns, err = wl.run(v)
	}
	if err == nil {
		err = checkRowPath(v, before, conns)
	}
	if err != nil {
		msg := fmt.Sprintf("round %d, %s, %s, %s: %v", b.round, b.res.Key, wl.name, v.name, err)
		b.res.Failures = append(b.res.Failures, msg)
		b.t.Logf("FAILED %s", msg)
		return
	}
	var parts []string
	for _, m := range rowMetrics {
		if x, ok := vals[m.key]; ok {
			b.res.Samples = append(b.res.Samples, rowSample{Round: b.round, Variant: v.name, Metric: m.key, Value: x})
			parts = append(parts, fmt.Sprintf("%s=%.4g", m.key, x))
		}
	}
	b.t.Logf("round %d %-8s %-10s %-36s %s", b.round, b.res.Key, wl.name, v.name, strings.Join(parts, " "))
}

// conns opens Conns connections, ConnsParallel at a time. A failed
// connection fails the run; the namespaces' TCP counters and sockets are
// kept for the report.
//
// It also counts, in the variant's namespaces, the packets the kernel
// could not route (Ip6OutNoRoutes and IpOutNoRoutes) during the run and the
// sockets still in LAST-ACK a moment after it: the traces of a connection
// whose close was never acknowledged (docs/benchmark.md, "Caveats").
func (b *rowBench) conns(v *rowVariant) (map[string]float64, int, error) {
	before := map[*testutil.Netns]map[string]uint64{}
	for _, ns := range v.diagNS {
		before[ns] = nstat(ns)
	}
	r, err := b.runConns(v, b.s.Conns, b.s.ConnsParallel)
	if err != nil {
		return nil, 0, err
	}
	time.Sleep(300 * time.Millisecond) // ordinary closes finish in microseconds
	var noroutes uint64
	lastAck := 0
	for _, ns := range v.diagNS {
		after := nstat(ns)
		for _, k := range []string{"Ip6OutNoRoutes", "IpOutNoRoutes"} {
			noroutes += after[k] - before[ns][k]
		}
		lastAck += lastAckSockets(ns)
	}
	return map[string]float64{"conn_per_s": r.PerSec, "conn_p99_ms": r.P99Ms,
		"out_noroutes": float64(noroutes), "lastack_left": float64(lastAck)}, int(r.OK), nil
}

// lastAckSockets counts the namespace's TCP sockets in LAST-ACK.
func lastAckSockets(ns *testutil.Netns) int {
	out, err := exec.Command("nsenter", "--net="+ns.Path(), "--", "ss", "-Htan", "state", "last-ack").Output()
	if err != nil {
		return -1
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

// runConns runs `sbpeer conns` and accounts for every connection.
func (b *rowBench) runConns(v *rowVariant, n, parallel int) (peer.Conns, error) {
	before := map[*testutil.Netns]map[string]uint64{}
	for _, ns := range v.diagNS {
		before[ns] = nstat(ns)
	}
	var r peer.Conns
	err := b.run(v, &r, 5*time.Minute, "conns", "-addr", v.addr, "-n", strconv.Itoa(n), "-parallel", strconv.Itoa(parallel))
	if err != nil {
		return r, err
	}
	b.res.Made[v.name] += r.OK + r.Failed
	b.res.Failed[v.name] += r.Failed
	switch {
	case r.Failed > 0:
		diag := b.diagnose(v, before)
		return r, fmt.Errorf("%d of %d connections failed (not retried), first: %s; all: %s; %s",
			r.Failed, n, r.FirstErr, strings.Join(r.Errors, ", "), diag)
	case r.OK == 0:
		return r, errors.New("no connection completed")
	}
	return r, nil
}

// reqresp runs 64 B requests over one connection for Duration.
func (b *rowBench) reqresp(v *rowVariant) (map[string]float64, int, error) {
	var r peer.ReqResp
	err := b.run(v, &r, b.s.Duration+time.Minute, "reqresp", "-addr", v.addr,
		"-size", "64", "-n", strconv.Itoa(b.s.ReqMax), "-duration", b.s.Duration.String())
	if err := reqRespOK(r, err); err != nil {
		return nil, 0, err
	}
	if ap, err := netip.ParseAddrPort(r.ServerSaw); err != nil || ap.Addr() != v.source {
		return nil, 0, fmt.Errorf("the server saw source %q, want %s", r.ServerSaw, v.source)
	}
	return map[string]float64{"rr64_p50_us": r.P50Us, "rr64_p99_us": r.P99Us}, 1, nil
}

// conntrack counts the conntrack entries (TCP, of the row's family)
// CTConns sequential connections create (countConntrack), in a run of its
// own so the counting slows no measured run.
func (b *rowBench) conntrack(v *rowVariant) (map[string]float64, int, error) {
	return ctPerConn(b.t, fmt.Sprintf("round %d %s %s", b.round, b.res.Key, v.name), ctScope{ns: v.ctNS, proto: "tcp", family: v.ctFamily},
		&b.res.CTFromTable, func() (peer.Conns, error) { return b.runConns(v, b.s.CTConns, 1) })
}

// run runs sbpeer as the variant's client and decodes its JSON.
func (b *rowBench) run(v *rowVariant, out any, timeout time.Duration, args ...string) error {
	spec := v.client
	spec.Args = append([]string{b.sbpeer}, args...)
	raw, err := testutil.Output(b.t, timeout, spec)
	if err != nil {
		return fmt.Errorf("sbpeer: %w", err)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decode sbpeer %s output %q: %w", args[0], raw, err)
	}
	return nil
}

// rowMark is what the server and the path counters had counted before a
// run.
type rowMark struct {
	accepted, fromSource int
	through              []uint64
}

func markRow(v *rowVariant) (rowMark, error) {
	var m rowMark
	m.accepted, m.fromSource = countAccepted(v.server, v.source)
	for _, c := range v.through {
		n, err := c.read()
		if err != nil {
			return m, fmt.Errorf("read %s: %w", c.what, err)
		}
		m.through = append(m.through, n)
	}
	return m, nil
}

// checkRowPath makes sure the run's conns connections took the variant's
// path: the server accepted exactly that many, every one from the
// expected source (for the inbound row, the sidecar's passthrough
// 127.0.0.6: a connection that skipped the sidecar comes from the
// client), and every path counter grew by at least as many. The server's
// own lines are counted, not the proxy's log: HAProxy drops log lines
// under load, sbpeer's blocking writes do not.
func checkRowPath(v *rowVariant, before rowMark, conns int) error {
	var after rowMark
	var err error
	for deadline := time.Now().Add(logGrace); ; time.Sleep(20 * time.Millisecond) {
		if after, err = markRow(v); err != nil {
			return err
		}
		done := after.accepted-before.accepted >= conns
		for i := range v.through {
			done = done && after.through[i]-before.through[i] >= uint64(conns)
		}
		if done || time.Now().After(deadline) {
			break
		}
	}
	if n, src := after.accepted-before.accepted, after.fromSource-before.fromSource; n != conns || src != conns {
		return fmt.Errorf("the server accepted %d connections, %d of them from %s, for %d made: traffic did not take this variant's path", n, src, v.source, conns)
	}
	for i, c := range v.through {
		if d := after.through[i] - before.through[i]; d < uint64(conns) {
			return fmt.Errorf("%s grew by %d for %d connections: traffic did not take this variant's path", c.what, d, conns)
		}
	}
	return nil
}

// countAccepted counts the "accepted <peer>" lines of `sbpeer serve -log`:
// all of them, and those whose peer address is source.
func countAccepted(server *testutil.Proc, source netip.Addr) (all, from int) {
	for _, l := range strings.Split(server.Output(), "\n") {
		p, ok := strings.CutPrefix(l, "accepted ")
		if !ok {
			continue
		}
		all++
		if ap, err := netip.ParseAddrPort(strings.TrimSpace(p)); err == nil && ap.Addr().Unmap() == source {
			from++
		}
	}
	return all, from
}

// counterOf is a pathCounter for one datapath counter.
func counterOf(dp *datapath.Datapath, name string) pathCounter {
	return pathCounter{what: "sockbridge's " + name + " counter", read: func() (uint64, error) {
		st, err := dp.Stats()
		if err != nil {
			return 0, err
		}
		return st.Get(name), nil
	}}
}

// linesOf is a pathCounter for the lines of p's output that contain s.
func linesOf(what string, p *testutil.Proc, s string) pathCounter {
	return pathCounter{what: what, read: func() (uint64, error) {
		return uint64(strings.Count(p.Output(), s)), nil
	}}
}

// rowPod is a pod of a row: a namespace and kubelet-style cgroups.
type rowPod struct {
	ns                 *testutil.Netns
	cgroup, app, proxy string
	id                 uint64
}

// newRowPod builds a pod below parent with the benchmark's TCP sysctls
// (env.go's addPod): room for every connection of a run.
func newRowPod(t testutil.TB, nw *testutil.Network, name, parent string, addrs ...netip.Addr) *rowPod {
	t.Helper()
	ns := nw.AddHost(name, addrs...)
	ns.Sysctl(t, "net.ipv4.ip_local_port_range", "1024 65000")
	ns.Sysctl(t, "net.ipv4.tcp_tw_reuse", "1")
	podCg := testutil.Cgroup(t, parent, filepath.Join("kubepods", "burstable", "pod0000-"+testutil.RandomSuffix()))
	return &rowPod{ns: ns, cgroup: podCg, app: testutil.Cgroup(t, podCg, "app"),
		proxy: testutil.Cgroup(t, podCg, "istio-proxy"), id: testutil.CgroupID(t, podCg)}
}

// startEcho runs `sbpeer serve -log` on listen in ns and cgroup.
func startEcho(t testutil.TB, sbpeer string, ns *testutil.Netns, cgroup, listen string, port int) *testutil.Proc {
	t.Helper()
	p := testutil.Start(t, testutil.ProcSpec{Netns: ns, Cgroup: cgroup,
		Args: []string{sbpeer, "serve", "-log", "-listen", listen}})
	testutil.WaitListening(t, ns, port)
	return p
}

// loadRowDatapath attaches a datapath of its own to cgroup.
func loadRowDatapath(t testutil.TB, cgroup string, inbound bool) *datapath.Datapath {
	t.Helper()
	cfg := datapath.IstioDefaults()
	cfg.CgroupPath, cfg.PinDir, cfg.Inbound = cgroup, testutil.PinDir(t), inbound
	t.Cleanup(func() {
		if err := datapath.Uninstall(cfg.PinDir); err != nil {
			t.Logf("uninstall datapath %s: %v", cfg.PinDir, err)
		}
	})
	dp, err := datapath.Load(cfg)
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// restoreRules loads rules with iptables-restore or ip6tables-restore
// (cmd) into ns, never the host's, and returns the nat table as the
// matching -save shows it.
func restoreRules(t testutil.TB, ns *testutil.Netns, cmd, rules string) string {
	t.Helper()
	if !strings.HasPrefix(ns.Name, netnsPrefix) {
		t.Fatalf("refusing to load rules into namespace %q, which the benchmark did not create", ns.Name)
	}
	c := exec.Command("nsenter", "--net="+ns.Path(), "--", cmd, "--noflush")
	c.Stdin = strings.NewReader(rules)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s in %s: %v\n%s", cmd, ns.Name, err, out)
	}
	return ns.Exec(t, strings.Replace(cmd, "-restore", "-save", 1), "-t", "nat")
}

// nstat returns the namespace's SNMP and netstat counters (nstat -asz),
// nil when nstat fails: diagnostics only.
func nstat(ns *testutil.Netns) map[string]uint64 {
	out, err := exec.Command("nsenter", "--net="+ns.Path(), "--", "nstat", "-asz").Output()
	if err != nil {
		return nil
	}
	m := map[string]uint64{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				m[f[0]] = v
			}
		}
	}
	return m
}

// diagCounters are the TCP counters the report names after failed
// connections; every counter that moved goes to <key>-diagnostics.txt.
var diagCounters = []string{"TcpExtTCPSYNChallenge", "TcpExtTCPChallengeACK", "TcpExtTCPTimeWaitOverflow",
	"TcpExtTW", "TcpExtTWRecycled", "TcpExtPAWSEstab", "TcpExtTCPACKSkippedSynRecv", "TcpExtTCPACKSkippedChallenge",
	"TcpAttemptFails", "TcpExtTCPSynRetrans", "TcpExtListenDrops", "TcpExtListenOverflows", "TcpExtTCPAbortOnTimeout"}

// diagnose records what the namespaces' TCP counters did during the failed
// run and which sockets are left, and returns a summary for the failure.
func (b *rowBench) diagnose(v *rowVariant, before map[*testutil.Netns]map[string]uint64) string {
	var summary []string
	for _, ns := range v.diagNS {
		after := nstat(ns)
		var moved, named []string
		for _, k := range slices.Sorted(maps.Keys(after)) {
			if d := after[k] - before[ns][k]; d > 0 {
				moved = append(moved, fmt.Sprintf("%s +%d", k, d))
				if slices.Contains(diagCounters, k) {
					named = append(named, fmt.Sprintf("%s +%d", k, d))
				}
			}
		}
		states, sockets := ssStates(ns)
		summary = append(summary, fmt.Sprintf("%s: %s; sockets %s", ns.Name, strings.Join(named, " "), states))
		b.res.Diagnostics = append(b.res.Diagnostics, fmt.Sprintf("round %d, %s, %s: %s\ncounters that moved: %s\nnon-established sockets:\n%s",
			b.round, v.name, ns.Name, states, strings.Join(moved, ", "), sockets))
	}
	return strings.Join(summary, " | ")
}

// ssStates counts the namespace's TCP sockets by state and lists those
// neither listening, established nor in TIME-WAIT (at most 20).
func ssStates(ns *testutil.Netns) (string, string) {
	out, err := exec.Command("nsenter", "--net="+ns.Path(), "--", "ss", "-Htan").Output()
	if err != nil {
		return "ss failed: " + err.Error(), ""
	}
	count := map[string]int{}
	var odd []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		count[f[0]]++
		if f[0] != "LISTEN" && f[0] != "ESTAB" && f[0] != "TIME-WAIT" && len(odd) < 20 {
			odd = append(odd, l)
		}
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(count)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, count[k]))
	}
	return strings.Join(parts, " "), strings.Join(odd, "\n")
}

// values are the samples of one variant and metric.
func (r *rowResults) values(variant, metric string) []float64 {
	var v []float64
	for _, s := range r.Samples {
		if s.Variant == variant && s.Metric == metric {
			v = append(v, s.Value)
		}
	}
	return v
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// markdown is the row's section of the report: medians over rounds with
// min–max, and sockbridge's median over the rules'.
func (r *rowResults) markdown() string {
	var b strings.Builder
	s := r.Settings
	fmt.Fprintf(&b, "\n## %s\n\n%s %d round(s), both variants per round, alternating which goes first; medians (min–max).\n\n",
		r.Title, r.Method, s.Rounds)
	base, sb := r.Variants[0], r.Variants[1]
	fmt.Fprintf(&b, "| metric | %s | %s | %s / %s |\n|---|---:|---:|---:|\n", base, sb, shortName(sb), shortName(base))
	for _, m := range rowMetrics {
		label := m.label
		if m.unit != "" {
			label += " (" + m.unit + ")"
		}
		cells := []string{label}
		for _, v := range r.Variants {
			vals := r.values(v, m.key)
			if len(vals) == 0 {
				cells = append(cells, "—")
				continue
			}
			f := "%.0f"
			if m.key == "conn_p99_ms" || m.key == "ct_per_conn" {
				f = "%.2f"
			}
			cells = append(cells, medRange(vals, f))
		}
		ratio := "—"
		if bm, sm := median(r.values(base, m.key)), median(r.values(sb, m.key)); bm > 0 && !math.IsNaN(sm) {
			ratio = fmt.Sprintf("%.2fx", sm/bm)
		}
		cells = append(cells, ratio)
		fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
	}
	b.WriteString("\nFailed connections (connection-rate and conntrack runs, never retried): ")
	var parts []string
	for _, v := range r.Variants {
		parts = append(parts, fmt.Sprintf("%s %d of %d", v, r.Failed[v], r.Made[v]))
	}
	b.WriteString(strings.Join(parts, "; ") + ".\n")
	writeCTFromTable(&b, r.CTFromTable)
	if len(r.CounterKeys) > 0 {
		var cs []string
		for _, k := range r.CounterKeys {
			cs = append(cs, fmt.Sprintf("%s=%d", k, r.Counters[k]))
		}
		fmt.Fprintf(&b, "\nsockbridge's counters at the end: %s.\n", strings.Join(cs, " "))
	}
	writeFailureList(&b, "\n"+r.Key+" failures:\n\n", r.Failures)
	return b.String()
}

// shortName is a variant's name up to its first space or parenthesis.
func shortName(v string) string {
	if i := strings.IndexAny(v, " ("); i > 0 {
		return v[:i]
	}
	return v
}

// writeFiles appends the row's section to results.md and writes
// <key>.csv, <key>.rules and, after failed connections,
// <key>-diagnostics.txt.
func (r *rowResults) writeFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create results directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "results.md"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("append %s results: %w", r.Key, err)
	}
	_, werr := f.WriteString(r.markdown())
	if err := f.Close(); werr != nil || err != nil {
		return fmt.Errorf("append %s results: %w", r.Key, errors.Join(werr, err))
	}
	var csv strings.Builder
	csv.WriteString("round,variant,metric,value\n")
	for _, s := range r.Samples {
		fmt.Fprintf(&csv, "%d,%q,%s,%g\n", s.Round, s.Variant, s.Metric, s.Value)
	}
	files := map[string]string{r.Key + ".csv": csv.String(), r.Key + ".rules": r.Rules}
	if len(r.Diagnostics) > 0 {
		files[r.Key+"-diagnostics.txt"] = strings.Join(r.Diagnostics, "\n\n") + "\n"
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// rowTools are the programs the rows run besides requiredTools.
func rowTools(s settings) []string {
	var tools []string
	if s.IPv6 {
		tools = append(tools, "ss-redir", "ss-server", "ip6tables-restore", "ip6tables-save")
	}
	if s.IPv6 || s.Inbound {
		tools = append(tools, "nstat")
	}
	return tools
}

// startRowsOnly starts results.md for a run without the five-variant
// table (-main=false): the rows append their sections to it.
func startRowsOnly(s settings) error {
	if err := os.MkdirAll(s.Out, 0o755); err != nil {
		return fmt.Errorf("create results directory: %w", err)
	}
	head := fmt.Sprintf("# sockbridge benchmark: rows only\n\n`%s`, %d round(s); load average at the start: %s.\n",
		s.Command, s.Rounds, readMachineState().LoadAvg)
	if err := os.WriteFile(filepath.Join(s.Out, "results.md"), []byte(head), 0o644); err != nil {
		return fmt.Errorf("write results.md: %w", err)
	}
	return nil
}

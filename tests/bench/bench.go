package main

import (
	"fmt"
	"maps"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
)

// settings are the benchmark's knobs (see flags in main.go).
type settings struct {
	Rounds        int
	Smoke         bool
	Out           string
	Duration      time.Duration // per request/response run
	ReqMax        int           // at most this many requests per run
	BulkBytes     int64
	Conns         int
	ConnsParallel int
	CTConns       int
	Variants      []int
	Sbpeer        string // prebuilt sbpeer; "" builds it
	DNS           bool   // run the DNS row too (dns.go)
	Steps         bool   // run the per-step cost section too (steps.go)
	StepsOnly     bool   // run only the per-step cost section
	IPv6          bool   // run the IPv6 row too (ipv6.go)
	Inbound       bool   // run the inbound row too (inbound.go)
	Main          bool   // run the five-variant table (off: only the rows)
	Scaling       bool   // run the scaling benchmark too (scaling.go)
	Command       string // how the run was started, for the report
}

func defaultSettings() settings {
	return settings{
		Rounds: 3, Out: "bench-results", Duration: 3 * time.Second, ReqMax: 1_000_000,
		BulkBytes: 1 << 30, Conns: 3000, ConnsParallel: 4, CTConns: 500,
		Variants: []int{direct, explicit, iptables, sockbridge, splice},
		IPv6:     true, Inbound: true, Main: true,
	}
}

// smoke shrinks s to a one-round check that every variant moves its bytes.
func (s settings) smoke() settings {
	s.Smoke, s.Rounds = true, 1
	s.Duration, s.ReqMax = 300*time.Millisecond, 200
	s.BulkBytes, s.Conns, s.ConnsParallel, s.CTConns = 8<<20, 50, 2, 20
	return s
}

// requiredTools are the programs the benchmark runs.
var requiredTools = []string{"haproxy", "iptables-restore", "iptables-save", "conntrack", "ss", "sysctl"}

// sample is one metric of one variant in one round.
type sample struct {
	Round   int
	Variant int
	Metric  string
	Value   float64
}

// bpfSample is one program's run time per call over one round.
type bpfSample struct {
	Round     int
	Variant   int
	Program   string
	Runs      uint64
	NsPerCall float64
}

// results is everything a run measured, for the report.
type results struct {
	Settings  settings
	Variants  []variantInfo
	Samples   []sample
	BPF       []bpfSample
	BPFNote   string
	Failures  []string
	Env       map[string]string
	Before    machineState
	After     machineState
	IptRules  string
	DatapathC map[int]map[string]uint64 // datapath counters at the end, by variant
	// Cost is each datapath program's run time over each connection-rate
	// and mesh run (cost.go).
	Cost []progCost
	// CTFromTable counts conntrack runs counted from the table because
	// `conntrack -E` lost events (ENOBUFS) (countConntrack).
	CTFromTable int
}

type variantInfo struct {
	ID          int
	Name        string
	Unavailable string
}

type bench struct {
	w   *world
	s   settings
	res *results
	// progs are each datapath's BPF programs, by variant.
	progs map[int]map[string]*ebpf.Program
	// curRound is the round being run.
	curRound int
}

// runBench builds the world, runs every round and returns what it measured.
// Environment failures end the run through t; a failing workload is
// recorded in the results and the run goes on.
func runBench(t testutil.TB, s settings) *results {
	t.Helper()
	res := &results{Settings: s, Env: environment(), DatapathC: map[int]map[string]uint64{}}
	res.Before = readMachineState()
	w := buildWorld(t, s)
	b := &bench{w: w, s: s, res: res, progs: map[int]map[string]*ebpf.Program{}}
	for _, v := range w.variants {
		res.Variants = append(res.Variants, variantInfo{ID: v.id, Name: v.name, Unavailable: v.unavailable})
	}
	res.IptRules = w.iptRules
	b.setupBPFStats()
	for r := 1; r <= s.Rounds; r++ {
		b.round(r)
	}
	b.datapathCounters()
	res.After = readMachineState()
	return res
}

// round runs every workload once against every variant, interleaved: for
// each workload all variants in turn, starting one variant later each round.
func (b *bench) round(r int) {
	vs := b.available()
	if len(vs) == 0 {
		return
	}
	k := (r - 1) % len(vs)
	order := append(append([]*variant{}, vs[k:]...), vs[:k]...)
	b.curRound = r
	start := b.bpfSnapshot()
	for _, wl := range b.workloads() {
		for _, v := range order {
			if wl.applies != nil && !wl.applies(v) {
				continue
			}
			b.runOne(r, wl, v)
		}
	}
	b.bpfRound(r, start)
}

func (b *bench) available() []*variant {
	var vs []*variant
	for _, v := range b.w.variants {
		if v.unavailable == "" {
			vs = append(vs, v)
		}
	}
	return vs
}

func (b *bench) runOne(r int, wl workload, v *variant) {
	before := b.markPath(v)
	costs := len(b.res.Cost)
	vals, conns, err := wl.run(v)
	if err == nil {
		err = b.checkPath(v, before, conns)
	}
	if err != nil {
		b.res.Cost = b.res.Cost[:costs] // a failed run's BPF time is left out too
		msg := fmt.Sprintf("round %d, %s, variant %d (%s): %v", r, wl.name, v.id, v.name, err)
		b.res.Failures = append(b.res.Failures, msg)
		b.w.t.Logf("FAILED %s", msg)
		return
	}
	var parts []string
	for _, m := range allMetrics() {
		if x, ok := vals[m.key]; ok {
			b.res.Samples = append(b.res.Samples, sample{Round: r, Variant: v.id, Metric: m.key, Value: x})
			parts = append(parts, fmt.Sprintf("%s=%.4g", m.key, x))
		}
	}
	b.w.t.Logf("round %d %-10s %d %-20s %s", r, wl.name, v.id, v.name, strings.Join(parts, " "))
}

// setupBPFStats turns on BPF run-time accounting and finds the programs of
// every datapath; without them the BPF table says why it is empty.
func (b *bench) setupBPFStats() {
	if err := enableBPFStats(b.w.t); err != nil {
		b.res.BPFNote = err.Error()
		return
	}
	for _, v := range b.available() {
		if v.dp == nil {
			continue
		}
		// The maps are pinned in the layout's directory (layout 2:
		// <pin dir>/v2), the links elsewhere.
		progs, err := bpfPrograms(datapath.MapDir(v.pinDir))
		if err != nil {
			b.res.BPFNote = err.Error()
			continue
		}
		b.w.t.Cleanup(func() { closeAll(progs) })
		b.progs[v.id] = progs
	}
}

func (b *bench) bpfSnapshot() map[int]map[string]progStat {
	snap := map[int]map[string]progStat{}
	for id, progs := range b.progs {
		if s, err := readProgStats(progs); err == nil {
			snap[id] = s
		}
	}
	return snap
}

// bpfRound records each program's run time per call during round r.
func (b *bench) bpfRound(r int, start map[int]map[string]progStat) {
	snap := b.bpfSnapshot()
	for _, id := range slices.Sorted(maps.Keys(snap)) {
		end := snap[id]
		for _, name := range slices.Sorted(maps.Keys(end)) {
			e, s := end[name], start[id][name]
			runs := e.runs - s.runs
			if runs == 0 {
				continue
			}
			ns := float64((e.runtime - s.runtime).Nanoseconds()) / float64(runs)
			b.res.BPF = append(b.res.BPF, bpfSample{Round: r, Variant: id, Program: name, Runs: runs, NsPerCall: ns})
		}
	}
}

// datapathCounters keeps the datapaths' own counters (captured, and the
// splice counters once they exist) for the report.
func (b *bench) datapathCounters() {
	for _, v := range b.available() {
		if v.dp == nil {
			continue
		}
		if s, err := v.dp.Stats(); err == nil {
			b.res.DatapathC[v.id] = s
		}
	}
}

// environment describes the machine and tool versions for the report.
func environment() map[string]string {
	env := map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version()}
	for key, cmd := range map[string][]string{
		"kernel":   {"uname", "-r"},
		"haproxy":  {"haproxy", "-v"},
		"iptables": {"iptables-restore", "--version"},
	} {
		out, err := exec.Command(cmd[0], cmd[1:]...).Output()
		if err == nil {
			env[key] = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		}
	}
	return env
}

package main

import (
	"encoding/csv"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// stat summarises one metric of one variant over the rounds.
type stat struct {
	median, min, max float64
	n                int
}

func summarize(values []float64) stat {
	if len(values) == 0 {
		return stat{}
	}
	v := append([]float64(nil), values...)
	sort.Float64s(v)
	s := stat{min: v[0], max: v[len(v)-1], n: len(v)}
	if m := len(v) / 2; len(v)%2 == 1 {
		s.median = v[m]
	} else {
		s.median = (v[m-1] + v[m]) / 2
	}
	return s
}

// spread is (max - min) / median: how much the rounds disagree.
func (s stat) spread() float64 {
	if s.n < 2 || s.median == 0 {
		return 0
	}
	return (s.max - s.min) / math.Abs(s.median)
}

// summary is every metric's stat, by variant then metric key.
type summary map[int]map[string]stat

func (r *results) summary() summary {
	values := map[int]map[string][]float64{}
	for _, s := range r.Samples {
		if values[s.Variant] == nil {
			values[s.Variant] = map[string][]float64{}
		}
		values[s.Variant][s.Metric] = append(values[s.Variant][s.Metric], s.Value)
	}
	out := summary{}
	for id, byMetric := range values {
		out[id] = map[string]stat{}
		for key, v := range byMetric {
			out[id][key] = summarize(v)
		}
	}
	return out
}

func (s summary) get(variant int, key string) (stat, bool) {
	st, ok := s[variant][key]
	return st, ok && st.n > 0
}

// format prints a number with about three significant digits.
func format(x float64) string {
	switch a := math.Abs(x); {
	case a == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(x, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(x, 'f', 2, 64)
	default:
		return strconv.FormatFloat(x, 'f', 3, 64)
	}
}

func (st stat) String() string {
	if st.n == 1 || st.min == st.max {
		return format(st.median)
	}
	return fmt.Sprintf("%s (%s–%s)", format(st.median), format(st.min), format(st.max))
}

// markdown renders the report: the main table, the ratios the issue asks
// for, BPF run time, datapath counters, the machine's state and failures.
func (r *results) markdown() string {
	var b strings.Builder
	sum := r.summary()
	r.writeHeader(&b)
	r.writeMainTable(&b, sum)
	r.writeOverhead(&b, sum)
	r.writeTargets(&b, sum)
	r.writeCost(&b, sum)
	r.writeBPF(&b)
	r.writeCounters(&b)
	r.writeMachine(&b, sum)
	writeCTFromTable(&b, r.CTFromTable)
	writeFailureList(&b, "### Failures\n\n", r.Failures)
	return b.String()
}

func (r *results) writeHeader(b *strings.Builder) {
	s := r.Settings
	fmt.Fprintf(b, "## sockbridge benchmark, %s\n\n", r.Before.At.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(b, "`%s` on kernel %s, %s CPUs; %s; %s.\n", s.Command, r.Env["kernel"], r.Env["cpus"], r.Env["haproxy"], r.Env["iptables"])
	fmt.Fprintf(b, "Medians of %d round(s), min–max in parentheses; variants interleaved in every round. ", s.Rounds)
	fmt.Fprintf(b, "Request/response: one connection, %s per run; bulk: %s upload; connection rate: %d connections, %d in parallel; conntrack: %d sequential connections.\n\n",
		s.Duration, sizeString(s.BulkBytes), s.Conns, s.ConnsParallel, s.CTConns)
	b.WriteString("Bulk CPU: growth of cgroup v2 cpu.stat usage of the pod (app + sidecar) and server cgroups, softirq work done in their context included; " +
		"whole machine: growth of /proc/stat busy time over all CPUs, ksoftirqd and other tenants included. Method: docs/benchmark.md.\n\n")
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d B", n)
	}
}

func (r *results) columnName(v variantInfo) string { return fmt.Sprintf("%d %s", v.ID, v.Name) }

func (r *results) writeMainTable(b *strings.Builder, sum summary) {
	b.WriteString("| metric | unit |")
	for _, v := range r.Variants {
		fmt.Fprintf(b, " %s |", r.columnName(v))
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|", len(r.Variants)) + "\n")
	for _, m := range metrics {
		fmt.Fprintf(b, "| %s | %s |", m.label, m.unit)
		for _, v := range r.Variants {
			fmt.Fprintf(b, " %s |", r.cell(sum, v, m.key))
		}
		b.WriteString("\n")
	}
	for _, v := range r.Variants {
		if v.Unavailable != "" {
			fmt.Fprintf(b, "\nVariant %d (%s) not available: %s.\n", v.ID, v.Name, v.Unavailable)
		}
	}
	b.WriteString("\n")
}

func (r *results) cell(sum summary, v variantInfo, key string) string {
	if v.Unavailable != "" {
		return "n/a"
	}
	st, ok := sum.get(v.ID, key)
	if !ok {
		return "failed"
	}
	return st.String()
}

// cost is how much more a variant costs than the reference on metric m, in
// percent: more latency or CPU, or more time per request, byte or
// connection. Positive is worse.
func cost(m metric, v, ref float64) (float64, bool) {
	if v == 0 || ref == 0 {
		return 0, false
	}
	if m.higherBetter {
		return (ref/v - 1) * 100, true
	}
	return (v/ref - 1) * 100, true
}

func (r *results) has(id int) bool {
	for _, v := range r.Variants {
		if v.ID == id && v.Unavailable == "" {
			return true
		}
	}
	return false
}

func (r *results) writeOverhead(b *strings.Builder, sum summary) {
	if !r.has(explicit) {
		return
	}
	b.WriteString("### Capture overhead relative to variant 2 (the same proxy, dialled explicitly)\n\n")
	b.WriteString("Extra cost over variant 2 in percent of variant 2's medians: more latency or CPU, or more time per request, byte or connection. Positive is worse.\n\n")
	b.WriteString("| metric |")
	cols := []int{iptables, sockbridge, splice}
	for _, id := range cols {
		fmt.Fprintf(b, " %d %s |", id, variantNames[id])
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(cols)) + "\n")
	for _, m := range metrics {
		if m.key == "ct_per_conn" {
			continue
		}
		fmt.Fprintf(b, "| %s |", m.label)
		for _, id := range cols {
			fmt.Fprintf(b, " %s |", overheadCell(sum, m, id))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func overheadCell(sum summary, m metric, id int) string {
	v, ok1 := sum.get(id, m.key)
	ref, ok2 := sum.get(explicit, m.key)
	if !ok1 || !ok2 {
		return "–"
	}
	c, ok := cost(m, v.median, ref.median)
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%+.1f%%", c)
}

// ratio returns a's median over b's for key.
func ratio(sum summary, key string, a, b int) (float64, bool) {
	x, ok1 := sum.get(a, key)
	y, ok2 := sum.get(b, key)
	if !ok1 || !ok2 || y.median == 0 {
		return 0, false
	}
	return x.median / y.median, true
}

// writeTargets prints the ratios and the targets (a benchmark, not
// a test: a missed target is reported, not failed).
func (r *results) writeTargets(b *strings.Builder, sum summary) {
	b.WriteString("### Ratios and targets\n\n")
	for _, id := range []int{sockbridge, splice} {
		if x, ok := ratio(sum, "conn_per_s", id, iptables); ok {
			fmt.Fprintf(b, "- connections/s, variant %d / variant 3: **%.2f×**%s\n", id, x, target(id == sockbridge, x >= 1.3, "target ≥ 1.3×"))
		}
	}
	b.WriteString("- conntrack entries per connection:")
	for _, v := range r.Variants {
		if st, ok := sum.get(v.ID, "ct_per_conn"); ok {
			fmt.Fprintf(b, " %d %s **%.2f**;", v.ID, v.Name, st.median)
		}
	}
	b.WriteString(" (target for 4: 0)\n")
	if missed := r.missedWithin(sum, sockbridge, 3); r.has(sockbridge) && r.has(explicit) {
		if len(missed) == 0 {
			b.WriteString("- variant 4 within 3% of variant 2 on every metric: met\n")
		} else {
			fmt.Fprintf(b, "- variant 4 within 3%% of variant 2: missed on %s\n", strings.Join(missed, ", "))
		}
	}
	if x, ok := ratio(sum, "pingpong64_p50_us", splice, explicit); ok {
		fmt.Fprintf(b, "- 64 B ping-pong p50, variant 5 / variant 2: **%.2f×** (target < 1: %s)\n", x, metOrMissed(x < 1))
	}
	b.WriteString("\n")
}

func target(applies, met bool, what string) string {
	if !applies {
		return ""
	}
	return fmt.Sprintf(" (%s: %s)", what, metOrMissed(met))
}

func metOrMissed(met bool) string {
	if met {
		return "met"
	}
	return "missed"
}

// missedWithin lists the metrics on which variant id costs more than pct
// percent over variant 2 (the whole-machine CPU and conntrack excluded: the
// first measures other tenants too, the second has its own target).
func (r *results) missedWithin(sum summary, id int, pct float64) []string {
	var missed []string
	for _, m := range metrics {
		if m.key == "ct_per_conn" || m.key == "bulk_node_cpu_s_per_gib" || m.key == "conn_node_cpu_ms_per_1k" {
			continue
		}
		v, ok1 := sum.get(id, m.key)
		ref, ok2 := sum.get(explicit, m.key)
		if !ok1 || !ok2 {
			continue
		}
		if c, ok := cost(m, v.median, ref.median); ok && c > pct {
			missed = append(missed, fmt.Sprintf("%s (%+.1f%%)", m.label, c))
		}
	}
	return missed
}

func (r *results) writeBPF(b *strings.Builder) {
	b.WriteString("### BPF run time per call\n\n")
	if len(r.BPF) == 0 {
		note := r.BPFNote
		if note == "" {
			note = "no sockbridge program ran"
		}
		fmt.Fprintf(b, "Not measured: %s.\n\n", note)
		return
	}
	b.WriteString("From the kernel's BPF run-time accounting (BPF_ENABLE_STATS, as kernel.bpf_stats_enabled=1), per round.\n\n")
	b.WriteString("| variant | program | calls per round | ns per call | CPU ms per round |\n|---|---|---:|---:|---:|\n")
	type key struct {
		variant int
		prog    string
	}
	calls, ns := map[key][]float64{}, map[key][]float64{}
	var keys []key
	for _, s := range r.BPF {
		k := key{s.Variant, s.Program}
		if _, ok := ns[k]; !ok {
			keys = append(keys, k)
		}
		calls[k] = append(calls[k], float64(s.Runs))
		ns[k] = append(ns[k], s.NsPerCall)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].variant != keys[j].variant {
			return keys[i].variant < keys[j].variant
		}
		return keys[i].prog < keys[j].prog
	})
	for _, k := range keys {
		c, t := summarize(calls[k]), summarize(ns[k])
		fmt.Fprintf(b, "| %d %s | %s | %s | %s | %s |\n", k.variant, variantNames[k.variant], k.prog,
			strconv.FormatFloat(c.median, 'f', 0, 64), t, format(c.median*t.median/1e6))
	}
	b.WriteString("\n")
}

func (r *results) writeCounters(b *strings.Builder) {
	if len(r.DatapathC) == 0 {
		return
	}
	b.WriteString("Datapath counters at the end of the run:")
	ids := make([]int, 0, len(r.DatapathC))
	for id := range r.DatapathC {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		fmt.Fprintf(b, " variant %d: %s;", id, countersString(r.DatapathC[id]))
	}
	b.WriteString("\n\n")
}

func countersString(c map[string]uint64) string {
	names := make([]string, 0, len(c))
	for n := range c {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, n := range names {
		if c[n] != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", n, c[n]))
		}
	}
	return strings.Join(parts, " ")
}

// busySpread is the round-to-round spread above which a metric is called
// noisy.
const busySpread = 0.20

func (r *results) writeMachine(b *strings.Builder, sum summary) {
	b.WriteString("### Machine\n\n")
	d := r.After.CPU.sub(r.Before.CPU)
	steal := 0.0
	if d.total > 0 {
		steal = float64(d.steal) / float64(d.total) * 100
	}
	fmt.Fprintf(b, "Load average before %s, after %s (%s CPUs); steal %.1f%% of CPU time during the run (%s).\n",
		r.Before.LoadAvg, r.After.LoadAvg, r.Env["cpus"], steal, r.After.At.Sub(r.Before.At).Round(1e9))
	noisy := r.noisyMetrics(sum)
	load1, _ := strconv.ParseFloat(strings.Fields(r.Before.LoadAvg + " 0")[0], 64)
	cpus, _ := strconv.ParseFloat(r.Env["cpus"], 64)
	busy := len(noisy) > 0 || steal > 2 || (cpus > 0 && load1 > cpus/2)
	if busy {
		b.WriteString("**The machine was busy or the rounds disagree: treat small differences as noise.**")
		if len(noisy) > 0 {
			fmt.Fprintf(b, " %d of %d medians have rounds spread by more than %.0f%% of the median (samples.csv has every round); widest: %s.",
				len(noisy), r.medianCount(sum), busySpread*100, strings.Join(widest(noisy, 5), ", "))
		}
		b.WriteString("\n")
	} else {
		b.WriteString("The machine was quiet and the rounds agree within 20%.\n")
	}
	b.WriteString("\n")
}

// noisy is one median whose rounds disagree.
type noisy struct {
	variant int
	key     string
	spread  float64
}

func (r *results) noisyMetrics(sum summary) []noisy {
	var out []noisy
	for _, v := range r.Variants {
		for _, m := range allMetrics() {
			if st, ok := sum.get(v.ID, m.key); ok && st.spread() > busySpread {
				out = append(out, noisy{v.ID, m.key, st.spread()})
			}
		}
	}
	return out
}

func (r *results) medianCount(sum summary) int {
	n := 0
	for _, byMetric := range sum {
		n += len(byMetric)
	}
	return n
}

// widest names the n medians with the widest spread.
func widest(ns []noisy, n int) []string {
	ns = append([]noisy(nil), ns...)
	sort.Slice(ns, func(i, j int) bool { return ns[i].spread > ns[j].spread })
	var out []string
	for _, x := range ns[:min(n, len(ns))] {
		m, _ := metricByKey(x.key)
		out = append(out, fmt.Sprintf("%s of variant %d (%.0f%%)", m.label, x.variant, x.spread*100))
	}
	return out
}

// writeFiles writes results.md, samples.csv, summary.csv, bpf.csv, cost.csv,
// iptables-nat.rules and chart.png into dir.
func (r *results) writeFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create results directory: %w", err)
	}
	files := map[string]func(string) error{
		"results.md":  func(p string) error { return os.WriteFile(p, []byte(r.markdown()), 0o644) },
		"samples.csv": r.writeSamplesCSV,
		"summary.csv": r.writeSummaryCSV,
		"bpf.csv":     r.writeBPFCSV,
		"cost.csv":    r.writeCostCSV,
		"chart.png":   r.writeChart,
		"iptables-nat.rules": func(p string) error {
			return os.WriteFile(p, []byte(r.IptRules), 0o644)
		},
	}
	for name, write := range files {
		if err := write(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

func writeCSV(path string, rows [][]string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.WriteAll(rows)
	return errors.Join(w.Error(), f.Close())
}

func (r *results) writeSamplesCSV(path string) error {
	rows := [][]string{{"round", "variant", "variant_name", "metric", "unit", "value"}}
	for _, s := range r.Samples {
		m, _ := metricByKey(s.Metric)
		rows = append(rows, []string{strconv.Itoa(s.Round), strconv.Itoa(s.Variant), variantNames[s.Variant],
			s.Metric, m.unit, strconv.FormatFloat(s.Value, 'g', 6, 64)})
	}
	return writeCSV(path, rows)
}

func (r *results) writeSummaryCSV(path string) error {
	sum := r.summary()
	rows := [][]string{{"variant", "variant_name", "metric", "unit", "median", "min", "max", "rounds"}}
	for _, v := range r.Variants {
		for _, m := range allMetrics() {
			st, ok := sum.get(v.ID, m.key)
			if !ok {
				continue
			}
			f := func(x float64) string { return strconv.FormatFloat(x, 'g', 6, 64) }
			rows = append(rows, []string{strconv.Itoa(v.ID), v.Name, m.key, m.unit, f(st.median), f(st.min), f(st.max), strconv.Itoa(st.n)})
		}
	}
	return writeCSV(path, rows)
}

func (r *results) writeBPFCSV(path string) error {
	rows := [][]string{{"round", "variant", "program", "calls", "ns_per_call"}}
	for _, s := range r.BPF {
		rows = append(rows, []string{strconv.Itoa(s.Round), strconv.Itoa(s.Variant), s.Program,
			strconv.FormatUint(s.Runs, 10), strconv.FormatFloat(s.NsPerCall, 'f', 1, 64)})
	}
	return writeCSV(path, rows)
}

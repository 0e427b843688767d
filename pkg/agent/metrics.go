package agent

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"

	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/probe"
)

// newRegistry returns the agent's own registry (no global state) with the
// Go runtime and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// registerProbe exposes the probe's result: one gauge per feature (1
// supported, 0 not) and one per part of the plan (1 on, 0 off).
func registerProbe(reg prometheus.Registerer, report *probe.Report, plan probe.Plan) error {
	features := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sockbridge_probe_feature_supported",
		Help: "Kernel capability probe at agent start: 1 when the feature works, 0 when not (see `sockbridge probe`).",
	}, []string{"feature", "kind", "needed_for"})
	for _, f := range report.Features {
		features.WithLabelValues(f.Name, string(f.Kind), string(f.NeededFor)).Set(boolValue(f.Supported))
	}
	planned := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sockbridge_plan_enabled",
		Help: "What the agent enabled from the probe and its flags: 1 on, 0 off.",
	}, []string{"part"})
	planned.WithLabelValues("capture").Set(boolValue(plan.Capture))
	planned.WithLabelValues("splice").Set(boolValue(plan.Splice))
	kernel := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sockbridge_probe_info",
		Help: "The probed kernel release and the probe's duration in milliseconds; always 1.",
	}, []string{"kernel_release", "duration_ms"})
	kernel.WithLabelValues(report.KernelRelease, strconv.FormatInt(report.DurationMS, 10)).Set(1)
	for _, c := range []prometheus.Collector{features, planned, kernel} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// datapathCollector reads the datapath at each scrape: its counters (named
// after enum sb_stat in the object's BTF), the fill of its bounded maps,
// and, while the kernel's BPF statistics are on, each program's run time.
type datapathCollector struct {
	dp *datapath.Datapath
	// statsHeld: the agent holds the kernel's BPF statistics on.
	statsHeld bool
	log       logrus.FieldLogger

	counters                       map[string]*prometheus.Desc
	entries, maxEntries            *prometheus.Desc
	statsEnabled, runSeconds, runs *prometheus.Desc
}

func newDatapathCollector(dp *datapath.Datapath, statsHeld bool, log logrus.FieldLogger) *datapathCollector {
	c := &datapathCollector{dp: dp, statsHeld: statsHeld, log: log, counters: map[string]*prometheus.Desc{}}
	for _, name := range dp.CounterNames() {
		c.counters[name] = prometheus.NewDesc("sockbridge_datapath_"+name+"_total",
			"Datapath counter SB_STAT_"+strings.ToUpper(name)+" (enum sb_stat, bpf/lib/sockbridge.h), summed over CPUs; kept in a pinned map, so it counts across agent restarts.",
			nil, nil)
	}
	c.entries = prometheus.NewDesc("sockbridge_map_entries",
		"Entries in a bounded datapath map at scrape time.", []string{"map"}, nil)
	c.maxEntries = prometheus.NewDesc("sockbridge_map_max_entries",
		"Capacity of a bounded datapath map (its max_entries).", []string{"map"}, nil)
	c.statsEnabled = prometheus.NewDesc("sockbridge_bpf_stats_enabled",
		"1 when the kernel accounts BPF run time (agent flag --bpf-stats, or sysctl kernel.bpf_stats_enabled=1); the run time metrics are exported only then.", nil, nil)
	c.runSeconds = prometheus.NewDesc("sockbridge_bpf_program_run_seconds_total",
		"Run time the kernel accounted to a datapath program this agent loaded, while BPF statistics were on.", []string{"program"}, nil)
	c.runs = prometheus.NewDesc("sockbridge_bpf_program_runs_total",
		"Runs the kernel counted for a datapath program this agent loaded, while BPF statistics were on.", []string{"program"}, nil)
	return c
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counters {
		ch <- d
	}
	for _, d := range []*prometheus.Desc{c.entries, c.maxEntries, c.statsEnabled, c.runSeconds, c.runs} {
		ch <- d
	}
}

// Collect reports what it can read; a part it cannot is logged and left
// out, never failing the whole scrape.
func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.dp.Stats()
	if err != nil {
		c.log.WithError(err).Warn("metrics: read datapath counters")
	}
	for name, v := range stats {
		if d, ok := c.counters[name]; ok {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
		}
	}
	fill, err := c.dp.MapFill()
	if err != nil {
		c.log.WithError(err).Warn("metrics: count map entries")
	}
	for _, f := range fill {
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(f.Entries), f.Name)
		ch <- prometheus.MustNewConstMetric(c.maxEntries, prometheus.GaugeValue, float64(f.MaxEntries), f.Name)
	}
	on := c.statsHeld
	if !on {
		var err error
		if on, err = datapath.KernelStatsEnabled(); err != nil {
			c.log.WithError(err).Debug("metrics: BPF statistics switch")
			return
		}
	}
	ch <- prometheus.MustNewConstMetric(c.statsEnabled, prometheus.GaugeValue, boolValue(on))
	if !on {
		return
	}
	runs, err := c.dp.ProgramRuns()
	if err != nil {
		c.log.WithError(err).Warn("metrics: read BPF program statistics")
	}
	for _, r := range runs {
		ch <- prometheus.MustNewConstMetric(c.runSeconds, prometheus.CounterValue, r.Runtime.Seconds(), r.Name)
		ch <- prometheus.MustNewConstMetric(c.runs, prometheus.CounterValue, float64(r.RunCount), r.Name)
	}
}

// podStates exposes sockbridge_pods{state} from a function the pod source
// provides.
type podStates struct {
	desc  *prometheus.Desc
	count func() map[string]int
}

func newPodStates(count func() map[string]int) *podStates {
	return &podStates{
		desc: prometheus.NewDesc("sockbridge_pods",
			"Pods of this node by capture state: capture, no_capture (meshed, capture off), retrying (controller: not applied yet) or invalid (pod file: entry left out).",
			[]string{"state"}, nil),
		count: count,
	}
}

func (p *podStates) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

func (p *podStates) Collect(ch chan<- prometheus.Metric) {
	for state, n := range p.count() {
		ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, float64(n), state)
	}
}

package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// The scaling benchmark's report: a markdown table per axis, scaling.csv
// (every sample, and what the maps held at every point) and scaling.png.

var axisTitles = map[string]string{
	axisPods:    "Pods in the maps",
	axisRules:   "Rules on the client pod",
	axisSockets: "Live sockets in the sockhash",
}

// stat of one metric at one point over the rounds.
func (r *scaleResults) stat(p scalePoint, key string) stat {
	var vs []float64
	for _, s := range r.Samples {
		if s.Point == p && s.Metric == key {
			vs = append(vs, s.Value)
		}
	}
	return summarize(vs)
}

// held is what the map held at p, over the rounds (min–max when they
// differ).
func (r *scaleResults) held(p scalePoint) string {
	var vs []float64
	for _, c := range r.Checks {
		if c.Point == p {
			vs = append(vs, float64(c.Held))
		}
	}
	if len(vs) == 0 {
		return "–"
	}
	st := summarize(vs)
	if st.min == st.max {
		return strconv.Itoa(int(st.median))
	}
	return fmt.Sprintf("%d–%d", int(st.min), int(st.max))
}

func (r *scaleResults) markdown() string {
	var b strings.Builder
	ss := r.Settings
	b.WriteString("## How cost grows\n\n")
	if r.Note != "" {
		fmt.Fprintf(&b, "Not measured: %s.\n\n", r.Note)
		return b.String()
	}
	fmt.Fprintf(&b, "One captured client pod with its HAProxy sidecar and a meshed server pod behind its own sidecar, "+
		"one datapath with splicing on; at every point the maps are filled to its size, then measured, then emptied. "+
		"%d rounds, points in alternating order; medians, min–max over rounds in parentheses, × is the median's ratio to the axis' first point. "+
		"connect4: BPF run time per call over %d sequential connections through the sidecar (the app's connect and the sidecar's upstream connect); "+
		"connect p50/p99: those connections' connect(); splice: `sbpeer reqresp -size 64` for %s, client app → client sidecar → spliced → server sidecar → server app.\n\n",
		ss.Rounds, ss.Conns, ss.Duration)
	if axes := ss.points(); len(axes) > 0 && len(axes[0]) > 0 {
		if st := r.stat(axes[0][0], "connect4_calls_per_conn"); st.n > 0 {
			fmt.Fprintf(&b, "connect4 runs %s times per connection (the app's connect and the sidecar's upstream connect).\n\n", st)
		}
	}
	for _, axis := range ss.points() {
		if len(axis) == 0 {
			continue
		}
		fmt.Fprintf(&b, "**%s** (held: entries the map held during the measurement)\n\n", axisTitles[axis[0].Axis])
		b.WriteString("| point | held |")
		for _, m := range scaleMetrics {
			fmt.Fprintf(&b, " %s, %s | × |", m.label, m.unit)
		}
		b.WriteString("\n|---|---:|")
		b.WriteString(strings.Repeat("---:|---:|", len(scaleMetrics)))
		b.WriteString("\n")
		for _, p := range axis {
			fmt.Fprintf(&b, "| %s | %s |", p, r.held(p))
			for _, m := range scaleMetrics {
				st := r.stat(p, m.key)
				if st.n == 0 {
					b.WriteString(" – | – |")
					continue
				}
				fmt.Fprintf(&b, " %s | %s |", st, r.ratioCell(axis[0], p, m.key))
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Rules: %d is the most one pod can hold, every list full (8 lists × 64, less Istio's 4 never-captured inbound ports); "+
		"1000 cannot be expressed: pkg/policy caps every list at 64 (MaxPorts, MaxCIDRs) and the datapath rejects a pod over a cap. "+
		"The maps' layout would take more (entries are per rule, not per pod), so 1000 needs the caps raised, not a new layout.\n\n", maxScaleRules)
	writeFailureList(&b, "Failures:\n\n", r.Failures)
	return b.String()
}

func (r *scaleResults) ratioCell(base, p scalePoint, key string) string {
	b, x := r.stat(base, key), r.stat(p, key)
	if b.n == 0 || x.n == 0 || b.median == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", x.median/b.median)
}

func (r *scaleResults) writeFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create results directory: %w", err)
	}
	if err := r.writeCSV(filepath.Join(dir, "scaling.csv")); err != nil {
		return fmt.Errorf("write scaling.csv: %w", err)
	}
	if r.Note != "" {
		return nil
	}
	if err := r.writeChart(filepath.Join(dir, "scaling.png")); err != nil {
		return fmt.Errorf("write scaling.png: %w", err)
	}
	return nil
}

// writeCSV writes every sample, then what the maps held at every point
// (metric "held", "held_after", "baseline", "after").
func (r *scaleResults) writeCSV(path string) error {
	rows := [][]string{{"round", "axis", "point", "in_map", "metric", "unit", "value"}}
	inMap := func(p scalePoint) string { return strconv.FormatBool(!p.Unmapped) }
	for _, s := range r.Samples {
		m, _ := scaleMetric(s.Metric)
		rows = append(rows, []string{strconv.Itoa(s.Round), s.Point.Axis, strconv.Itoa(s.Point.N), inMap(s.Point),
			s.Metric, m.unit, strconv.FormatFloat(s.Value, 'g', 6, 64)})
	}
	for _, c := range r.Checks {
		for _, kv := range []struct {
			k string
			v int
		}{{"want", c.Want}, {"held", c.Held}, {"held_after", c.HeldAfter}, {"baseline", c.Baseline}, {"after", c.After}} {
			rows = append(rows, []string{strconv.Itoa(c.Round), c.Point.Axis, strconv.Itoa(c.Point.N), inMap(c.Point),
				kv.k, "entries", strconv.Itoa(kv.v)})
		}
	}
	return writeCSV(path, rows)
}

func scaleMetric(key string) (metric, bool) {
	for _, m := range scaleMetrics {
		if m.key == key {
			return m, true
		}
	}
	return metric{}, false
}

// writeChart draws one panel per axis and metric (rows: axes; columns:
// metrics): the median at each point with a min–max bar over the rounds,
// on a y axis from 0 so that a flat curve looks flat.
func (r *scaleResults) writeChart(path string) error {
	axes := r.Settings.points()
	plots := make([][]*plot.Plot, len(axes))
	for i, axis := range axes {
		for _, m := range scaleMetrics {
			p, err := r.panel(axis, m)
			if err != nil {
				return err
			}
			plots[i] = append(plots[i], p)
		}
	}
	return writeGrid(path, plots, 18*vg.Inch, 12*vg.Inch)
}

func (r *scaleResults) panel(axis []scalePoint, m metric) (*plot.Plot, error) {
	p := plot.New()
	title := m.label
	if len(axis) > 0 {
		title = axisTitles[axis[0].Axis] + "\n" + m.label
	}
	p.Title.Text = title
	p.Y.Label.Text = m.unit
	p.Y.Min = 0
	var names []string
	var b, curve bars
	for _, pt := range axis {
		names = append(names, pt.String())
		st := r.stat(pt, m.key)
		b.median = append(b.median, st.median)
		b.low = append(b.low, st.median-st.min)
		b.high = append(b.high, st.max-st.median)
		if !pt.Unmapped && !pt.Far {
			curve.median = append(curve.median, st.median)
		}
	}
	// The line joins the axis' points; a control point stands alone.
	line, err := plotter.NewLine(curve)
	if err != nil {
		return nil, fmt.Errorf("line %s: %w", m.key, err)
	}
	points, err := plotter.NewScatter(b)
	if err != nil {
		return nil, fmt.Errorf("points %s: %w", m.key, err)
	}
	line.Color = color.RGBA{R: 70, G: 120, B: 180, A: 255}
	points.Color = line.Color
	errs, err := plotter.NewYErrorBars(b)
	if err != nil {
		return nil, fmt.Errorf("error bars %s: %w", m.key, err)
	}
	p.Add(line, points, errs)
	p.NominalX(names...)
	return p, nil
}

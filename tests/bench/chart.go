package main

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// chartMetrics are the panels of chart.png, two rows of three.
var chartMetrics = [2][3]string{
	{"pingpong64_p50_us", "pingpong64_p99_us", "rr16k_rps"},
	{"bulk_mbps", "bulk_cpu_s_per_gib", "conn_per_s"},
}

var shortNames = map[int]string{direct: "1 direct", explicit: "2 explicit", iptables: "3 iptables", sockbridge: "4 sockbridge", splice: "5 splice"}

// writeChart draws one bar chart per metric: the median of each variant
// with a min–max bar over the rounds.
func (r *results) writeChart(path string) error {
	sum := r.summary()
	plots := make([][]*plot.Plot, len(chartMetrics))
	for i, row := range chartMetrics {
		for _, key := range row {
			p, err := r.panel(sum, key)
			if err != nil {
				return err
			}
			plots[i] = append(plots[i], p)
		}
	}
	return writeGrid(path, plots, 15*vg.Inch, 8*vg.Inch)
}

// writeGrid draws plots as a rectangular grid (rows of panels) of the
// given size and writes it to path as a PNG.
func writeGrid(path string, plots [][]*plot.Plot, width, height vg.Length) error {
	if len(plots) == 0 || len(plots[0]) == 0 {
		return fmt.Errorf("write %s: no panels", path)
	}
	cols := len(plots[0])
	for i, row := range plots {
		if len(row) != cols {
			return fmt.Errorf("write %s: row %d has %d panels, row 0 has %d (the grid must be rectangular)", path, i, len(row), cols)
		}
	}
	img := vgimg.New(width, height)
	tiles := draw.Tiles{Rows: len(plots), Cols: cols, PadX: vg.Inch / 3, PadY: vg.Inch / 3,
		PadTop: vg.Inch / 6, PadBottom: vg.Inch / 6, PadLeft: vg.Inch / 6, PadRight: vg.Inch / 6}
	canvases := plot.Align(plots, tiles, draw.New(img))
	for i := range plots {
		for j, p := range plots[i] {
			p.Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("encode png: %w", err)
	}
	return f.Close()
}

// bars are medians with min–max error bars, one per variant.
type bars struct {
	median, low, high []float64
}

func (b bars) Len() int                        { return len(b.median) }
func (b bars) XY(i int) (float64, float64)     { return float64(i), b.median[i] }
func (b bars) YError(i int) (float64, float64) { return b.low[i], b.high[i] }

func (r *results) panel(sum summary, key string) (*plot.Plot, error) {
	m, _ := metricByKey(key)
	p := plot.New()
	p.Title.Text = m.label
	p.Y.Label.Text = m.unit
	p.Y.Min = 0
	var names []string
	var b bars
	for _, v := range r.Variants {
		names = append(names, shortNames[v.ID])
		st, ok := sum.get(v.ID, key)
		if v.Unavailable != "" || !ok {
			names[len(names)-1] += " (n/a)"
		}
		b.median = append(b.median, st.median)
		b.low = append(b.low, st.median-st.min)
		b.high = append(b.high, st.max-st.median)
	}
	chart, err := plotter.NewBarChart(plotter.Values(b.median), vg.Points(28))
	if err != nil {
		return nil, fmt.Errorf("bar chart %s: %w", key, err)
	}
	chart.Color = color.RGBA{R: 70, G: 120, B: 180, A: 255}
	chart.LineStyle.Width = 0
	errs, err := plotter.NewYErrorBars(b)
	if err != nil {
		return nil, fmt.Errorf("error bars %s: %w", key, err)
	}
	p.Add(chart, errs)
	p.NominalX(names...)
	return p, nil
}

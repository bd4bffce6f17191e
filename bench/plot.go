package bench

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WritePlots draws the sweep into dir as PNGs and returns their names:
// for every op, throughput against concurrency (throughput-OP.png), its
// ratio to the floor (ratio-OP.png), and at every concurrency the latency
// CDF of every target (cdf-OP-cN.png).
func WritePlots(dir string, r *Report) (files []string, err error) {
	if r.Sweep == nil {
		return nil, nil
	}
	// gonum/plot panics on data it cannot draw; a benchmark's report must
	// not die of it.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("plot: %v", p)
		}
	}()
	for _, op := range r.Sweep.Ops {
		name := "throughput-" + op + ".png"
		if err := throughputPlot(filepath.Join(dir, name), r.Sweep, op); err != nil {
			return files, err
		}
		files = append(files, name)
		if r.Floor != "" {
			name = "ratio-" + op + ".png"
			if err := ratioPlot(filepath.Join(dir, name), r, op); err != nil {
				return files, err
			}
			files = append(files, name)
		}
		for _, c := range r.Sweep.Concurrency {
			name := fmt.Sprintf("cdf-%s-c%d.png", op, c)
			if err := cdfPlot(filepath.Join(dir, name), r.Sweep, op, c); err != nil {
				return files, err
			}
			files = append(files, name)
		}
	}
	return files, nil
}

// concAxis puts the concurrencies swept on a log axis, with room on both
// sides (a single value would otherwise make an empty range).
func concAxis(p *plot.Plot, cs []int) {
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = concTicks(cs)
	p.X.Min = float64(slices.Min(cs)) / 1.5
	p.X.Max = float64(slices.Max(cs)) * 1.5
}

// concTicks labels the concurrency axis with the values swept.
func concTicks(cs []int) plot.ConstantTicks {
	t := make(plot.ConstantTicks, len(cs))
	for i, c := range cs {
		t[i] = plot.Tick{Value: float64(c), Label: strconv.Itoa(c)}
	}
	return t
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.YOffs = -vg.Points(6)
	p.Legend.XOffs = vg.Points(6)
	p.Add(plotter.NewGrid())
	return p
}

func addLine(p *plot.Plot, i int, label string, xys plotter.XYs, points bool) error {
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.Color = plotutil.Color(i)
	l.Dashes = plotutil.Dashes(i)
	l.Width = vg.Points(1.5)
	p.Add(l)
	if points {
		s, err := plotter.NewScatter(xys)
		if err != nil {
			return err
		}
		s.Color = plotutil.Color(i)
		s.Shape = plotutil.Shape(i)
		p.Add(s)
		p.Legend.Add(label, l, s)
		return nil
	}
	p.Legend.Add(label, l)
	return nil
}

func throughputPlot(path string, s *SweepResult, op string) error {
	p := newPlot(op+": throughput vs concurrency (median of rounds)", "concurrent callers", "calls per second")
	concAxis(p, s.Concurrency)
	p.Y.Min = 0
	top := 0.0
	for i, t := range s.Targets {
		var xys plotter.XYs
		for _, c := range s.Concurrency {
			cell := s.Cell(t, op, c)
			if cell == nil || len(cell.Rounds) == 0 {
				continue
			}
			tp := make([]float64, len(cell.Rounds))
			for j, r := range cell.Rounds {
				tp[j] = r.Throughput
			}
			xys = append(xys, plotter.XY{X: float64(c), Y: Median(tp)})
			top = max(top, Median(tp))
		}
		if err := addLine(p, i, t, xys, true); err != nil {
			return err
		}
	}
	p.Y.Max = top * 1.45 // headroom for the legend
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

func ratioPlot(path string, r *Report, op string) error {
	p := newPlot(op+": throughput / floor (median of per-round ratios)", "concurrent callers", "ratio to the floor")
	concAxis(p, r.Sweep.Concurrency)
	p.Y.Min = 0
	top := 1.0
	for i, t := range r.Sweep.Targets {
		if t == r.Floor {
			continue
		}
		var xys plotter.XYs
		for _, c := range r.Sweep.Concurrency {
			cmp := r.Comparison(t, r.Floor, op, c)
			if cmp == nil {
				continue
			}
			xys = append(xys, plotter.XY{X: float64(c), Y: cmp.TputRatio})
			top = max(top, cmp.TputRatio)
		}
		if err := addLine(p, i, t, xys, true); err != nil {
			return err
		}
	}
	// The floor itself, as a reference line at 1.
	one, err := plotter.NewLine(plotter.XYs{{X: p.X.Min, Y: 1}, {X: p.X.Max, Y: 1}})
	if err != nil {
		return err
	}
	one.Color = plotutil.Color(0)
	one.Width = vg.Points(0.75)
	p.Add(one)
	// Headroom above the data for the legend.
	p.Y.Max = top * 1.45
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

func cdfPlot(path string, s *SweepResult, op string, conc int) error {
	p := newPlot(fmt.Sprintf("%s at concurrency %d: latency CDF (all rounds)", op, conc), "latency (µs, log scale)", "fraction of calls ≤ latency")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Left = false
	p.Legend.Top = false
	p.Legend.XOffs = -vg.Points(10)
	p.Legend.YOffs = vg.Points(20)
	p.Y.Min, p.Y.Max = 0, 1
	for i, t := range s.Targets {
		cell := s.Cell(t, op, conc)
		if cell == nil {
			continue
		}
		// A report read back from JSON has only the stored CDF.
		cdf := cell.PlotCDF
		if len(cdf) == 0 {
			cdf = cell.CDF
		}
		if len(cdf) == 0 {
			continue
		}
		xys := make(plotter.XYs, 0, len(cdf))
		for _, pt := range cdf {
			xys = append(xys, plotter.XY{X: float64(pt.Latency) / float64(time.Microsecond), Y: pt.Fraction})
		}
		if err := addLine(p, i, t, xys, false); err != nil {
			return err
		}
	}
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

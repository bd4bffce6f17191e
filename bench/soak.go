package bench

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// SoakSeries is one sampled quantity of a soak: values at times (seconds
// since the start).
type SoakSeries struct {
	Name string    // file-name friendly: "rss", "goroutines", "fds"
	Unit string    // axis label
	T    []float64 // seconds since the start
	Y    []float64
}

// FlatRule says when a soak series counts as flat: the mean of its last
// quarter (by time) is at most the mean of its second quarter times
// (1 + Rel), plus Abs. The first quarter is warm-up (caches, pools, the
// runtime's heap target) and is not compared.
type FlatRule struct {
	Rel float64 `json:"rel"`
	Abs float64 `json:"abs"`
}

// Flatness is a series judged by a FlatRule, with its least-squares slope.
type Flatness struct {
	Series string   `json:"series"`
	Rule   FlatRule `json:"rule"`
	// Q2Mean and Q4Mean are the means of the second and last quarters.
	Q2Mean float64 `json:"q2_mean"`
	Q4Mean float64 `json:"q4_mean"`
	// Limit is Q2Mean*(1+Rel)+Abs, the most Q4Mean may be.
	Limit float64 `json:"limit"`
	// SlopePerHour is the least-squares slope over the second half
	// (after warm-up), in the series' unit per hour.
	SlopePerHour float64 `json:"slope_per_hour"`
	Samples      int     `json:"samples"`
	Flat         bool    `json:"flat"`
}

// JudgeFlat applies rule to s. Quarters are by time from the first to the
// last sample; a quarter with no sample makes the series not flat (too few
// samples to tell).
func JudgeFlat(s SoakSeries, rule FlatRule) Flatness {
	f := Flatness{Series: s.Name, Rule: rule, Samples: len(s.T), Q2Mean: math.NaN(), Q4Mean: math.NaN(), Limit: math.NaN(), SlopePerHour: math.NaN()}
	if len(s.T) < 4 || len(s.T) != len(s.Y) {
		return f
	}
	t0, t1 := s.T[0], s.T[len(s.T)-1]
	span := t1 - t0
	if span <= 0 {
		return f
	}
	var q2, q4 []float64
	var xs, ys []float64
	for i, t := range s.T {
		switch q := (t - t0) / span; {
		case q >= 0.25 && q < 0.5:
			q2 = append(q2, s.Y[i])
		case q >= 0.75:
			q4 = append(q4, s.Y[i])
		}
		if (t-t0)/span >= 0.5 {
			xs = append(xs, t)
			ys = append(ys, s.Y[i])
		}
	}
	if len(q2) == 0 || len(q4) == 0 {
		return f
	}
	f.Q2Mean, f.Q4Mean = mean(q2), mean(q4)
	f.Limit = f.Q2Mean*(1+rule.Rel) + rule.Abs
	f.Flat = f.Q4Mean <= f.Limit
	f.SlopePerHour = slope(xs, ys) * 3600
	return f
}

func mean(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// slope is the least-squares slope of y over x; NaN for fewer than two
// distinct x.
func slope(x, y []float64) float64 {
	if len(x) < 2 {
		return math.NaN()
	}
	mx, my := mean(x), mean(y)
	var num, den float64
	for i := range x {
		num += (x[i] - mx) * (y[i] - my)
		den += (x[i] - mx) * (x[i] - mx)
	}
	if den == 0 {
		return math.NaN()
	}
	return num / den
}

// WriteSoakPlot draws s against time (minutes) into dir/soak-<name>.png,
// with the intervals in down (seconds since the start) shaded: when the
// keystore was down. It returns the file's name.
func WriteSoakPlot(dir, title string, s SoakSeries, down [][2]float64) (name string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("plot: %v", p)
		}
	}()
	name = "soak-" + s.Name + ".png"
	p := newPlot(title, "minutes since the start (shaded: keystore frozen)", s.Unit)
	p.Y.Min = 0
	top := 0.0
	for _, y := range s.Y {
		top = max(top, y)
	}
	top = math.Max(top*1.25, 1)
	p.Y.Max = top
	for _, d := range down {
		poly, err := plotter.NewPolygon(plotter.XYs{
			{X: d[0] / 60, Y: 0}, {X: d[1] / 60, Y: 0}, {X: d[1] / 60, Y: top}, {X: d[0] / 60, Y: top},
		})
		if err != nil {
			return "", err
		}
		poly.Color = color.Gray{Y: 225}
		poly.Width = 0
		p.Add(poly)
	}
	xys := make(plotter.XYs, len(s.T))
	for i := range s.T {
		xys[i] = plotter.XY{X: s.T[i] / 60, Y: s.Y[i]}
	}
	if err := addLine(p, 0, s.Name, xys, false); err != nil {
		return "", err
	}
	return name, p.Save(7*vg.Inch, 3.5*vg.Inch, filepath.Join(dir, name))
}

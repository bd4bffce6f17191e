package bench

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

// series makes a series sampled every 10 s whose value at t is f(t).
func series(n int, f func(t float64) float64) SoakSeries {
	s := SoakSeries{Name: "x"}
	for i := range n {
		t := float64(i * 10)
		s.T = append(s.T, t)
		s.Y = append(s.Y, f(t))
	}
	return s
}

func TestJudgeFlat(t *testing.T) {
	rule := FlatRule{Rel: 0.10, Abs: 2}
	tests := []struct {
		name      string
		s         SoakSeries
		flat      bool
		slopeHour float64 // NaN: not checked
	}{
		{name: "constant", s: series(40, func(float64) float64 { return 100 }), flat: true, slopeHour: 0},
		{name: "warm-up then flat", s: series(40, func(t float64) float64 {
			if t < 50 {
				return 10 + t
			}
			return 100
		}), flat: true, slopeHour: 0},
		// 100 → 136 over 390 s: Q4 about 131, Q2 about 113: over 10 % + 2.
		{name: "steady growth", s: series(40, func(t float64) float64 { return 100 + t/10.8 }), flat: false, slopeHour: 3600 / 10.8},
		{name: "growth within the rule", s: series(40, func(t float64) float64 { return 100 + t/100 }), flat: true, slopeHour: 36},
		{name: "shrinking", s: series(40, func(t float64) float64 { return 200 - t/10 }), flat: true, slopeHour: -360},
		{name: "too few samples", s: series(3, func(float64) float64 { return 1 }), flat: false, slopeHour: math.NaN()},
		{name: "lengths differ", s: SoakSeries{T: []float64{0, 1, 2, 3, 4}, Y: []float64{1, 1}}, flat: false, slopeHour: math.NaN()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := JudgeFlat(tt.s, rule)
			if f.Flat != tt.flat {
				t.Errorf("flat = %v, want %v (%+v)", f.Flat, tt.flat, f)
			}
			if !math.IsNaN(tt.slopeHour) && math.Abs(f.SlopePerHour-tt.slopeHour) > 1e-6*math.Max(1, math.Abs(tt.slopeHour)) {
				t.Errorf("slope %v per hour, want %v", f.SlopePerHour, tt.slopeHour)
			}
			if math.IsNaN(tt.slopeHour) && !math.IsNaN(f.SlopePerHour) {
				t.Errorf("slope %v, want NaN for a series that cannot be judged", f.SlopePerHour)
			}
		})
	}
}

func TestWriteSoakPlot(t *testing.T) {
	dir := t.TempDir()
	name, err := WriteSoakPlot(dir, "RSS", series(30, func(t float64) float64 { return 30000 + t }), [][2]float64{{60, 120}, {200, 260}})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, name))
	if err != nil || fi.Size() == 0 {
		t.Fatalf("plot %s: %v (size %v)", name, err, fi)
	}
}

package bench

import (
	"math"
	"slices"
	"testing"
	"time"
)

func ds(xs ...int) []time.Duration {
	out := make([]time.Duration, len(xs))
	for i, x := range xs {
		out[i] = time.Duration(x)
	}
	return out
}

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i + 1)
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{name: "empty", sorted: nil, p: 50, want: 0},
		{name: "one value", sorted: ds(7), p: 99, want: 7},
		{name: "median of odd count", sorted: ds(1, 2, 3), p: 50, want: 2},
		{name: "median of even count is the lower middle (nearest rank)", sorted: ds(1, 2, 3, 4), p: 50, want: 2},
		{name: "p50 of 1..100", sorted: hundred, p: 50, want: 50},
		{name: "p90 of 1..100", sorted: hundred, p: 90, want: 90},
		{name: "p99 of 1..100", sorted: hundred, p: 99, want: 99},
		{name: "p100 is the max", sorted: hundred, p: 100, want: 100},
		{name: "p99 of 10 values is the max", sorted: ds(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), p: 99, want: 10},
		{name: "tiny p is the min", sorted: ds(5, 6, 7), p: 0.001, want: 5},
		{name: "p0 clamps to the min", sorted: ds(5, 6, 7), p: 0, want: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		xs   []float64
		want float64
	}{
		{name: "odd", xs: []float64{3, 1, 2}, want: 2},
		{name: "even averages the middle two", xs: []float64{4, 1, 3, 2}, want: 2.5},
		{name: "one", xs: []float64{0.97}, want: 0.97},
		{name: "an outlier round does not move it", xs: []float64{1.01, 1.02, 9.0, 1.03, 0.99}, want: 1.02},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.xs...)
			if got := Median(tt.xs); got != tt.want {
				t.Errorf("Median(%v) = %v, want %v", tt.xs, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.xs[i] {
					t.Fatalf("Median modified its input: %v, was %v", tt.xs, in)
				}
			}
		})
	}
	if got := Median(nil); !math.IsNaN(got) {
		t.Errorf("Median(nil) = %v, want NaN", got)
	}
}

func TestRatios(t *testing.T) {
	if got := Ratio(3, 2); got != 1.5 {
		t.Errorf("Ratio(3, 2) = %v", got)
	}
	if got := Ratio(3, 0); !math.IsNaN(got) {
		t.Errorf("Ratio(3, 0) = %v, want NaN", got)
	}
	got := RoundRatios([]float64{10, 20, 30, 40}, []float64{5, 0, 30})
	want := []float64{2, 1} // round 2 has no base, round 4 no pair
	if len(got) != len(want) {
		t.Fatalf("RoundRatios = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("RoundRatios = %v, want %v", got, want)
		}
	}
	// The median of per-round ratios is not the ratio of medians: a round
	// where the machine was slow for both targets cancels out.
	a, b := []float64{100, 200, 110}, []float64{100, 190, 100}
	if got := Median(RoundRatios(a, b)); math.Abs(got-1.05263) > 1e-4 {
		t.Errorf("median of per-round ratios = %v, want 200/190", got)
	}
}

func TestSummarize(t *testing.T) {
	lat := ds(50, 10, 40, 20, 30)
	s := Summarize(lat, 2, time.Second)
	if s.Ops != 5 || s.Errors != 2 || s.Throughput != 5 {
		t.Errorf("counts: %+v", s)
	}
	if s.P50 != 30 || s.Max != 50 || s.Mean != 30 || s.P99 != 50 || s.P90 != 50 {
		t.Errorf("latencies: %+v", s)
	}
	if lat[0] != 10 {
		t.Errorf("Summarize did not sort its input: %v", lat)
	}
	if z := Summarize(nil, 0, 0); z.Throughput != 0 || z.P50 != 0 {
		t.Errorf("empty: %+v", z)
	}
}

func TestCDF(t *testing.T) {
	sorted := ds(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	got := CDF(sorted, 4)
	want := []CDFPoint{{3, 0.3}, {5, 0.5}, {8, 0.8}, {10, 1}}
	if len(got) != len(want) {
		t.Fatalf("CDF = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("CDF = %v, want %v", got, want)
		}
	}
	if all := CDF(sorted, 100); len(all) != 10 || all[9].Fraction != 1 || all[0] != (CDFPoint{1, 0.1}) {
		t.Errorf("more points than values: %v", all)
	}
	if CDF(nil, 10) != nil {
		t.Error("CDF of nothing should be nil")
	}
}

// QuantileCDF keeps the minimum, the maximum and, exactly, the percentiles
// a Summary reports, at their true fractions.
func TestQuantileCDF(t *testing.T) {
	if len(CDFPercentiles) != 32 {
		t.Errorf("%d CDF percentiles, want 32", len(CDFPercentiles))
	}
	for _, n := range []int{1, 7, 1000, 26388} {
		lat := make([]time.Duration, n)
		for i := range lat {
			lat[i] = time.Duration((i*7919)%n + 1000) // a permutation, then sorted
		}
		sum := Summarize(lat, 0, time.Second)
		got := QuantileCDF(lat)
		if len(got) == 0 || len(got) > len(CDFPercentiles) {
			t.Fatalf("n=%d: %d points", n, len(got))
		}
		if got[0].Latency != lat[0] || got[len(got)-1] != (CDFPoint{sum.Max, 1}) {
			t.Errorf("n=%d: first %v, last %v; want the minimum %v and the maximum %v", n, got[0], got[len(got)-1], lat[0], sum.Max)
		}
		for i := 1; i < len(got); i++ {
			if got[i].Fraction <= got[i-1].Fraction || got[i].Latency < got[i-1].Latency {
				t.Fatalf("n=%d: points not rising at %d: %v", n, i, got)
			}
		}
		has := func(d time.Duration, p float64) bool {
			for _, pt := range got {
				if pt.Latency == d && pt.Fraction == float64(nearestRank(n, p))/float64(n) {
					return true
				}
			}
			return false
		}
		for _, c := range []struct {
			p float64
			d time.Duration
		}{{50, sum.P50}, {90, sum.P90}, {99, sum.P99}, {99.9, Percentile(lat, 99.9)}} {
			if !has(c.d, c.p) {
				t.Errorf("n=%d: no point at p%g = %v in %v", n, c.p, c.d, got)
			}
		}
	}
	if QuantileCDF(nil) != nil {
		t.Error("QuantileCDF of nothing should be nil")
	}
}

// ThinCDF of a 400-point CDF keeps what QuantileCDF would have kept where
// the dense CDF holds that rank: p50, p90, p99 and the maximum.
func TestThinCDF(t *testing.T) {
	const n = 26388
	lat := make([]time.Duration, n)
	for i := range lat {
		lat[i] = time.Duration(i * i)
	}
	dense := CDF(lat, 400)
	thin := ThinCDF(dense)
	if len(thin) > len(CDFPercentiles) || thin[0] != dense[0] || thin[len(thin)-1] != dense[len(dense)-1] {
		t.Fatalf("thin %v", thin)
	}
	exact := map[CDFPoint]bool{}
	for _, pt := range QuantileCDF(lat) {
		exact[pt] = true
	}
	sum := Summarize(lat, 0, time.Second)
	for _, d := range []time.Duration{sum.P50, sum.P90, sum.P99, sum.Max} {
		found := false
		for _, pt := range thin {
			found = found || (pt.Latency == d && exact[pt])
		}
		if !found {
			t.Errorf("no exact point at %v in %v", d, thin)
		}
	}
	for _, pt := range thin {
		if !slices.Contains(dense, pt) {
			t.Errorf("%v is not a point of the dense CDF", pt)
		}
	}
	if ThinCDF(nil) != nil {
		t.Error("ThinCDF of nothing should be nil")
	}
	if got := ThinCDF(dense[:1]); len(got) != 1 {
		t.Errorf("one point: %v", got)
	}
}

package bench

import (
	"math"
	"slices"
	"time"
)

// Summary describes one set of latencies and the throughput it was
// measured at.
type Summary struct {
	Ops        int           `json:"ops"`
	Errors     int           `json:"errors"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	Throughput float64       `json:"throughput_per_s"`
	Mean       time.Duration `json:"mean_ns"`
	P50        time.Duration `json:"p50_ns"`
	P90        time.Duration `json:"p90_ns"`
	P99        time.Duration `json:"p99_ns"`
	Max        time.Duration `json:"max_ns"`
	// ServerCPU and ClientCPU are the CPU time (user+system) the server
	// process and the load generator spent per successful call, where
	// measured. Unlike throughput, they hardly move with the machine's
	// other load, so they are the steadier measure of a server's cost.
	ServerCPU time.Duration `json:"server_cpu_per_call_ns,omitempty"`
	ClientCPU time.Duration `json:"client_cpu_per_call_ns,omitempty"`
}

// Summarize computes a Summary. lat is sorted in place.
func Summarize(lat []time.Duration, errs int, elapsed time.Duration) Summary {
	slices.Sort(lat)
	s := Summary{Ops: len(lat), Errors: errs, Elapsed: elapsed}
	if elapsed > 0 {
		s.Throughput = float64(len(lat)) / elapsed.Seconds()
	}
	if len(lat) == 0 {
		return s
	}
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	s.Mean = sum / time.Duration(len(lat))
	s.P50 = Percentile(lat, 50)
	s.P90 = Percentile(lat, 90)
	s.P99 = Percentile(lat, 99)
	s.Max = lat[len(lat)-1]
	return s
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of sorted by the
// nearest-rank method: the smallest value such that at least p% of the
// values are ≤ it. It is always one of the measured values, never an
// interpolation between two. Empty input gives 0.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	return sorted[nearestRank(n, p)-1]
}

// nearestRank is the 1-based rank of the p-th percentile of n values.
func nearestRank(n int, p float64) int {
	rank := int(math.Ceil(p / 100 * float64(n)))
	return min(max(rank, 1), n)
}

// Median returns the median of xs (the mean of the two middle values for an
// even count), or NaN for none. xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Ratio is a/b, or NaN when b is 0 (a ratio to nothing is not a figure).
func Ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// RoundRatios pairs a and b round by round and returns each round's a/b.
// Rounds missing on either side are skipped.
func RoundRatios(a, b []float64) []float64 {
	n := min(len(a), len(b))
	out := make([]float64, 0, n)
	for i := range n {
		if r := Ratio(a[i], b[i]); !math.IsNaN(r) {
			out = append(out, r)
		}
	}
	return out
}

// CDFPoint is one point of an empirical latency CDF.
type CDFPoint struct {
	Latency  time.Duration `json:"latency_ns"`
	Fraction float64       `json:"fraction"`
}

// CDF returns at most points points of the empirical CDF of sorted, evenly
// spaced in rank, always including the maximum. It is dense enough to draw;
// reports keep QuantileCDF instead.
func CDF(sorted []time.Duration, points int) []CDFPoint {
	n := len(sorted)
	if n == 0 || points <= 0 {
		return nil
	}
	points = min(points, n)
	out := make([]CDFPoint, 0, points)
	for i := 1; i <= points; i++ {
		rank := int(math.Ceil(float64(i) * float64(n) / float64(points)))
		out = append(out, CDFPoint{Latency: sorted[rank-1], Fraction: float64(rank) / float64(n)})
	}
	return out
}

// CDFPercentiles are the points of the latency CDF a report keeps (32 of
// them): the minimum (0) and the maximum (100), every 5 % of the body, and
// finer steps in both tails, where latency CDFs bend. 50, 90, 99 and 99.9
// are among them, so a report's CDF holds its p50, p90 and p99 exactly.
var CDFPercentiles = []float64{
	0, 0.1, 0.5, 1, 2, 5,
	10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90,
	92.5, 95, 97.5, 99, 99.5, 99.9, 99.95, 99.99, 100,
}

// QuantileCDF returns the points of the empirical CDF of sorted at
// CDFPercentiles: each the nearest-rank percentile (as Percentile computes
// it, so equal to a Summary's P50, P90, P99 and Max) with its exact
// fraction of calls, rank/n; the 0th is the minimum. Percentiles that fall
// on the same rank (few values) give one point.
func QuantileCDF(sorted []time.Duration) []CDFPoint {
	n := len(sorted)
	if n == 0 {
		return nil
	}
	out := make([]CDFPoint, 0, len(CDFPercentiles))
	last := 0
	for _, p := range CDFPercentiles {
		rank := 1
		if p > 0 {
			rank = nearestRank(n, p)
		}
		if rank == last {
			continue
		}
		last = rank
		out = append(out, CDFPoint{Latency: sorted[rank-1], Fraction: float64(rank) / float64(n)})
	}
	return out
}

// ThinCDF reduces a dense CDF (CDF's, points in rising order) to at most
// one point per CDFPercentiles entry, for reports written before they kept
// QuantileCDF: its first point, then for each percentile the first point
// whose fraction reaches it. Where the dense CDF holds a percentile's
// nearest rank (p50, p90 and p99 of a 400-point CDF), the point kept is
// exactly QuantileCDF's; elsewhere it is the next point above. The maximum
// is always kept.
func ThinCDF(dense []CDFPoint) []CDFPoint {
	if len(dense) == 0 {
		return nil
	}
	out := []CDFPoint{dense[0]}
	i := 0
	for _, p := range CDFPercentiles[1:] {
		for i < len(dense)-1 && dense[i].Fraction < p/100 {
			i++
		}
		if dense[i] != out[len(out)-1] {
			out = append(out, dense[i])
		}
	}
	return out
}

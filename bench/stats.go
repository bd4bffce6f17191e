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
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
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
// spaced in rank, always including the maximum.
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

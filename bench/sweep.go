package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	"time"

	kmsapi "k8s.io/kms/apis/v2"
)

// The operations a sweep drives.
const (
	OpEncrypt = "encrypt"
	OpDecrypt = "decrypt"
)

// SeedSize is the size of kube-apiserver's DEK seeds.
const SeedSize = 32

// Target is one server under test.
type Target struct {
	Name   string
	Client *Client
	// PID, if non-zero, is sampled for VmRSS while the target is driven.
	PID int

	seeds [][]byte
	cts   []*kmsapi.EncryptResponse
}

// SweepConfig says what a sweep measures.
type SweepConfig struct {
	Ops         []string
	Concurrency []int
	Rounds      int
	// Duration is how long each target is driven per op, concurrency and
	// round (after Warmup, which is not recorded). Calls, if positive,
	// replaces it with a fixed number of calls.
	Duration time.Duration
	Calls    int
	Warmup   time.Duration
	// Pool is how many distinct seeds (and ciphertexts) calls cycle over.
	Pool int
	// CDFPoints is how many points of each cell's latency CDF the plots
	// draw (Cell.PlotCDF); the report keeps QuantileCDF's.
	CDFPoints int
	Progress  io.Writer
}

// Cell is one target at one op and concurrency, over all rounds.
type Cell struct {
	Target      string    `json:"target"`
	Op          string    `json:"op"`
	Concurrency int       `json:"concurrency"`
	Rounds      []Summary `json:"rounds"`
	All         Summary   `json:"all"`
	// CDF is the latency CDF over all rounds at CDFPercentiles, as reports
	// keep it; PlotCDF is a denser one for the plots, never written.
	CDF        []CDFPoint `json:"cdf"`
	PlotCDF    []CDFPoint `json:"-"`
	RSSPeakKiB int64      `json:"rss_peak_kib,omitempty"`
}

// SweepResult is every cell of a sweep.
type SweepResult struct {
	Ops         []string      `json:"ops"`
	Concurrency []int         `json:"concurrency"`
	Rounds      int           `json:"rounds"`
	Duration    time.Duration `json:"duration_ns"`
	Targets     []string      `json:"targets"`
	Cells       []*Cell       `json:"cells"`
}

// Cell returns the cell for target, op and concurrency, or nil.
func (r *SweepResult) Cell(target, op string, conc int) *Cell {
	for _, c := range r.Cells {
		if c.Target == target && c.Op == op && c.Concurrency == conc {
			return c
		}
	}
	return nil
}

// Prepare makes each target's seeds and, by one Encrypt each, the
// ciphertexts its Decrypts will replay (so Decrypt measures the warm path).
func Prepare(ctx context.Context, pool int, targets ...*Target) error {
	pool = max(pool, 1)
	for _, t := range targets {
		t.seeds = make([][]byte, pool)
		t.cts = make([]*kmsapi.EncryptResponse, pool)
		for i := range pool {
			t.seeds[i] = make([]byte, SeedSize)
			_, _ = rand.Read(t.seeds[i])
		}
		s := Run(ctx, Load{Concurrency: min(pool, 16), Ops: pool}, func(ctx context.Context, _, i int) error {
			r, err := t.Client.Encrypt(ctx, "kwbench-prepare", t.seeds[i])
			t.cts[i] = r
			return err
		})
		if s.Errors > 0 {
			return fmt.Errorf("%s: prepare: %d Encrypts failed: %w", t.Name, s.Errors, s.FirstErr)
		}
	}
	return nil
}

// OpFunc returns the call op makes against t, cycling over its pool.
// Decrypt checks that it got the seed back.
func (t *Target) OpFunc(op string) (Op, error) {
	if len(t.seeds) == 0 {
		return nil, fmt.Errorf("%s: not prepared", t.Name)
	}
	n := len(t.seeds)
	switch op {
	case OpEncrypt:
		return func(ctx context.Context, _, i int) error {
			_, err := t.Client.Encrypt(ctx, "kwbench", t.seeds[i%n])
			return err
		}, nil
	case OpDecrypt:
		return func(ctx context.Context, _, i int) error {
			pt, err := t.Client.Decrypt(ctx, "kwbench", t.cts[i%n])
			if err != nil {
				return err
			}
			if !bytes.Equal(pt, t.seeds[i%n]) {
				return fmt.Errorf("%s: Decrypt returned other bytes than were encrypted", t.Name)
			}
			return nil
		}, nil
	default:
		return nil, fmt.Errorf("unknown op %q", op)
	}
}

// Sweep measures every target at every op and concurrency, round by round.
// Within a round the targets run back to back at the same op and
// concurrency, and the order rotates each round (A B C, B C A, C A B, …), so
// that neither drift in the machine's load nor going first favours one.
// Targets must have been Prepared.
func Sweep(ctx context.Context, cfg SweepConfig, targets ...*Target) (*SweepResult, error) {
	names := make([]string, len(targets))
	for i, t := range targets {
		names[i] = t.Name
	}
	rec := NewRecorder(cfg.Ops, cfg.Concurrency, names, cfg.Rounds, cfg.Duration)
	for round := range cfg.Rounds {
		for _, op := range cfg.Ops {
			for _, conc := range cfg.Concurrency {
				for k := range targets {
					t := targets[(k+round)%len(targets)]
					if err := ctx.Err(); err != nil {
						return nil, err
					}
					f, err := t.OpFunc(op)
					if err != nil {
						return nil, err
					}
					if cfg.Warmup > 0 {
						Run(ctx, Load{Concurrency: conc, Duration: cfg.Warmup}, f)
					}
					var rss *RSSSampler
					var cpu0 time.Duration
					if t.PID != 0 {
						rss = SampleRSS(t.PID, 20*time.Millisecond)
						cpu0, _ = ReadCPU(t.PID)
					}
					self0 := SelfCPU()
					s := Run(ctx, Load{Concurrency: conc, Duration: cfg.Duration, Ops: cfg.Calls}, f)
					s.ClientCPU = SelfCPU() - self0
					var peak int64
					if rss != nil {
						peak = rss.Stop()
						if cpu1, err := ReadCPU(t.PID); err == nil {
							s.ServerCPU = cpu1 - cpu0
						}
					}
					sum := rec.Add(t.Name, op, conc, s, peak)
					if cfg.Progress != nil {
						if s.Errors > 0 {
							fmt.Fprintf(cfg.Progress, "  %s %s c=%d: %d errors, first: %v\n", t.Name, op, conc, s.Errors, s.FirstErr)
						}
						fmt.Fprintf(cfg.Progress, "round %d/%d %-8s c=%-3d %-22s %9.0f/s  p50 %8s  p99 %8s\n",
							round+1, cfg.Rounds, op, conc, t.Name, sum.Throughput, sum.P50.Round(100*time.Nanosecond), sum.P99.Round(100*time.Nanosecond))
					}
				}
			}
		}
	}
	return rec.Result(cfg.CDFPoints), nil
}

// Recorder collects rounds into a SweepResult, for scenarios that drive
// their targets themselves (the apiserver-level benchmark).
type Recorder struct {
	res    *SweepResult
	merged map[*Cell][]time.Duration
	errs   map[*Cell]int
}

// NewRecorder makes an empty result with a cell for every target, op and
// concurrency.
func NewRecorder(ops []string, conc []int, targets []string, rounds int, d time.Duration) *Recorder {
	r := &Recorder{
		res:    &SweepResult{Ops: ops, Concurrency: conc, Rounds: rounds, Duration: d, Targets: targets},
		merged: map[*Cell][]time.Duration{},
		errs:   map[*Cell]int{},
	}
	for _, op := range ops {
		for _, c := range conc {
			for _, t := range targets {
				r.res.Cells = append(r.res.Cells, &Cell{Target: t, Op: op, Concurrency: c})
			}
		}
	}
	return r
}

// Add records one round of target at op and concurrency, with the peak
// VmRSS seen (0 if not sampled), and returns its summary.
func (r *Recorder) Add(target, op string, conc int, s Sample, rssPeak int64) Summary {
	c := r.res.Cell(target, op, conc)
	if c == nil {
		c = &Cell{Target: target, Op: op, Concurrency: conc}
		r.res.Cells = append(r.res.Cells, c)
	}
	c.RSSPeakKiB = max(c.RSSPeakKiB, rssPeak)
	r.merged[c] = append(r.merged[c], s.Latencies...)
	r.errs[c] += s.Errors
	sum := s.Summary()
	c.Rounds = append(c.Rounds, sum)
	return sum
}

// Result summarises every cell over all its rounds, with its CDF at
// CDFPercentiles and, for the plots, one of at most cdfPoints points.
func (r *Recorder) Result(cdfPoints int) *SweepResult {
	for _, c := range r.res.Cells {
		lat := r.merged[c]
		var elapsed time.Duration
		for _, x := range c.Rounds {
			elapsed += x.Elapsed
		}
		c.All = Summarize(lat, r.errs[c], elapsed)
		c.CDF = QuantileCDF(lat)
		c.PlotCDF = CDF(lat, max(cdfPoints, 2))
	}
	return r.res
}

// Comparison is one target against a base at one op and concurrency: the
// per-round ratios and their medians. For latency a ratio above 1 means
// slower than the base; for throughput, below 1 means less.
type Comparison struct {
	Target      string    `json:"target"`
	Base        string    `json:"base"`
	Op          string    `json:"op"`
	Concurrency int       `json:"concurrency"`
	P50Ratios   []float64 `json:"p50_ratios"`
	P99Ratios   []float64 `json:"p99_ratios"`
	TputRatios  []float64 `json:"throughput_ratios"`
	P50Ratio    float64   `json:"p50_ratio"`
	P99Ratio    float64   `json:"p99_ratio"`
	TputRatio   float64   `json:"throughput_ratio"`
	// CPURatio is the server's CPU per call over the base's; BoundRatio
	// is the base's CPU per call, client and server together, over the
	// target's: the throughput ratio that CPU cost alone predicts when the
	// client and server share saturated cores (0 where not measured).
	CPURatios   []float64 `json:"server_cpu_ratios,omitempty"`
	CPURatio    float64   `json:"server_cpu_ratio,omitempty"`
	BoundRatios []float64 `json:"cpu_bound_throughput_ratios,omitempty"`
	BoundRatio  float64   `json:"cpu_bound_throughput_ratio,omitempty"`
}

// Compare pairs target's and base's rounds at op and concurrency.
func (r *SweepResult) Compare(target, base, op string, conc int) (*Comparison, error) {
	t, b := r.Cell(target, op, conc), r.Cell(base, op, conc)
	if t == nil || b == nil {
		return nil, fmt.Errorf("no cells for %s vs %s at %s c=%d", target, base, op, conc)
	}
	pick := func(c *Cell, f func(Summary) float64) []float64 {
		out := make([]float64, len(c.Rounds))
		for i, s := range c.Rounds {
			out[i] = f(s)
		}
		return out
	}
	p50 := func(s Summary) float64 { return float64(s.P50) }
	p99 := func(s Summary) float64 { return float64(s.P99) }
	tput := func(s Summary) float64 { return s.Throughput }
	cmp := &Comparison{
		Target: target, Base: base, Op: op, Concurrency: conc,
		P50Ratios:  RoundRatios(pick(t, p50), pick(b, p50)),
		P99Ratios:  RoundRatios(pick(t, p99), pick(b, p99)),
		TputRatios: RoundRatios(pick(t, tput), pick(b, tput)),
	}
	scpu := func(s Summary) float64 { return float64(s.ServerCPU) }
	all := func(s Summary) float64 { return float64(s.ServerCPU + s.ClientCPU) }
	cmp.CPURatios = RoundRatios(pick(t, scpu), pick(b, scpu))
	cmp.BoundRatios = RoundRatios(pick(b, all), pick(t, all))
	cmp.CPURatio = finite(Median(cmp.CPURatios))
	cmp.BoundRatio = finite(Median(cmp.BoundRatios))
	cmp.P50Ratio = finite(Median(cmp.P50Ratios))
	cmp.P99Ratio = finite(Median(cmp.P99Ratios))
	cmp.TputRatio = finite(Median(cmp.TputRatios))
	return cmp, nil
}

// finite replaces NaN and ±Inf (which JSON cannot carry) with 0.
func finite(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	return x
}

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseStatus(t *testing.T) {
	status := "Name:\tkeywarden\nVmPeak:\t 1300000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   17890 kB\nRssAnon:\t    4000 kB\nRssFile:\t   13890 kB\nThreads:\t9\n"
	m, err := parseStatus([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS != 17890 || m.HWM != 23456 || m.Anon != 4000 || m.File != 13890 {
		t.Errorf("got %+v", m)
	}
	if _, err := parseStatus([]byte("Name:\tx\nVmRSS:\t 12 kB\n")); err == nil {
		t.Error("missing VmHWM: want an error")
	}
	if _, err := parseStatus([]byte("VmRSS:\t 12 MB\nVmHWM:\t 1 kB\n")); err == nil {
		t.Error("unexpected unit: want an error")
	}
	own, err := ReadMemory(os.Getpid())
	if err != nil || own.RSS <= 0 || own.HWM < own.RSS {
		t.Errorf("ReadMemory(self) = %+v, %v", own, err)
	}
}

func TestKeystoreCalls(t *testing.T) {
	metrics := `# HELP keywarden_keystore_operation_duration_seconds Latency.
keywarden_keystore_operation_duration_seconds_bucket{backend="file",op="unwrap",result="ok",le="0.001"} 9
keywarden_keystore_operation_duration_seconds_sum{backend="file",op="unwrap",result="ok"} 0.002
keywarden_keystore_operation_duration_seconds_count{backend="file",op="unwrap",result="ok"} 9
keywarden_keystore_operation_duration_seconds_count{backend="file",op="unwrap",result="unavailable"} 1
keywarden_keystore_operation_duration_seconds_count{backend="file",op="wrap",result="ok"} 3
`
	tests := []struct {
		op   string
		want int64
	}{{"unwrap", 10}, {"wrap", 3}, {"key_id", 0}}
	for _, tt := range tests {
		got, err := keystoreCalls([]byte(metrics), tt.op)
		if err != nil || got != tt.want {
			t.Errorf("keystoreCalls(%s) = %d, %v; want %d", tt.op, got, err, tt.want)
		}
	}
}

func TestRunCountsAndErrors(t *testing.T) {
	var calls atomic.Int64
	boom := errors.New("boom")
	s := Run(context.Background(), Load{Concurrency: 4, Ops: 100}, func(_ context.Context, _, i int) error {
		calls.Add(1)
		if i%10 == 0 {
			return boom
		}
		return nil
	})
	if calls.Load() != 100 || len(s.Latencies) != 90 || s.Errors != 10 || !errors.Is(s.FirstErr, boom) {
		t.Errorf("calls %d, latencies %d, errors %d, first %v", calls.Load(), len(s.Latencies), s.Errors, s.FirstErr)
	}
	// Duration mode stops by itself.
	d := Run(context.Background(), Load{Concurrency: 2, Duration: 10 * time.Millisecond}, func(context.Context, int, int) error {
		time.Sleep(time.Millisecond)
		return nil
	})
	if len(d.Latencies) == 0 || d.Elapsed < 10*time.Millisecond {
		t.Errorf("duration mode: %d calls in %v", len(d.Latencies), d.Elapsed)
	}
}

func sweepResult() *SweepResult {
	cell := func(t string, p50s []time.Duration, tps []float64) *Cell {
		c := &Cell{Target: t, Op: OpEncrypt, Concurrency: 1}
		for i := range p50s {
			c.Rounds = append(c.Rounds, Summary{Ops: 10, P50: p50s[i], P99: 2 * p50s[i], Max: 3 * p50s[i], Throughput: tps[i], Elapsed: time.Second})
		}
		c.All = c.Rounds[0]
		c.CDF = []CDFPoint{{p50s[0], 0.5}, {3 * p50s[0], 1}}
		c.PlotCDF = c.CDF
		return c
	}
	return &SweepResult{
		Ops: []string{OpEncrypt}, Concurrency: []int{1}, Rounds: 3, Duration: time.Second,
		Targets: []string{"floor", "kw"},
		Cells: []*Cell{
			cell("floor", []time.Duration{100, 200, 100}, []float64{1000, 500, 1000}),
			cell("kw", []time.Duration{105, 220, 110}, []float64{950, 450, 960}),
		},
	}
}

// A Recorder's cells keep the quantile CDF for the report and a dense one
// for the plots.
func TestRecorderCDFs(t *testing.T) {
	rec := NewRecorder([]string{OpEncrypt}, []int{1}, []string{"kw"}, 1, time.Second)
	lat := make([]time.Duration, 20000)
	for i := range lat {
		lat[i] = time.Duration(20000 - i)
	}
	rec.Add("kw", OpEncrypt, 1, Sample{Latencies: lat, Elapsed: time.Second}, 0)
	c := rec.Result(400).Cell("kw", OpEncrypt, 1)
	if len(c.PlotCDF) != 400 || len(c.CDF) != len(CDFPercentiles) {
		t.Errorf("%d plot points, %d report points; want 400 and %d", len(c.PlotCDF), len(c.CDF), len(CDFPercentiles))
	}
	if c.CDF[0].Latency != 1 || c.CDF[len(c.CDF)-1].Latency != 20000 {
		t.Errorf("report CDF %v: want the minimum and the maximum", c.CDF)
	}
}

func TestCompare(t *testing.T) {
	r := sweepResult()
	c, err := r.Compare("kw", "floor", OpEncrypt, 1)
	if err != nil {
		t.Fatal(err)
	}
	if c.P50Ratio != 1.1 || len(c.P50Ratios) != 3 {
		t.Errorf("p50 ratios %v, median %v; want median 1.1", c.P50Ratios, c.P50Ratio)
	}
	if c.TputRatio != 0.95 {
		t.Errorf("throughput ratios %v, median %v; want 0.95", c.TputRatios, c.TputRatio)
	}
	if _, err := r.Compare("kw", "nobody", OpEncrypt, 1); err == nil {
		t.Error("comparing with a missing target: want an error")
	}
}

func TestReportWriters(t *testing.T) {
	r := &Report{Floor: "floor", Sweep: sweepResult(), Meta: Meta{Commit: "abc", Command: "kwbench"}}
	if err := r.Compare("kw", "floor"); err != nil {
		t.Fatal(err)
	}
	r.Checks = []Check{
		NewCheck("p50 / floor", 1.1, "<=", 1.10, "×", ""),
		NewCheck("tput / floor", 0.94, ">=", 0.95, "×", ""),
		NewCheck("not run", nan(), "<=", 1, "", ""),
	}
	if !r.Checks[0].Met || r.Checks[1].Met || r.Checks[2].Met || r.Checks[2].Figure != 0 {
		t.Errorf("checks: %+v", r.Checks)
	}
	dir := t.TempDir()
	files, err := WritePlots(dir, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Errorf("plots: %v", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || len(b) < 8 || string(b[1:4]) != "PNG" {
			t.Errorf("%s is not a PNG (%v)", f, err)
		}
	}
	r.Meta.Command = "kwbench --out " + filepath.Join(os.TempDir(), "kwbench-out")
	if err := WriteJSON(filepath.Join(dir, "r.json"), r); err != nil {
		t.Fatal(err)
	}
	// Compact, one line, no local path, and the CDFs at CDFPercentiles.
	b, err := os.ReadFile(filepath.Join(dir, "r.json"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(b, []byte("\n")) != 1 || !bytes.HasSuffix(b, []byte("\n")) || !bytes.Contains(b, []byte(`"command":"kwbench --out $TMPDIR/kwbench-out"`)) {
		t.Errorf("results JSON not compact or not redacted:\n%s", b)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for _, c := range back.Sweep.Cells {
		if len(c.CDF) > len(CDFPercentiles) || len(c.PlotCDF) != 0 {
			t.Errorf("%s %s c=%d: %d CDF points written, %d plot points", c.Target, c.Op, c.Concurrency, len(c.CDF), len(c.PlotCDF))
		}
	}
	var md strings.Builder
	if err := WriteMarkdown(&md, r); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(md.String(), os.TempDir()+"/") {
		t.Errorf("markdown names %s:\n%s", os.TempDir(), md.String())
	}
	for _, want := range []string{"| p50 / floor | 1.1× | <= 1.1× | yes |", "| tput / floor | 0.94× | >= 0.95× | **no** |", "| 1 | kw | 950 | 0.1 |"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
}

func nan() float64 { return Median(nil) }

func TestParseStat(t *testing.T) {
	// Field 2 may contain spaces and parentheses; utime is 250 ticks and
	// stime 50: 3 s.
	stat := "4242 (kw (bench) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1234 1000000 4000 18446744073709551615\n"
	got, err := parseStat([]byte(stat))
	if err != nil || got != 3*time.Second {
		t.Errorf("parseStat = %v, %v; want 3s", got, err)
	}
	if _, err := parseStat([]byte("4242 (x) S 1 2")); err == nil {
		t.Error("short stat: want an error")
	}
	if own, err := ReadCPU(os.Getpid()); err != nil || own < 0 {
		t.Errorf("ReadCPU(self) = %v, %v", own, err)
	}
	if SelfCPU() <= 0 {
		t.Error("SelfCPU: want a positive CPU time")
	}
}

package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Report is one benchmark run: what was measured, on what, and the verdict
// on each target.
type Report struct {
	Meta Meta `json:"meta"`
	// Floor names the floor target that ratios are taken against.
	Floor            string             `json:"floor"`
	Memory           []ProcessMemory    `json:"memory,omitempty"`
	Sweep            *SweepResult       `json:"sweep,omitempty"`
	Comparisons      []*Comparison      `json:"comparisons,omitempty"`
	Storm            []*StormResult     `json:"storm,omitempty"`
	StormComparisons []StormComparison  `json:"storm_comparisons,omitempty"`
	Checks           []Check            `json:"checks"`
	Plots            []string           `json:"plots,omitempty"`
	Extra            map[string]float64 `json:"extra,omitempty"`
	// SweepTitle heads the sweep's tables ("Socket sweep" if empty).
	SweepTitle string `json:"sweep_title,omitempty"`
	// Tables are scenario-specific tables, written after the sweep.
	Tables []Table `json:"tables,omitempty"`
	// Raw is scenario-specific data kept in the JSON only.
	Raw any `json:"raw,omitempty"`
}

// Table is a markdown table.
type Table struct {
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
}

// DefaultMeta describes this machine and checkout: the commit (marked
// "+uncommitted" if the code that is measured has local changes, wherever in
// the repository the process runs; bench/results, where a run may be writing
// its own output, does not count), Go, CPU model, cores and kernel.
func DefaultMeta(start time.Time) Meta {
	m := Meta{Start: start, GoVersion: runtime.Version(), Cores: runtime.NumCPU()}
	if b, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(b))
	}
	if b, err := exec.Command("git", "status", "--porcelain", "--", ":/kms", ":/keystore", ":/cmd/keywarden", ":/metrics", ":/bench", ":(top,exclude)bench/results", ":/go.mod").Output(); err == nil && len(b) > 0 {
		m.Commit += "+uncommitted"
		m.Notes = append(m.Notes, "The measured code had uncommitted changes: "+strings.Join(strings.Fields(string(b)), " "))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// Meta says where and how a report was made.
type Meta struct {
	Start     time.Time     `json:"start"`
	Duration  time.Duration `json:"duration_ns"`
	Commit    string        `json:"commit"`
	GoVersion string        `json:"go_version"`
	CPU       string        `json:"cpu"`
	Cores     int           `json:"cores"`
	Kernel    string        `json:"kernel"`
	Command   string        `json:"command"`
	Conns     int           `json:"conns"`
	Notes     []string      `json:"notes,omitempty"`
}

// ProcessMemory is a server's resident memory: idle after start (one
// Encrypt and Decrypt, then a pause), peak during the run, and idle again
// after the load.
type ProcessMemory struct {
	Target    string `json:"target"`
	Idle      Memory `json:"idle"`
	AfterLoad Memory `json:"after_load"`
}

// Check is one target from the issues (a Gate), measured; or, with Info,
// a figure reported beside them that has no target.
type Check struct {
	Name   string  `json:"name"`
	Figure float64 `json:"figure"`
	Cmp    string  `json:"cmp"` // "<=", ">=" or "=="
	Limit  float64 `json:"limit"`
	Unit   string  `json:"unit,omitempty"`
	Met    bool    `json:"met"`
	Detail string  `json:"detail,omitempty"`
	// NotMeasured: the figure could not be measured (Figure is 0).
	NotMeasured bool `json:"not_measured,omitempty"`
	// Info: reported, not a target; neither met nor missed.
	Info bool `json:"info,omitempty"`
}

// NewCheck compares figure with limit. A NaN figure (not measured) is
// never met.
func NewCheck(name string, figure float64, cmp string, limit float64, unit, detail string) Check {
	c := Check{Name: name, Figure: finite(figure), Cmp: cmp, Limit: limit, Unit: unit, Detail: detail}
	if math.IsNaN(figure) {
		c.Detail = strings.TrimSpace("not measured. " + detail)
		c.NotMeasured = true
		return c
	}
	switch cmp {
	case "<=":
		c.Met = figure <= limit
	case ">=":
		c.Met = figure >= limit
	case "==":
		c.Met = figure == limit
	}
	return c
}

// Comparison returns the comparison of target with base, or nil.
func (r *Report) Comparison(target, base, op string, conc int) *Comparison {
	for _, c := range r.Comparisons {
		if c.Target == target && c.Base == base && c.Op == op && c.Concurrency == conc {
			return c
		}
	}
	return nil
}

// Compare adds the comparison of target with base at every op and
// concurrency of the sweep.
func (r *Report) Compare(target, base string) error {
	for _, op := range r.Sweep.Ops {
		for _, c := range r.Sweep.Concurrency {
			cmp, err := r.Sweep.Compare(target, base, op, c)
			if err != nil {
				return err
			}
			r.Comparisons = append(r.Comparisons, cmp)
		}
	}
	return nil
}

// WriteJSON writes v (a Report, or a scenario's own summary) to path as
// compact JSON on one line, with LocalPaths redacted: results are committed,
// and indentation and local paths are weight and noise in the repository
// (bench/results_test.go holds them to it).
func WriteJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(LocalPaths().Redact(b), '\n'), 0o644)
}

func us(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)) }

func cpuUS(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	return us(d)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func mib(kib int64) string {
	if kib == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", MiB(kib))
}

func ratios(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, " ")
}

// WriteMarkdown writes r as markdown tables: the verdicts first, then every
// figure behind them. Absolute numbers are medians over rounds; ratios are
// medians of per-round ratios. LocalPaths are redacted, as in WriteJSON.
func WriteMarkdown(w io.Writer, r *Report) error {
	var b bytes.Buffer
	writeMarkdown(&b, r)
	_, err := w.Write(LocalPaths().Redact(b.Bytes()))
	return err
}

func writeMarkdown(w io.Writer, r *Report) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	m := r.Meta
	p("Run of %s (%s), commit `%s`, %s.\n\n", m.Start.UTC().Format("2006-01-02 15:04 UTC"), m.Duration.Round(time.Second), m.Commit, m.GoVersion)
	p("Machine: %s, %d cores, Linux %s. Client connections per target: %d.\n\n", m.CPU, m.Cores, m.Kernel, m.Conns)
	p("Command: `%s`\n\n", m.Command)
	for _, n := range m.Notes {
		p("- %s\n", n)
	}
	if len(m.Notes) > 0 {
		p("\n")
	}
	if len(r.Checks) > 0 {
		p("### Targets\n\n| target | measured | limit | met |\n|---|---:|---:|:---:|\n")
		for _, c := range r.Checks {
			if c.Info {
				p("| %s | %.3g%s | – | – |\n", c.Name, c.Figure, c.Unit)
				continue
			}
			met := "**no**"
			if c.Met {
				met = "yes"
			}
			p("| %s | %.3g%s | %s %.3g%s | %s |\n", c.Name, c.Figure, c.Unit, c.Cmp, c.Limit, c.Unit, met)
		}
		p("\n")
		for _, c := range r.Checks {
			if c.Detail != "" {
				p("- %s: %s\n", c.Name, c.Detail)
			}
		}
		p("\n")
	}
	if s := r.Sweep; s != nil {
		title := r.SweepTitle
		if title == "" {
			title = "Socket sweep"
		}
		per := fmt.Sprintf("%d rounds of %s per target, op and concurrency", s.Rounds, s.Duration)
		if s.Duration == 0 {
			per = fmt.Sprintf("%d rounds per target, op and concurrency", s.Rounds)
		}
		p("### %s\n\n%s, targets interleaved and rotated each round. "+
			"Throughput and latencies are medians over rounds; ratios (to `%s`) are medians of per-round ratios, one value per round in the last column.\n\n",
			title, per, r.Floor)
		for _, op := range s.Ops {
			p("#### %s\n\n| conc | target | calls/s | p50 µs | p90 µs | p99 µs | max µs | p50 / floor | calls/s / floor | server CPU µs/call | client CPU µs/call | server CPU / floor | CPU-bound calls/s / floor | RSS peak MiB | per-round calls/s ratios |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n", op)
			for _, c := range s.Concurrency {
				for _, t := range s.Targets {
					cell := s.Cell(t, op, c)
					if cell == nil {
						continue
					}
					med := medianSummary(cell.Rounds)
					p50r, tpr, cpur, bound, per := "–", "–", "–", "–", ""
					if cmp := r.Comparison(t, r.Floor, op, c); cmp != nil && t != r.Floor {
						p50r, tpr, per = fmt.Sprintf("%.3f", cmp.P50Ratio), fmt.Sprintf("%.3f", cmp.TputRatio), ratios(cmp.TputRatios)
						if cmp.CPURatio > 0 {
							cpur, bound = fmt.Sprintf("%.3f", cmp.CPURatio), fmt.Sprintf("%.3f", cmp.BoundRatio)
						}
					}
					p("| %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c, t, med.Throughput,
						us(med.P50), us(med.P90), us(med.P99), us(med.Max), p50r, tpr, cpuUS(med.ServerCPU), cpuUS(med.ClientCPU), cpur, bound, mib(cell.RSSPeakKiB), per)
				}
			}
			p("\n")
		}
		var others []*Comparison
		for _, c := range r.Comparisons {
			if c.Base != r.Floor {
				others = append(others, c)
			}
		}
		if len(others) > 0 {
			p("#### Other pairs\n\n| op | conc | target | base | p50 ratio | p99 ratio | calls/s ratio | per-round calls/s ratios |\n|---|---:|---|---|---:|---:|---:|---|\n")
			for _, c := range others {
				p("| %s | %d | %s | %s | %.3f | %.3f | %.3f | %s |\n", c.Op, c.Concurrency, c.Target, c.Base, c.P50Ratio, c.P99Ratio, c.TputRatio, ratios(c.TputRatios))
			}
			p("\n")
		}
	}
	for _, t := range r.Tables {
		p("### %s\n\n| %s |\n|%s\n", t.Title, strings.Join(t.Header, " | "), strings.Repeat("---|", len(t.Header)))
		for _, row := range t.Rows {
			p("| %s |\n", strings.Join(row, " | "))
		}
		p("\n")
	}
	if len(r.Storm) > 0 {
		p("### Cold-start decrypt storm\n\nEach round starts the server afresh (empty KEK cache) and sends every Decrypt at once, %d in flight. "+
			"Times are medians over rounds; keystore calls are listed per round.\n\n", r.Storm[0].Concurrency)
		remote := false
		for _, s := range r.Storm {
			for _, x := range s.Rounds {
				remote = remote || x.RemoteCalls >= 0
			}
		}
		remoteHead, remoteSep := "", ""
		if remote {
			remoteHead, remoteSep = " remote Decrypts per round |", "---|"
		}
		p("| target | decrypts | local KEKs | keystore calls per round |%s storm ms | p50 ms | p99 ms | time / floor | RSS peak MiB |\n|---|---:|---:|---|%s---:|---:|---:|---:|---:|\n", remoteHead, remoteSep)
		for _, s := range r.Storm {
			var sums []Summary
			var calls, rcalls []string
			var peak int64
			for _, x := range s.Rounds {
				sums = append(sums, x.Summary)
				calls = append(calls, fmt.Sprint(x.KeystoreCalls))
				rcalls = append(rcalls, fmt.Sprint(x.RemoteCalls))
				peak = max(peak, x.RSSPeakKiB)
			}
			if s.Rounds[0].KeystoreCalls < 0 {
				calls = []string{"–"}
			}
			if s.Rounds[0].RemoteCalls < 0 {
				rcalls = []string{"–"}
			}
			rcol := ""
			if remote {
				rcol = " " + strings.Join(rcalls, " ") + " |"
			}
			med := medianSummary(sums)
			ratio := "–"
			for _, c := range r.StormComparisons {
				if c.Target == s.Target {
					ratio = fmt.Sprintf("%.2f", c.ElapsedRatio)
				}
			}
			keks := fmt.Sprint(s.KEKs)
			if s.KEKs == 0 {
				keks = "–"
			}
			p("| %s | %d | %s | %s |%s %s | %s | %s | %s | %s |\n", s.Target, s.Decrypts, keks, strings.Join(calls, " "), rcol,
				ms(med.Elapsed), ms(med.P50), ms(med.P99), ratio, mib(peak))
		}
		p("\n")
	}
	if len(r.Memory) > 0 {
		p("### Resident memory (VmRSS)\n\nVmRSS is split into RssAnon (what the process allocated: heap, stacks) and RssFile (file-backed pages, mostly the executable itself, shared with the page cache).\n\n")
		p("| target | idle after start MiB | of which anon / file | idle after the sweep MiB | of which anon / file | peak (VmHWM) MiB |\n|---|---:|---:|---:|---:|---:|\n")
		for _, mm := range r.Memory {
			p("| %s | %s | %s / %s | %s | %s / %s | %s |\n", mm.Target, mib(mm.Idle.RSS), mib(mm.Idle.Anon), mib(mm.Idle.File),
				mib(mm.AfterLoad.RSS), mib(mm.AfterLoad.Anon), mib(mm.AfterLoad.File), mib(max(mm.AfterLoad.HWM, mm.Idle.HWM)))
		}
		p("\n")
	}
	if len(r.Plots) > 0 {
		p("### Plots\n\n")
		for _, f := range r.Plots {
			p("- [%s](%s)\n", f, f)
		}
		p("\n")
	}
}

// medianSummary takes the median of each field over rounds.
func medianSummary(rs []Summary) Summary {
	if len(rs) == 0 {
		return Summary{}
	}
	f := func(get func(Summary) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = get(r)
		}
		return Median(xs)
	}
	d := func(get func(Summary) time.Duration) time.Duration {
		return time.Duration(f(func(s Summary) float64 { return float64(get(s)) }))
	}
	return Summary{
		Ops:        int(f(func(s Summary) float64 { return float64(s.Ops) })),
		Throughput: f(func(s Summary) float64 { return s.Throughput }),
		Elapsed:    d(func(s Summary) time.Duration { return s.Elapsed }),
		Mean:       d(func(s Summary) time.Duration { return s.Mean }),
		P50:        d(func(s Summary) time.Duration { return s.P50 }),
		P90:        d(func(s Summary) time.Duration { return s.P90 }),
		P99:        d(func(s Summary) time.Duration { return s.P99 }),
		Max:        d(func(s Summary) time.Duration { return s.Max }),
		ServerCPU:  d(func(s Summary) time.Duration { return s.ServerCPU }),
		ClientCPU:  d(func(s Summary) time.Duration { return s.ClientCPU }),
	}
}

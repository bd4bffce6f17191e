package bench

import (
	"fmt"
	"io"
	"strings"
)

// A Gate is an acceptance target from the issues: a figure that must
// compare with a limit. Benchmarks are not tests: a run reports every gate
// as PASS or FAIL (Verdict) and fails on them only when asked to
// (GatesEnforce), because the figures move with the machine's load.
type Gate struct {
	Cmp   string  // "<=", ">=" or "=="
	Limit float64 // for a gate whose limit is a count of the run (local KEKs), set by At
	Unit  string
}

// The gates, as data: kwbench (bench/cmd/kwbench) and the apiserver-level
// benchmarks (bench/apiserver) measure against these, and
// docs/benchmarks.md reports them.
var (
	// keywarden / floor, p50 latency over the socket at concurrency 1
	// (issues 2, 6).
	GateSocketP50 = Gate{"<=", 1.10, "×"}
	// keywarden / floor, throughput over the socket at concurrency 64,
	// measured and predicted from CPU per call (issues 2, 6).
	GateSocketThroughput = Gate{">=", 0.95, "×"}
	// keywarden with 20 ms added to every keystore call / with a fast
	// keystore, throughput at concurrency 64 (issue 6).
	GateSlowKeystore = Gate{">=", 0.9, "×"}
	// keywarden's VmRSS: idle after start, and peak at concurrency 64
	// (issues 2, 6).
	GateIdleRSS = Gate{"<=", 20, " MiB"}
	GatePeakRSS = Gate{"<=", 32, " MiB"}
	// keywarden over a root keystore / over the file keystore, throughput
	// at concurrency 64 (issues 4, 8).
	GateKeystoreThroughput = Gate{">=", 0.95, "×"}
	// keywarden / the per-call plugin on the same keystore, throughput at
	// concurrency 64: an HSM (issue 4), a remote KMS (issue 8).
	GatePerCallHSM    = Gate{">=", 1.8, "×"}
	GatePerCallRemote = Gate{">=", 8, "×"}
	// Keystore calls in a cold storm: exactly one per distinct local KEK
	// (issues 4, 6, 8). Limit: the run's KEKs.
	GateStormKeystoreCalls = Gate{Cmp: "=="}
	// kube-apiserver Secret throughput, keywarden / the floor plugin, and
	// the same predicted from CPU per request (issue 6).
	GateAPIServerThroughput = Gate{">=", 0.97, "×"}
	// kube-apiserver cold start with a slow keystore: keystore calls at
	// most the distinct local KEKs (limit: the run's count), and time to
	// /readyz over the floor plugin's (issue 6).
	GateColdStartKeystoreCalls = Gate{Cmp: "<="}
	GateColdStartReady         = Gate{"<=", 1.1, "×"}
)

// At is g with limit, for gates whose limit is a count of the run.
func (g Gate) At(limit float64) Gate {
	g.Limit = limit
	return g
}

// Check measures figure (NaN: not measured) against g.
func (g Gate) Check(name string, figure float64, detail string) Check {
	return NewCheck(name, figure, g.Cmp, g.Limit, g.Unit, detail)
}

// Info is a figure reported beside the gates with none of its own (an A/A
// control, a reference): it neither passes nor fails.
func Info(name string, figure float64, unit, detail string) Check {
	return Check{Name: name, Figure: finite(figure), Unit: unit, Detail: detail, Info: true}
}

// Verdict writes one line per check, PASS, FAIL or INFO, with its figure
// and limit, and returns the gates that failed (not measured counts as
// failed).
func Verdict(w io.Writer, checks []Check) (failed []Check) {
	for _, c := range checks {
		figure := fmt.Sprintf("%.3g%s", c.Figure, c.Unit)
		if c.NotMeasured {
			figure = "not measured"
		}
		switch {
		case c.Info:
			fmt.Fprintf(w, "INFO  %s: %s\n", c.Name, figure)
		case c.Met:
			fmt.Fprintf(w, "PASS  %s: %s (gate %s %.3g%s)\n", c.Name, figure, c.Cmp, c.Limit, c.Unit)
		default:
			fmt.Fprintf(w, "FAIL  %s: %s (gate %s %.3g%s)\n", c.Name, figure, c.Cmp, c.Limit, c.Unit)
			failed = append(failed, c)
		}
	}
	return failed
}

// GateMode is what a run does with its failed gates: report them (the
// default) or fail.
type GateMode string

const (
	GatesReport  GateMode = "report"
	GatesEnforce GateMode = "enforce"
)

// ParseGateMode reads "report" (or "") and "enforce".
func ParseGateMode(s string) (GateMode, error) {
	switch m := GateMode(strings.TrimSpace(s)); m {
	case "", GatesReport:
		return GatesReport, nil
	case GatesEnforce:
		return m, nil
	default:
		return "", fmt.Errorf("gate mode %q: want %s or %s", s, GatesReport, GatesEnforce)
	}
}

// String and Set make a GateMode a flag.Value.
func (m *GateMode) String() string {
	if m == nil || *m == "" {
		return string(GatesReport)
	}
	return string(*m)
}

func (m *GateMode) Set(s string) error {
	v, err := ParseGateMode(s)
	if err == nil {
		*m = v
	}
	return err
}

// Enforce returns an error naming the failed gates if m is GatesEnforce,
// and nil otherwise.
func (m GateMode) Enforce(failed []Check) error {
	if m != GatesEnforce || len(failed) == 0 {
		return nil
	}
	names := make([]string, len(failed))
	for i, c := range failed {
		names[i] = c.Name
	}
	return fmt.Errorf("%d gate(s) failed: %s", len(failed), strings.Join(names, "; "))
}

package bench

import (
	"flag"
	"math"
	"strings"
	"testing"
)

func TestGateCheck(t *testing.T) {
	for _, tc := range []struct {
		name   string
		gate   Gate
		figure float64
		met    bool
	}{
		{"at most, under", GateSocketP50, 1.05, true},
		{"at most, at the limit", GateSocketP50, 1.10, true},
		{"at most, over", GateSocketP50, 1.11, false},
		{"at least, over", GateAPIServerThroughput, 1.0, true},
		{"at least, under", GateAPIServerThroughput, 0.96, false},
		{"exactly the run's count", GateStormKeystoreCalls.At(10), 10, true},
		{"more than the run's count", GateStormKeystoreCalls.At(10), 11, false},
		{"fewer than the run's count", GateStormKeystoreCalls.At(10), 9, false},
		{"at most the run's count", GateColdStartKeystoreCalls.At(5), 4, true},
		{"not measured", GateSocketP50, math.NaN(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.gate.Check("x", tc.figure, "d")
			if c.Met != tc.met || c.Cmp != tc.gate.Cmp || c.Limit != tc.gate.Limit || c.Info {
				t.Errorf("%+v: want met %v against %+v", c, tc.met, tc.gate)
			}
			if math.IsNaN(tc.figure) != c.NotMeasured || math.IsNaN(c.Figure) {
				t.Errorf("%+v: not measured %v, figure must stay finite", c, c.NotMeasured)
			}
		})
	}
	if GateStormKeystoreCalls.Limit != 0 {
		t.Error("At changed the shared gate")
	}
}

func TestVerdict(t *testing.T) {
	checks := []Check{
		GateSocketThroughput.Check("tput", 0.96, ""),
		GateIdleRSS.Check("rss", 32.9, ""),
		GateSocketP50.Check("p50", math.NaN(), ""),
		Info("(A/A control) tput", 1.15, "×", ""),
		GateStormKeystoreCalls.At(10).Check("storm", 10, ""),
	}
	var out strings.Builder
	failed := Verdict(&out, checks)
	want := "PASS  tput: 0.96× (gate >= 0.95×)\n" +
		"FAIL  rss: 32.9 MiB (gate <= 20 MiB)\n" +
		"FAIL  p50: not measured (gate <= 1.1×)\n" +
		"INFO  (A/A control) tput: 1.15×\n" +
		"PASS  storm: 10 (gate == 10)\n"
	if out.String() != want {
		t.Errorf("verdict:\n%s\nwant:\n%s", out.String(), want)
	}
	if len(failed) != 2 || failed[0].Name != "rss" || failed[1].Name != "p50" {
		t.Errorf("failed %+v", failed)
	}
	if err := GatesReport.Enforce(failed); err != nil {
		t.Errorf("report mode: %v", err)
	}
	if err := GatesEnforce.Enforce(nil); err != nil {
		t.Errorf("enforce, nothing failed: %v", err)
	}
	if err := GatesEnforce.Enforce(failed); err == nil || !strings.Contains(err.Error(), "2 gate(s) failed: rss; p50") {
		t.Errorf("enforce: %v", err)
	}
	// Info rows have no limit in the markdown either.
	var md strings.Builder
	if err := WriteMarkdown(&md, &Report{Checks: checks}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "| (A/A control) tput | 1.15× | – | – |") {
		t.Errorf("markdown:\n%s", md.String())
	}
}

func TestGateMode(t *testing.T) {
	for in, want := range map[string]GateMode{"": GatesReport, "report": GatesReport, " enforce": GatesEnforce} {
		if got, err := ParseGateMode(in); err != nil || got != want {
			t.Errorf("ParseGateMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseGateMode("strict"); err == nil {
		t.Error("strict: want an error")
	}
	var m GateMode
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Var(&m, "gates", "")
	if m.String() != "report" {
		t.Errorf("zero value %q, want report", m.String())
	}
	if err := fs.Parse([]string{"--gates=enforce"}); err != nil || m != GatesEnforce {
		t.Errorf("flag: %q, %v", m, err)
	}
}

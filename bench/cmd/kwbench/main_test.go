package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/bench"
)

// A sweep of fewer than minPublishRounds rounds is marked in its report as
// not for publishing; a full one is not.
func TestMetaMarksShortRuns(t *testing.T) {
	for _, tc := range []struct {
		rounds int
		marked bool
	}{{1, true}, {minPublishRounds - 1, true}, {minPublishRounds, false}, {15, false}} {
		m := meta(time.Now(), &options{rounds: tc.rounds})
		got := strings.Contains(strings.Join(m.Notes, "\n"), "not for publishing")
		if got != tc.marked {
			t.Errorf("rounds %d: marked %v, want %v (notes %q)", tc.rounds, got, tc.marked, m.Notes)
		}
	}
}

// Each server kind runs its own binary with its own flags, and counts its
// keystore calls its own way.
func TestServerKinds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		kind    serverKind
		binary  string
		args    []string
		http    bool
		spied   bool
		unwraps bool
	}{
		{"floor", floorKind, "kwfloor", []string{"--listen", "unix:///s"}, false, false, false},
		{"keywarden", keywardenKind, "keywarden", []string{"--listen", "unix:///s", "--keystore", "file:///k", "--metrics-addr", "127.0.0.1:1"}, true, false, true},
		{"lab", labKind, "kwlab", []string{"--listen", "unix:///s", "--keystore", "file:///k", "--http-addr", "127.0.0.1:1"}, true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.kind
			if got := k.binary(); got != tc.binary {
				t.Errorf("binary %q, want %q", got, tc.binary)
			}
			if got := k.args("unix:///s", "file:///k", "127.0.0.1:1"); !slices.Equal(got, tc.args) {
				t.Errorf("args %q, want %q", got, tc.args)
			}
			if k.hasHTTP() != tc.http || k.spied() != tc.spied || (k.unwraps("127.0.0.1:1") != nil) != tc.unwraps {
				t.Errorf("HTTP %v, spied %v, counts unwraps %v; want %v, %v, %v", k.hasHTTP(), k.spied(), k.unwraps("x") != nil, tc.http, tc.spied, tc.unwraps)
			}
		})
	}
}

// report is a run's report with keywarden's ratios to the floor at
// concurrency 1 and 64 (throughput tput64 at 64), its memory, and a storm
// whose worst round made worstCalls keystore calls for 10 KEKs.
func report(tput64 float64, idleMiB int64, worstCalls int64) *bench.Report {
	cmp := func(target, base string, conc int, p50, tput, bound float64) *bench.Comparison {
		return &bench.Comparison{Target: target, Base: base, Op: bench.OpEncrypt, Concurrency: conc, P50Ratio: p50, TputRatio: tput, BoundRatio: bound}
	}
	return &bench.Report{
		Floor: floorName,
		Sweep: &bench.SweepResult{Ops: []string{bench.OpEncrypt}, Concurrency: []int{1, 64}, Targets: []string{floorName, kwName, floor2Name},
			Cells: []*bench.Cell{{Target: kwName, Op: bench.OpEncrypt, Concurrency: 64, RSSPeakKiB: 40 << 10}}},
		Comparisons: []*bench.Comparison{
			cmp(kwName, floorName, 1, 1.05, 0.97, 0.99),
			cmp(kwName, floorName, 64, 1.10, tput64, 0),
			cmp(floor2Name, floorName, 64, 1.00, 1.01, 1.00),
		},
		Memory: []bench.ProcessMemory{{Target: kwName, Idle: bench.Memory{RSS: idleMiB << 10}}},
		Storm: []*bench.StormResult{{Target: kwName, Decrypts: 1000, KEKs: 10, Rounds: []bench.StormRound{
			{KeystoreCalls: 10, RemoteCalls: -1}, {KeystoreCalls: worstCalls, RemoteCalls: -1}}}},
	}
}

// The gates are evaluated from the report: the right figure, the shared
// limit, met or not, and not measured where a figure is missing.
func TestChecks(t *testing.T) {
	o := &options{ops: []string{bench.OpEncrypt}, conc: []int{1, 64}}
	cs := checks(o, nil, report(0.90, 17, 11))
	type want struct {
		figure, limit   float64
		met, unmeasured bool
	}
	wants := map[string]want{
		"encrypt p50 / floor, concurrency 1":                                                        {1.05, 1.10, true, false},
		"encrypt throughput / floor, concurrency 64":                                                {0.90, 0.95, false, false},
		"encrypt CPU-bound throughput / floor, concurrency 64 (from CPU per call, client + server)": {0, 0.95, false, true},
		"keywarden VmRSS idle":                                                                      {17, 20, true, false},
		"keywarden VmRSS peak at concurrency 64":                                                    {40, 32, false, false},
		"keywarden: keystore calls for a cold storm of 1000 Decrypts over 10 KEKs (worst round)":    {11, 10, false, false},
	}
	if len(cs) != len(wants) {
		t.Errorf("%d checks, want %d: %+v", len(cs), len(wants), cs)
	}
	for _, c := range cs {
		w, ok := wants[c.Name]
		if !ok {
			t.Errorf("unexpected check %q", c.Name)
			continue
		}
		if c.Figure != w.figure || c.Limit != w.limit || c.Met != w.met || c.NotMeasured != w.unmeasured {
			t.Errorf("%s: figure %v, limit %v, met %v, not measured %v; want %+v", c.Name, c.Figure, c.Limit, c.Met, c.NotMeasured, w)
		}
	}
	if c := cs[1]; !strings.Contains(c.Detail, "A/A control (floor-2 / floor) at the same point: 1.010") {
		t.Errorf("throughput check without its A/A control: %q", c.Detail)
	}
	// A run that meets them all.
	for _, c := range checks(&options{ops: []string{bench.OpEncrypt}, conc: []int{1}}, nil, report(0.99, 17, 10)) {
		if strings.Contains(c.Name, "concurrency 64") {
			continue // not swept at 64 here: reported as not measured
		}
		if !c.Met {
			t.Errorf("%s: not met: %+v", c.Name, c)
		}
	}
}

// --gates=enforce fails the run on a failed gate; the default reports it.
func TestGatesFlag(t *testing.T) {
	cs := checks(&options{ops: []string{bench.OpEncrypt}, conc: []int{1, 64}}, nil, report(0.90, 17, 10))
	for _, tc := range []struct {
		args    []string
		wantErr bool
	}{{nil, false}, {[]string{"--gates", "report"}, false}, {[]string{"--gates=enforce"}, true}} {
		o, err := parseFlags(tc.args)
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		err = gates(o.gates, cs, &out)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: error %v, want one: %v", tc.args, err, tc.wantErr)
		}
		if !strings.Contains(out.String(), "FAIL  encrypt throughput / floor, concurrency 64: 0.9× (gate >= 0.95×)") ||
			!strings.Contains(out.String(), "PASS  keywarden VmRSS idle: 17 MiB (gate <= 20 MiB)") {
			t.Errorf("%q: verdict lines missing:\n%s", tc.args, out.String())
		}
	}
	if _, err := parseFlags([]string{"--gates", "strict"}); err == nil {
		t.Error("--gates strict: want an error")
	}
}

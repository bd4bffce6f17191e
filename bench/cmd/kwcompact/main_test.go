package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/bench"
)

// An indented report with a dense CDF and a local path comes out on one
// line, in the same key order, with the same numbers, a thinned CDF and a
// relative path.
func TestRewrite(t *testing.T) {
	tenth := 0.1
	lat := make([]time.Duration, 1000)
	for i := range lat {
		lat[i] = time.Duration(1000 + i*i)
	}
	r := &bench.Report{
		Meta:  bench.Meta{Command: "go run ./bench/cmd/kwbench --out /work/main/bench/results/x", Notes: []string{"z first", "a second"}},
		Floor: "floor",
		Sweep: &bench.SweepResult{Ops: []string{"encrypt"}, Concurrency: []int{1}, Rounds: 1, Targets: []string{"floor"},
			Cells: []*bench.Cell{{Target: "floor", Op: "encrypt", Concurrency: 1, All: bench.Summarize(lat, 0, time.Second), CDF: bench.CDF(lat, 400)}}},
		Extra: map[string]float64{"ratio": tenth + 0.2},
	}
	old, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	paths := bench.Paths{Roots: []string{"/work/main"}}
	got, err := rewrite("results.json", old, paths)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(got, []byte("\n")) != 1 {
		t.Errorf("not one line:\n%s", got)
	}
	for _, want := range []string{`"command":"go run ./bench/cmd/kwbench --out bench/results/x"`, `"notes":["z first","a second"]`, `"ratio":0.30000000000000004`, `{"meta":{"start":`} {
		if !bytes.Contains(got, []byte(want)) {
			t.Errorf("lacks %s:\n%s", want, got)
		}
	}
	var back bench.Report
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	cdf := back.Sweep.Cells[0].CDF
	if len(cdf) > len(bench.CDFPercentiles) || cdf[len(cdf)-1].Latency != r.Sweep.Cells[0].All.Max {
		t.Errorf("CDF not thinned to the percentiles, or lost its maximum: %v", cdf)
	}
	// Idempotent.
	again, err := rewrite("results.json", got, paths)
	if err != nil || !bytes.Equal(again, got) {
		t.Errorf("second rewrite changed the file (%v)", err)
	}
	// Text is redacted; PNGs are left alone.
	if got, _ := rewrite("servers.log", []byte("unix:///work/main/.dev/kms.sock\n"), paths); string(got) != "unix://.dev/kms.sock\n" {
		t.Errorf("servers.log: %q", got)
	}
	png := []byte("\x89PNG\r\n\x1a\n\x00/work/main/x")
	if got, _ := rewrite("a.png", png, paths); !bytes.Equal(got, png) {
		t.Error("a PNG was changed")
	}
}

// The checks refuse a rewrite that changed anything but the CDFs.
func TestSameRefuses(t *testing.T) {
	if err := same([]byte(`{"a":1,"cdf":[1]}`), []byte(`{"a":1}`)); err != nil {
		t.Errorf("only the CDF differs: %v", err)
	}
	for _, b := range []string{`{"a":1.0}`, `{"a":1,"b":2}`, `{"a":[1]}`} {
		if err := same([]byte(`{"a":1}`), []byte(b)); err == nil {
			t.Errorf("%s: want a difference", b)
		}
	}
	a := `{"floor":"floor","checks":[{"name":"x","figure":1,"cmp":"<=","limit":1,"met":true}]}`
	b := strings.Replace(a, `"figure":1`, `"figure":1.1`, 1)
	if err := sameTables([]byte(a), []byte(b)); err == nil {
		t.Error("a changed figure: want the tables to differ")
	}
}

func TestRunDryAndWrite(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "summary.json")
	if err := os.WriteFile(f, []byte("{\n  \"a\": 1\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run([]string{"-n", dir}, &out); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); !bytes.Contains(b, []byte("  ")) {
		t.Error("-n wrote the file")
	}
	if err := run([]string{dir}, &out); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); string(b) != "{\"a\":1}\n" {
		t.Errorf("got %q", b)
	}
}

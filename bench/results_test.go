package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// What a committed results file may be: the largest today is a full socket
// sweep's results.json (17 targets, 5 concurrencies: about 450 KB compact),
// the PNGs are 20–80 KB. An indented report, or one with 400-point CDFs,
// is several times over.
const (
	resultsMaxBytes     = 512 << 10
	resultsMaxCDFPoints = 64
)

// machinePath is an absolute path that names a machine, a user or a
// checkout, where a path starts (bench/results/tmp/ is not one).
var machinePath = regexp.MustCompile(`(?:^|[^A-Za-z0-9_.~$-])/(?:root|home|tmp|work|var|Users|private|mnt|srv)/`)

// checkResults checks every file under dir (results/tmp, where unkept runs
// go, aside) and returns what is wrong with each.
func checkResults(dir string) ([]error, error) {
	var bad []error
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rel, _ := filepath.Rel(dir, path); rel == "tmp" {
				return filepath.SkipDir
			}
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := checkResultsFile(path, b); err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", path, err))
		}
		return nil
	})
	return bad, err
}

// checkResultsFile checks one file: its size, and for text, no machine
// path, and for JSON, one compact line whose CDFs are thinned.
func checkResultsFile(path string, b []byte) error {
	var errs []error
	if len(b) > resultsMaxBytes {
		errs = append(errs, fmt.Errorf("%d bytes, over %d", len(b), resultsMaxBytes))
	}
	if bytes.IndexByte(b, 0) >= 0 { // binary (the PNGs): size only
		return errors.Join(errs...)
	}
	if loc := machinePath.FindIndex(b); loc != nil {
		line := bytes.Count(b[:loc[0]], []byte("\n")) + 1
		end := min(loc[1]+40, len(b))
		if i := bytes.IndexAny(b[loc[1]:end], "\n\" `"); i >= 0 {
			end = loc[1] + i
		}
		errs = append(errs, fmt.Errorf("line %d: a local absolute path (%q): write paths through bench.Paths, or rewrite with bench/cmd/kwcompact", line, strings.TrimSpace(string(b[loc[0]:end]))))
	}
	if strings.HasSuffix(path, ".json") {
		if bytes.Count(b, []byte("\n")) > 1 {
			errs = append(errs, errors.New("indented JSON: write it with bench.WriteJSON (compact, one line)"))
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			errs = append(errs, err)
		} else if n := maxCDF(v); n > resultsMaxCDFPoints {
			errs = append(errs, fmt.Errorf("a CDF of %d points, over %d: reports keep bench.QuantileCDF", n, resultsMaxCDFPoints))
		}
	}
	return errors.Join(errs...)
}

// maxCDF is the length of the longest "cdf" array in v.
func maxCDF(v any) int {
	n := 0
	switch x := v.(type) {
	case map[string]any:
		for k, y := range x {
			if a, ok := y.([]any); ok && k == "cdf" {
				n = max(n, len(a))
			}
			n = max(n, maxCDF(y))
		}
	case []any:
		for _, y := range x {
			n = max(n, maxCDF(y))
		}
	}
	return n
}

// The committed results stay lean: no file over the limit, no indented
// JSON or dense CDF, no path of the machine that made them.
func TestResultsAreLean(t *testing.T) {
	bad, err := checkResults("results")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range bad {
		t.Error(e)
	}
}

// The check itself refuses each kind of bad file, and passes good ones.
func TestResultsCheckRefuses(t *testing.T) {
	dir := t.TempDir()
	dense := make([]CDFPoint, 400)
	for i := range dense {
		dense[i] = CDFPoint{Latency: 1000, Fraction: float64(i+1) / 400}
	}
	denseJSON, _ := json.Marshal(map[string]any{"sweep": map[string]any{"cells": []any{map[string]any{"cdf": dense}}}})
	thin, _ := json.Marshal(map[string]any{"cdf": ThinCDF(dense), "command": "kwbench --out bench/results/tmp/x --bin $TMPDIR/bin"})
	files := map[string]struct {
		body string
		bad  string // part of the complaint; "" for a good file
	}{
		"good/results.json":       {string(thin) + "\n", ""},
		"good/results.md":         {"Command: `go run ./bench/cmd/kwbench --out bench/results/tmp/x`\n", ""},
		"good/plot.png":           {"\x89PNG\r\n\x1a\n\x00 /home/x/ is image data", ""},
		"tmp/unkept/results.json": {"{\n  \"a\": 1\n}\n", ""},
		"big/results.md":          {strings.Repeat("x", resultsMaxBytes+1), "bytes, over"},
		"big/plot.png":            {"\x00" + strings.Repeat("x", resultsMaxBytes), "bytes, over"},
		"indented/results.json":   {"{\n  \"a\": 1\n}\n", "indented JSON"},
		"dense/results.json":      {string(denseJSON) + "\n", "a CDF of 400 points"},
		"home/results.md":         {"Command: `kwbench --out /home/alice/r`\n", "/home/alice"},
		"root/results.json":       {`{"note":"kube-apiserver (/root/keywarden/bin)"}` + "\n", "/root/keywarden"},
		"work/servers.log":        {"=== floor: kwfloor --listen unix:///work/main/.dev/kms.sock\n", "/work/main"},
		"temp/servers.log":        {"ok\n{\"socket\":\"/tmp/kwb1/s1/kms.sock\"}\n", "line 2"},
		"var/results.md":          {"--bin /var/folders/x\n", "/var/folders"},
		"notjson/summary.json":    {"{\"a\":\n", "unexpected end"},
	}
	for name, f := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bad, err := checkResults(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range files {
		var got error
		for _, e := range bad {
			if strings.Contains(e.Error(), filepath.Join(dir, name)+":") {
				got = e
			}
		}
		switch {
		case f.bad == "" && got != nil:
			t.Errorf("%s refused: %v", name, got)
		case f.bad != "" && got == nil:
			t.Errorf("%s passed, want a complaint about %q", name, f.bad)
		case f.bad != "" && !strings.Contains(got.Error(), f.bad):
			t.Errorf("%s: %v, want %q in it", name, got, f.bad)
		}
	}
}

// Command kwcompact rewrites benchmark results folders the way the writers
// in package bench now write them: every JSON file compact on one line, each
// cell's latency CDF thinned to bench.CDFPercentiles (bench.ThinCDF), and
// the local absolute paths of the machine that ran them redacted
// (bench.Paths) in every text file. PNGs are left alone.
//
//	go run ./bench/cmd/kwcompact -root /path/to/other/checkout bench/results
//
// -root names a repository root of the machine that made the results
// (repeatable; paths under it become relative); this checkout's root,
// $HOME and the temporary directory are always redacted. Key order and
// every number are kept as written (the JSON is re-emitted token by
// token).
//
// Before it writes a JSON file it checks that nothing but the CDFs changed:
// the old (redacted) and the new file decode to the same values once their
// "cdf" arrays are set aside, and, for a results.json, bench.WriteMarkdown
// renders the same tables from both. -n checks without writing.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/keywarden/keywarden/bench"
)

type roots []string

func (r *roots) String() string     { return strings.Join(*r, ",") }
func (r *roots) Set(s string) error { *r = append(*r, s); return nil }

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "kwcompact:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fset := flag.NewFlagSet("kwcompact", flag.ContinueOnError)
	var extra roots
	fset.Var(&extra, "root", "a repository root of the machine that made the results (repeatable)")
	dry := fset.Bool("n", false, "check and report, write nothing")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if fset.NArg() == 0 {
		return errors.New("usage: kwcompact [-n] [-root DIR] FOLDER [FOLDER ...]")
	}
	paths := bench.LocalPaths()
	paths.Roots = append(paths.Roots, extra...)
	var before, after int64
	for _, dir := range fset.Args() {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			old, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			neu, err := rewrite(path, old, paths)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			before += int64(len(old))
			after += int64(len(neu))
			if bytes.Equal(old, neu) {
				return nil
			}
			fmt.Fprintf(stdout, "%9d → %9d  %s\n", len(old), len(neu), path)
			if *dry {
				return nil
			}
			return os.WriteFile(path, neu, 0o644)
		})
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "%9d → %9d  total\n", before, after)
	return nil
}

// rewrite returns the file at path as it should be.
func rewrite(path string, b []byte, paths bench.Paths) ([]byte, error) {
	switch {
	case strings.HasSuffix(path, ".png"), bytes.IndexByte(b, 0) >= 0:
		return b, nil
	case !strings.HasSuffix(path, ".json"):
		return paths.Redact(b), nil
	}
	red := paths.Redact(b)
	neu, err := compact(red)
	if err != nil {
		return nil, err
	}
	if err := same(red, neu); err != nil {
		return nil, err
	}
	if filepath.Base(path) == "results.json" {
		if err := sameTables(red, neu); err != nil {
			return nil, err
		}
	}
	return neu, nil
}

// compact re-emits the JSON document b on one line, token by token (key
// order and number text kept), with every "cdf" array of CDF points
// thinned by bench.ThinCDF.
func compact(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out bytes.Buffer
	if err := value(dec, &out); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON document")
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func value(dec *json.Decoder, out *bytes.Buffer) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			out.WriteByte('{')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					out.WriteByte(',')
				}
				k, err := dec.Token()
				if err != nil {
					return err
				}
				key, ok := k.(string)
				if !ok {
					return fmt.Errorf("object key %v", k)
				}
				writeJSON(out, key)
				out.WriteByte(':')
				if key == "cdf" {
					var pts []bench.CDFPoint
					if err := dec.Decode(&pts); err != nil {
						return fmt.Errorf("cdf: %w", err)
					}
					writeJSON(out, bench.ThinCDF(pts))
					continue
				}
				if err := value(dec, out); err != nil {
					return err
				}
			}
			out.WriteByte('}')
		case '[':
			out.WriteByte('[')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					out.WriteByte(',')
				}
				if err := value(dec, out); err != nil {
					return err
				}
			}
			out.WriteByte(']')
		}
		_, err := dec.Token() // the closing delimiter
		return err
	case json.Number:
		out.WriteString(t.String())
	case nil:
		out.WriteString("null")
	default: // string, bool
		writeJSON(out, t)
	}
	return nil
}

func writeJSON(out *bytes.Buffer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // strings, bools and CDF points always marshal
	}
	out.Write(b)
}

// same checks that a and b hold the same values once "cdf" arrays are set
// aside.
func same(a, b []byte) error {
	va, err := decodeWithoutCDF(a)
	if err != nil {
		return err
	}
	vb, err := decodeWithoutCDF(b)
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(va, vb) {
		return errors.New("the rewrite changed more than the CDFs")
	}
	return nil
}

func decodeWithoutCDF(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	var strip func(any)
	strip = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			delete(x, "cdf")
			for _, y := range x {
				strip(y)
			}
		case []any:
			for _, y := range x {
				strip(y)
			}
		}
	}
	strip(v)
	return v, nil
}

// sameTables checks that the markdown rendered from the two reports is the
// same: every figure a results.md or a doc quotes survived.
func sameTables(a, b []byte) error {
	var mds [2]bytes.Buffer
	for i, x := range [][]byte{a, b} {
		var r bench.Report
		if err := json.Unmarshal(x, &r); err != nil {
			return err
		}
		if err := bench.WriteMarkdown(&mds[i], &r); err != nil {
			return err
		}
	}
	if !bytes.Equal(mds[0].Bytes(), mds[1].Bytes()) {
		return errors.New("the markdown tables rendered from the rewritten report differ")
	}
	return nil
}

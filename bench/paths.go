package bench

import (
	"bytes"
	"cmp"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Paths rewrites the local absolute paths a report would otherwise carry
// (a --out or --bin folder in the command, a tool's path in a note, a socket
// or keyset in a server log), so that nothing committed under bench/results
// names the machine, the user or the checkout that made it:
//
//	<root>/bench/results/x  → bench/results/x   (relative to the repository)
//	<home>/src/x            → ~/src/x
//	<temp>/kwb123/kms.sock  → $TMPDIR/kwb123/kms.sock
//
// Only whole directories are matched (a prefix followed by "/"); the
// longest prefix wins, so a checkout under the home or the temporary
// directory still becomes relative.
type Paths struct {
	// Roots are repository roots: a path under one becomes relative to it.
	Roots []string
	// Home becomes "~".
	Home string
	// Temp are temporary directories; each becomes "$TMPDIR".
	Temp []string
}

// LocalPaths is this process's Paths: the repository root above the
// working directory (if any), $HOME, os.TempDir() and /tmp.
func LocalPaths() Paths {
	p := Paths{Temp: []string{os.TempDir(), "/tmp"}}
	if root, err := RepoRoot(); err == nil {
		p.Roots = []string{root}
	}
	if home, err := os.UserHomeDir(); err == nil {
		p.Home = home
	}
	return p
}

// Redact returns b with every path under p's directories rewritten.
func (p Paths) Redact(b []byte) []byte {
	to := map[string]string{}
	add := func(dir, repl string) {
		dir = strings.TrimSuffix(filepath.Clean(dir), "/")
		if dir == "" || dir == "." || !filepath.IsAbs(dir) {
			return // never "/": it would take every absolute path
		}
		if _, ok := to[dir]; !ok {
			to[dir] = repl
		}
	}
	for _, r := range p.Roots {
		add(r, "")
	}
	if p.Home != "" {
		add(p.Home, "~/")
	}
	for _, t := range p.Temp {
		add(t, "$TMPDIR/")
	}
	if len(to) == 0 {
		return b
	}
	dirs := slices.Collect(maps.Keys(to))
	// Alternatives match leftmost-first: the longest directory first.
	slices.SortFunc(dirs, func(a, b string) int { return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b)) })
	quoted := make([]string, len(dirs))
	for i, d := range dirs {
		quoted[i] = regexp.QuoteMeta(d)
	}
	// A directory counts where a path starts: not inside a longer name or
	// a relative path (bench/results/tmp/ is no temporary directory).
	re := regexp.MustCompile(`(?:^|[^A-Za-z0-9_.~$-])(` + strings.Join(quoted, "|") + `)/`)
	var out bytes.Buffer
	last := 0
	for _, m := range re.FindAllSubmatchIndex(b, -1) {
		out.Write(b[last:m[2]])
		out.WriteString(to[string(b[m[2]:m[3]])])
		last = m[1]
	}
	out.Write(b[last:])
	return out.Bytes()
}

// RedactFile rewrites the file at path through p.Redact.
func (p Paths) RedactFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	r := p.Redact(b)
	if bytes.Equal(r, b) {
		return nil
	}
	return os.WriteFile(path, r, 0o644)
}

// RepoRoot is the directory of keywarden's go.mod at or above the working
// directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		first, _, _ := bytes.Cut(b, []byte("\n"))
		if err == nil && string(bytes.TrimSpace(first)) == "module github.com/keywarden/keywarden" {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no keywarden go.mod at or above the working directory")
		}
		dir = parent
	}
}

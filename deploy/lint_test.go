package deploy

import (
	"bufio"
	"go/build/constraint"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// lintTags are the build tags make golangci-lint passes after BASE_TAGS (one
// run, the Makefile's golangci-lint target): the e2e and node tests' files
// are compiled only under them.
var lintTags = []string{"e2e", "node"}

// TestLintTagsLeaveNoFileOut: golangci-lint runs once, with lintTags, so
// every file of keywarden's module that the default linux/amd64 build
// compiles must still be compiled with those tags added (a `//go:build
// !e2e` file would be linted by nobody). Files the default build leaves out
// (nopkcs11, the lean tags, !linux) were never linted by golangci-lint; go
// vet covers the nopkcs11 and lean builds (make vet).
func TestLintTagsLeaveNoFileOut(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	want := "run --build-tags $(BASE_TAGS)," + strings.Join(lintTags, ",") + " ./..."
	var runs []string
	for _, l := range strings.Split(string(mk), "\n") {
		if strings.Contains(l, "$< run") {
			runs = append(runs, strings.TrimSpace(l))
		}
	}
	if len(runs) != 1 || !strings.HasSuffix(runs[0], want) {
		t.Fatalf("the Makefile's golangci-lint target: want one line ending %q, have %q", want, runs)
	}

	baseTags := makefileBaseTags(t, string(mk))
	base := func(tag string) bool {
		switch tag {
		case "linux", "amd64", "unix", "cgo", "gc":
			return true
		}
		for _, b := range baseTags {
			if tag == b {
				return true
			}
		}
		return strings.HasPrefix(tag, "go1.")
	}
	withLint := func(tag string) bool {
		for _, l := range lintTags {
			if tag == l {
				return true
			}
		}
		return base(tag)
	}
	checked, tagged := 0, 0
	for _, f := range moduleGoFiles(t) {
		checked++
		expr := goBuild(t, filepath.Join(repoRoot, f))
		if expr == nil {
			continue
		}
		tagged++
		if expr.Eval(base) && !expr.Eval(withLint) {
			t.Errorf("%s: //go:build %s is compiled by the default build but not with -tags %s, so golangci-lint never sees it; lint it in a run of its own or change the constraint", f, expr, strings.Join(lintTags, ","))
		}
	}
	t.Logf("%d files, %d with a //go:build line: each compiled by the default build is compiled with -tags %s", checked, tagged, strings.Join(lintTags, ","))
	if checked == 0 || tagged == 0 {
		t.Fatalf("checked %d files, %d with a //go:build line: the file list is wrong", checked, tagged)
	}
}

// makefileBaseTags: the Makefile's BASE_TAGS, split.
func makefileBaseTags(t *testing.T, mk string) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^BASE_TAGS\s*:=\s*(\S+)$`).FindStringSubmatch(mk)
	if m == nil {
		t.Fatal("no BASE_TAGS := … in the Makefile")
	}
	return strings.Split(m[1], ",")
}

// TestBaseTagsAgree: every build of keywarden starts from the same tags
// (netgo, osusergo: Go's own DNS resolver and user lookups), so the static and
// cgo builds compile the same net package and share the compiled dependency
// graph, and the binaries of make, the release and the image behave alike.
// A go command of the Makefile with -tags of its own replaces GOFLAGS' tags,
// so each must start from $(BASE_TAGS); release.sh clears GOFLAGS and the
// Dockerfile has its own, so each spells them out.
func TestBaseTagsAgree(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(repoRoot, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	mk := read("Makefile")
	base := strings.Join(makefileBaseTags(t, mk), ",")
	if base != "netgo,osusergo" {
		t.Errorf("BASE_TAGS is %q; docs/install.md (Build variants) describes netgo,osusergo: change both", base)
	}
	if !regexp.MustCompile(`(?m)^export GOFLAGS\s*:=.* -tags=\$\(BASE_TAGS\)\)?$`).MatchString(mk) {
		t.Error("the Makefile's exported GOFLAGS must end with -tags=$(BASE_TAGS)")
	}
	tagsFlag := regexp.MustCompile(`(?:^|\s)(?:-tags|--build-tags)[ =](\S+)`)
	n := 0
	for i, l := range strings.Split(mk, "\n") {
		for _, m := range tagsFlag.FindAllStringSubmatch(l, -1) {
			if l := strings.TrimSpace(l); strings.HasPrefix(l, "#") || strings.HasPrefix(l, "export GOFLAGS") {
				continue
			}
			n++
			if v := strings.Trim(m[1], `'"`); !strings.HasPrefix(v, "$(BASE_TAGS)") {
				t.Errorf("Makefile:%d: -tags %s does not start from $(BASE_TAGS): %s", i+1, m[1], strings.TrimSpace(l))
			}
		}
	}
	if n < 10 {
		t.Fatalf("found %d -tags flags in the Makefile: the pattern is wrong", n)
	}
	if m := regexp.MustCompile(`(?m)^\s*local tags=(\S+)$`).FindStringSubmatch(read("hack/release/release.sh")); m == nil || m[1] != base {
		t.Errorf("hack/release/release.sh: want `local tags=%s`, have %q", base, m)
	}
	if want := `go build -tags "` + base + `${TAGS:+,${TAGS}}"`; !strings.Contains(read("Dockerfile"), want) {
		t.Errorf("Dockerfile: its go build must say %s", want)
	}
}

// goBuild: the file's //go:build constraint, or nil. It is in the header,
// before the package clause.
func goBuild(t *testing.T, file string) constraint.Expr {
	t.Helper()
	fh, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "package ") {
			break
		}
		if constraint.IsGoBuild(l) {
			expr, err := constraint.Parse(l)
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			return expr
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return nil
}

// TestLeanTagsOnlyInByuri: make vet vets the lean build (LEAN_TAGS: no
// cloud keystores) in keystore/byuri only, the one package whose files those
// tags change; a file elsewhere with one of them would go unvetted.
func TestLeanTagsOnlyInByuri(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^LEAN_TAGS\s*:=\s*(\S+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("no LEAN_TAGS in the Makefile")
	}
	lean := strings.Split(string(m[1]), ",")
	inByuri := 0
	for _, f := range moduleGoFiles(t) {
		expr := goBuild(t, filepath.Join(repoRoot, f))
		if expr == nil {
			continue
		}
		uses := false
		for _, tag := range exprTags(expr) {
			for _, l := range lean {
				uses = uses || tag == l
			}
		}
		if !uses {
			continue
		}
		if filepath.Dir(f) != filepath.Join("keystore", "byuri") {
			t.Errorf("%s: //go:build %s uses a lean tag (%s) outside keystore/byuri: add its package to make vet's lean line", f, expr, m[1])
			continue
		}
		inByuri++
	}
	if inByuri == 0 {
		t.Fatalf("no file in keystore/byuri uses the lean tags %s: the check is looking at the wrong files", m[1])
	}
}

// moduleGoFiles: the .go files of keywarden's module as the go command sees
// them, relative to the repository: other modules (a go.mod of their own),
// testdata, bin and dot/underscore folders are left out.
func moduleGoFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path == repoRoot {
				return nil
			}
			if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "bin" {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") {
			rel, err := filepath.Rel(repoRoot, path)
			if err != nil {
				return err
			}
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// exprTags: every tag a build constraint names.
func exprTags(e constraint.Expr) []string {
	switch e := e.(type) {
	case *constraint.TagExpr:
		return []string{e.Tag}
	case *constraint.NotExpr:
		return exprTags(e.X)
	case *constraint.AndExpr:
		return append(exprTags(e.X), exprTags(e.Y)...)
	case *constraint.OrExpr:
		return append(exprTags(e.X), exprTags(e.Y)...)
	}
	return nil
}

// TestNopkcs11VetCoversItsFiles: make vet runs the nopkcs11 build (with
// CGO_ENABLED=0) on the packages of its NOPKCS11_VET line only. So every
// file that build adds (compiled with nopkcs11, not without it) must be in
// one of those packages, and no file of the module may depend on cgo (a
// `cgo` constraint or `import "C"`), which CGO_ENABLED=0 would change.
func TestNopkcs11VetCoversItsFiles(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^NOPKCS11_VET\s*:=\s*(.+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("no NOPKCS11_VET := … in the Makefile")
	}
	if !strings.Contains(string(mk), "nopkcs11 $(NOPKCS11_VET)") {
		t.Fatal("make vet's nopkcs11 line does not vet $(NOPKCS11_VET)")
	}
	vetted := map[string]bool{}
	for _, p := range strings.Fields(string(m[1])) {
		vetted[filepath.Clean(p)] = true
	}
	baseTags := makefileBaseTags(t, string(mk))
	eval := func(nopkcs11 bool) func(string) bool {
		return func(tag string) bool {
			switch tag {
			case "linux", "amd64", "unix", "gc":
				return true
			case "nopkcs11":
				return nopkcs11
			}
			for _, b := range append(baseTags, lintTags...) {
				if tag == b {
					return true
				}
			}
			return strings.HasPrefix(tag, "go1.")
		}
	}
	added := 0
	for _, f := range moduleGoFiles(t) {
		src, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Fatal(err)
		}
		if regexp.MustCompile(`(?m)^import\s+(\(\s*)?"C"`).Match(src) {
			t.Errorf(`%s imports "C": CGO_ENABLED=0 changes its package; add it to NOPKCS11_VET or vet ./... with nopkcs11 again`, f)
		}
		expr := goBuild(t, filepath.Join(repoRoot, f))
		if expr == nil {
			continue
		}
		for _, tag := range exprTags(expr) {
			if tag == "cgo" {
				t.Errorf("%s: //go:build %s depends on cgo: add its package to NOPKCS11_VET", f, expr)
			}
		}
		if expr.Eval(eval(true)) && !expr.Eval(eval(false)) {
			added++
			if !vetted[filepath.Dir(f)] {
				t.Errorf("%s: //go:build %s is compiled only with nopkcs11, and its package is not on make vet's NOPKCS11_VET line", f, expr)
			}
		}
	}
	if added == 0 {
		t.Fatal("no file is compiled only with nopkcs11: the check is looking at the wrong files")
	}
}

// TestLintCoversGoTestVet: the Makefile turns go test's own vet off
// (GOFLAGS -vet=off), leaving it to make lint, which must run go vet and
// golangci-lint (whose govet sees the e2e and node tests' files).
func TestLintCoversGoTestVet(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	lint := regexp.MustCompile(`(?m)^lint:(.*)$`).FindSubmatch(mk)
	if lint == nil {
		t.Fatal("no lint target in the Makefile")
	}
	deps := strings.Fields(string(lint[1]))
	for _, want := range []string{"vet", "golangci-lint"} {
		found := false
		for _, d := range deps {
			found = found || d == want
		}
		if !found {
			t.Errorf("GOFLAGS has -vet=off but make lint does not run %s (its prerequisites: %q)", want, deps)
		}
	}
	if !regexp.MustCompile(`(?m)^\t\$\(GO\) vet -trimpath \./\.\.\.$`).Match(mk) {
		t.Error("make vet must vet ./... with the default build (go test no longer does)")
	}
	cfg, err := os.ReadFile(filepath.Join(repoRoot, ".golangci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\s+default:\s*standard\s*$`).Match(cfg) || regexp.MustCompile(`(?s)disable:.*govet`).Match(cfg) {
		t.Error(".golangci.yml must keep the standard linters (govet among them) for the e2e and node tests' files")
	}
}

// TestUnitRaceSplit: make unit runs go test twice, with -race on the
// packages its go list | grep keeps and without it on NORACE_DIRS. Together
// the two must test every package of the module once, and keywarden's own
// packages must be in the race run: a grep that matched nothing (a wrong
// module path) or everything would otherwise go unnoticed.
func TestUnitRaceSplit(t *testing.T) {
	out := run(t, repoRoot, "make", "-s", "-n", "--no-print-directory", "unit")
	var raceCmd, noRaceCmd string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch {
		case strings.Contains(line, " test -race "):
			raceCmd = line
		case strings.Contains(line, " test "):
			noRaceCmd = line
		}
	}
	inner := regexp.MustCompile(`\$\((.*)\)\s*$`).FindStringSubmatch(raceCmd)
	if inner == nil || noRaceCmd == "" {
		t.Fatalf("make -n unit printed no race run with a $(go list ...) and a run without -race:\n%s", out)
	}
	list := func(cmd string) map[string]bool {
		t.Helper()
		pkgs := map[string]bool{}
		for _, p := range strings.Fields(run(t, repoRoot, "sh", "-c", cmd)) {
			pkgs[p] = true
		}
		return pkgs
	}
	race := list(inner[1])
	goCmd := noRaceCmd[:strings.Index(noRaceCmd, " test ")]
	var dirs []string
	for _, f := range strings.Fields(noRaceCmd) {
		if strings.HasPrefix(f, "./") {
			dirs = append(dirs, f)
		}
	}
	noRace := list(goCmd + " list " + strings.Join(dirs, " "))
	all := list(goCmd + " list ./...")
	mod := strings.TrimSpace(run(t, repoRoot, "sh", "-c", goCmd+" list -m"))
	for p := range all {
		if race[p] == noRace[p] {
			t.Errorf("%s: in the race run %v, in the run without -race %v; want exactly one", p, race[p], noRace[p])
		}
	}
	for p := range race {
		if !all[p] {
			t.Errorf("race run lists %s, not a package of ./...", p)
		}
	}
	for _, p := range []string{mod + "/kms", mod + "/keystore", mod + "/cmd/keywarden"} {
		if !race[p] {
			t.Errorf("%s is not tested under -race", p)
		}
	}
	if len(noRace) == 0 || len(race) < len(all)/2 {
		t.Errorf("race run has %d of %d packages, the other %d", len(race), len(all), len(noRace))
	}
}

package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
)

// repoRoot is the repository root, relative to this package's directory
// (where go test runs).
const repoRoot = ".."

// readDocs returns every YAML document in the file, decoded into generic
// values.
func readDocs(t *testing.T, file string) []any {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := decodeAll(b)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return docs
}

func decodeAll(b []byte) ([]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []any
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if v != nil {
			docs = append(docs, v)
		}
	}
}

// readDoc returns the file's only YAML document.
func readDoc(t *testing.T, file string) obj {
	t.Helper()
	docs := readDocs(t, file)
	if len(docs) != 1 {
		t.Fatalf("%s: %d YAML documents, want 1", file, len(docs))
	}
	m, ok := docs[0].(map[string]any)
	if !ok {
		t.Fatalf("%s: top level is %T, want a mapping", file, docs[0])
	}
	return obj{m: m, where: file}
}

// obj navigates generic YAML with paths like "spec.containers.0.args",
// failing the test with the file and path when something is missing.
type obj struct {
	m     map[string]any
	where string
}

func (o obj) get(t *testing.T, p string) any {
	t.Helper()
	v, err := lookup(o.m, p)
	if err != nil {
		t.Fatalf("%s: %s: %v", o.where, p, err)
	}
	return v
}

func (o obj) has(p string) bool {
	_, err := lookup(o.m, p)
	return err == nil
}

func (o obj) str(t *testing.T, p string) string {
	t.Helper()
	v := o.get(t, p)
	s, ok := v.(string)
	if !ok {
		t.Fatalf("%s: %s is %T (%v), want a string", o.where, p, v, v)
	}
	return s
}

func (o obj) list(t *testing.T, p string) []any {
	t.Helper()
	v := o.get(t, p)
	l, ok := v.([]any)
	if !ok {
		t.Fatalf("%s: %s is %T, want a list", o.where, p, v)
	}
	return l
}

func (o obj) sub(t *testing.T, p string) obj {
	t.Helper()
	v := o.get(t, p)
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: %s is %T, want a mapping", o.where, p, v)
	}
	return obj{m: m, where: o.where + ":" + p}
}

// items returns the list at p as objects.
func (o obj) items(t *testing.T, p string) []obj {
	t.Helper()
	var out []obj
	for i, v := range o.list(t, p) {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s: %s.%d is %T, want a mapping", o.where, p, i, v)
		}
		out = append(out, obj{m: m, where: fmt.Sprintf("%s:%s.%d", o.where, p, i)})
	}
	return out
}

func lookup(v any, p string) (any, error) {
	for _, k := range strings.Split(p, ".") {
		switch c := v.(type) {
		case map[string]any:
			n, ok := c[k]
			if !ok {
				return nil, fmt.Errorf("no key %q", k)
			}
			v = n
		case []any:
			var i int
			if _, err := fmt.Sscanf(k, "%d", &i); err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("no index %q in a list of %d", k, len(c))
			}
			v = c[i]
		default:
			return nil, fmt.Errorf("%q: not a mapping or list (%T)", k, v)
		}
	}
	return v, nil
}

// requireToolsEnv names the variable that makes a missing tool a failure
// instead of a skip. .ci/run sets it (next to KEYWARDEN_REQUIRE_SOFTHSM,
// _VAULT and _ETCD) after installing every tool the deploy tests use.
const requireToolsEnv = "KEYWARDEN_REQUIRE_TOOLS"

// toolsRequired reports whether a missing tool must fail the test:
// KEYWARDEN_REQUIRE_TOOLS is set (to anything but "" or "0"), or CI=true
// (the variable most CI services set).
func toolsRequired() bool {
	v := os.Getenv(requireToolsEnv)
	return (v != "" && v != "0") || os.Getenv("CI") == "true"
}

// needTool returns the path of a command-line tool (promtool, shellcheck).
// Missing, the test is skipped on a developer's machine and fails when
// toolsRequired, as under .ci/run, which installs it.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if toolsRequired() {
		t.Fatalf("%s not found and %s=1 (or CI=true): install Debian's %s package (.ci/run does)", name, requireToolsEnv, pkg)
	}
	t.Skipf("%s not found (apt-get install %s); set %s=1 to make this a failure", name, pkg, requireToolsEnv)
	return ""
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// binaries builds keywarden and kmsctl once per test binary into a temporary
// directory, with whatever Go runs the tests (make sets GOTOOLCHAIN).
var binaries = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "keywarden-deploy-")
	if err != nil {
		return "", err
	}
	builtDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/keywarden/keywarden/cmd/keywarden", "github.com/keywarden/keywarden/cmd/kmsctl")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return dir, nil
})

func bin(t *testing.T, name string) string {
	t.Helper()
	dir, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// builtDir is the directory binaries built into, if it ran.
var builtDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// deployFiles lists the files under deploy/ with one of the extensions.
func deployFiles(t *testing.T, exts ...string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		for _, e := range exts {
			if !d.IsDir() && path.Ext(p) == e {
				files = append(files, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no %v files under deploy/", exts)
	}
	return files
}

// execOutput runs a command and returns its combined output and error.
func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantValues checks each path of o (as get takes it) against its value;
// name prefixes the paths in errors.
func (o obj) wantValues(t *testing.T, name string, want map[string]any) {
	t.Helper()
	for p, v := range want {
		if got := o.get(t, p); got != v {
			t.Errorf("%s.%s = %v, want %v", name, p, got, v)
		}
	}
}

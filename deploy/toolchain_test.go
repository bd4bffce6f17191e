package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestGoModToolchain: go.mod's go line is the Makefile's GOTOOLCHAIN_PIN,
// so no go command builds keywarden with an older standard library: under
// GOTOOLCHAIN=auto (Go's default) it switches to that Go, and under
// GOTOOLCHAIN=local with an older Go it refuses ("go.mod requires go >=")
// instead of quietly shipping the older one. A toolchain line, if any, must
// not name another Go. go.mod is read by the go command itself.
func TestGoModToolchain(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	pin := regexp.MustCompile(`(?m)^GOTOOLCHAIN_PIN\s*\?=\s*go(\S+)$`).FindStringSubmatch(string(mk))
	if pin == nil {
		t.Fatal("no GOTOOLCHAIN_PIN in the Makefile")
	}
	var mod struct{ Go, Toolchain string }
	if err := json.Unmarshal([]byte(run(t, repoRoot, "go", "mod", "edit", "-json")), &mod); err != nil {
		t.Fatal(err)
	}
	if mod.Go != pin[1] {
		t.Fatalf("go.mod: go %q, want %q (the Makefile's GOTOOLCHAIN_PIN)", mod.Go, pin[1])
	}
	if mod.Toolchain != "" && mod.Toolchain != "go"+pin[1] {
		t.Fatalf("go.mod: toolchain %q, want none or go%s", mod.Toolchain, pin[1])
	}
}

// TestToolModulesShareVersions: every module that test/e2e/tools/go.mod (the
// kube-apiserver, etcd, kubelet, … the tests build) and keywarden's go.mod
// both require is required at the same version. The tools build with
// keywarden's Go (hack/toolcache.sh), so those packages then compile once
// for both through the Go build cache (docs/e2e.md, "Cold CI"); one module
// left behind changes the build of every package above it. To fix: raise
// the older side, `go get <module>@<version>` in that module's folder.
func TestToolModulesShareVersions(t *testing.T) {
	type mod struct {
		Require []struct{ Path, Version string }
	}
	read := func(file string) map[string]string {
		var m mod
		if err := json.Unmarshal([]byte(run(t, repoRoot, "go", "mod", "edit", "-json", file)), &m); err != nil {
			t.Fatal(err)
		}
		r := make(map[string]string, len(m.Require))
		for _, q := range m.Require {
			r[q.Path] = q.Version
		}
		return r
	}
	kw, tools := read("go.mod"), read(filepath.Join("test", "e2e", "tools", "go.mod"))
	shared := 0
	for path, v := range kw {
		tv, ok := tools[path]
		if !ok {
			continue
		}
		shared++
		if tv != v {
			t.Errorf("%s: %s in go.mod, %s in test/e2e/tools/go.mod", path, v, tv)
		}
	}
	if shared < 50 {
		t.Errorf("only %d modules in both go.mod and test/e2e/tools/go.mod; want the k8s.io, gRPC, protobuf and golang.org/x modules at least", shared)
	}
}

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

// TestToolModulesShareVersions: every module that keywarden's go.mod and a
// tool module built with keywarden's Go both require is required at the same
// version: test/e2e/tools (the kube-apiserver, etcd, kubelet, … the tests
// build) and hack/release/tools (cosign, which links the same cloud KMS SDKs,
// gRPC and protobuf). Both build with keywarden's Go (hack/toolcache.sh) and
// CGO_ENABLED=0 -trimpath, so those packages then compile once for the tool
// and keywarden's static build through the Go build cache (docs/e2e.md,
// "Cold CI"); one module left behind changes the build of every package above
// it. To fix: raise the older side, `go get <module>@<version>` in that
// module's folder. toolNewer lists where a tool requires a newer version than
// keywarden's (it cannot go lower), with that version: a change there fails
// too, to be looked at.
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
	kw := read("go.mod")
	for _, tc := range []struct {
		gomod     string
		toolNewer map[string]string
	}{
		{gomod: filepath.Join("test", "e2e", "tools", "go.mod")},
		{gomod: filepath.Join("hack", "release", "tools", "go.mod"), toolNewer: map[string]string{
			// cosign v3's own requirements.
			"go.uber.org/zap": "v1.28.0",
			"github.com/decred/dcrd/dcrec/secp256k1/v4": "v4.4.1",
			"github.com/mitchellh/mapstructure":         "v1.5.1-0.20231216201459-8508981c8b6c",
			"github.com/syndtr/goleveldb":               "v1.0.1-0.20220721030215-126854af5e6d",
		}},
	} {
		tools := read(tc.gomod)
		shared := 0
		for path, v := range kw {
			tv, ok := tools[path]
			if !ok {
				continue
			}
			shared++
			if want, ok := tc.toolNewer[path]; ok {
				if tv != want {
					t.Errorf("%s: %s in %s, where this test expects %s (newer than go.mod's %s): raise or drop its toolNewer entry", path, tv, tc.gomod, want, v)
				}
				continue
			}
			if tv != v {
				t.Errorf("%s: %s in go.mod, %s in %s", path, v, tv, tc.gomod)
			}
		}
		if shared < 50 {
			t.Errorf("only %d modules in both go.mod and %s; want the gRPC, protobuf and golang.org/x modules at least", shared, tc.gomod)
		}
	}
}

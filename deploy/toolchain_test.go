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

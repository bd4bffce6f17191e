package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestGoModToolchain: go.mod's toolchain line is the Makefile's
// GOTOOLCHAIN_PIN, so a plain `go build` under GOTOOLCHAIN=auto (Go's
// default) switches to the Go the Makefile builds with instead of shipping
// an older standard library. go.mod is read by the go command itself.
func TestGoModToolchain(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	pin := regexp.MustCompile(`(?m)^GOTOOLCHAIN_PIN\s*\?=\s*(go\S+)$`).FindStringSubmatch(string(mk))
	if pin == nil {
		t.Fatal("no GOTOOLCHAIN_PIN in the Makefile")
	}
	var mod struct{ Go, Toolchain string }
	if err := json.Unmarshal([]byte(run(t, repoRoot, "go", "mod", "edit", "-json")), &mod); err != nil {
		t.Fatal(err)
	}
	if mod.Toolchain != pin[1] {
		t.Fatalf("go.mod: toolchain %q, want %q (the Makefile's GOTOOLCHAIN_PIN): add `toolchain %s` to go.mod", mod.Toolchain, pin[1], pin[1])
	}
}

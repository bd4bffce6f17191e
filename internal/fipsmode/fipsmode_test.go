package fipsmode

import (
	"crypto/fips140"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestModeMatchesCryptoFIPS140(t *testing.T) {
	want := Off
	if fips140.Enabled() {
		want = On
		if fips140.Enforced() {
			want = Only
		}
	}
	if got := Mode(); got != want {
		t.Fatalf("Mode() = %q, want %q", got, want)
	}
	if Module() == "" {
		t.Fatal("Module() is empty")
	}
}

// Each GODEBUG setting gives its mode: the test binary runs itself under
// each one.
func TestModeUnderGODEBUG(t *testing.T) {
	if want := os.Getenv("FIPSMODE_TEST_WANT"); want != "" {
		if got := Mode(); got != want {
			t.Fatalf("Mode() = %q under GODEBUG=%s, want %q", got, os.Getenv("GODEBUG"), want)
		}
		return
	}
	for _, tc := range []struct{ godebug, want string }{
		{"fips140=off", Off}, {"fips140=on", On}, {"fips140=only", Only},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestModeUnderGODEBUG$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "GODEBUG="+tc.godebug, "FIPSMODE_TEST_WANT="+tc.want)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestModeUnderGODEBUG") {
			t.Errorf("GODEBUG=%s: %v\n%s", tc.godebug, err, out)
		}
	}
}

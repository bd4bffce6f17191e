package buildinfo

import (
	"runtime"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/fipsmode"
)

func TestString(t *testing.T) {
	old := version
	version = "v9.8.7"
	t.Cleanup(func() { version = old })
	lines := strings.Split(strings.TrimSuffix(String("keywarden"), "\n"), "\n")
	if lines[0] != "keywarden v9.8.7" {
		t.Errorf("first line %q: scripts read `<name> <version>` there", lines[0])
	}
	want := map[string]string{"commit:": Commit(), "go:": runtime.Version(), "platform:": runtime.GOOS + "/" + runtime.GOARCH}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if w, ok := want[f[0]]; ok {
			if f[1] != w {
				t.Errorf("%s %q, want %q", f[0], f[1], w)
			}
			delete(want, f[0])
		}
	}
	if len(want) > 0 {
		t.Errorf("--version lacks %v", want)
	}
}

func TestCommitStamped(t *testing.T) {
	old := commit
	commit = "0123456789abcdef0123456789abcdef01234567"
	t.Cleanup(func() { commit = old })
	if got := Commit(); got != commit {
		t.Errorf("Commit() = %q, want the stamped %q", got, commit)
	}
}

func TestDetailsFIPS140(t *testing.T) {
	want := fipsmode.Mode()
	if want != fipsmode.Off {
		want += " (Go module " + fipsmode.Module() + ")"
	}
	if d := Details(); !strings.Contains(d, "fips140:  "+want+"\n") {
		t.Errorf("Details() does not say fips140 %s:\n%s", want, d)
	}
}

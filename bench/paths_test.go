package bench

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPathsRedact(t *testing.T) {
	p := Paths{Roots: []string{"/home/alice/src/keywarden", "/work/main/"}, Home: "/home/alice", Temp: []string{"/tmp", "/var/tmp/x"}}
	for _, tc := range []struct{ name, in, want string }{
		{"root", "go run ./bench/cmd/kwbench --out /work/main/bench/results/2026-11-27/socket", "go run ./bench/cmd/kwbench --out bench/results/2026-11-27/socket"},
		{"root under home", "kube-apiserver (/home/alice/src/keywarden/test/e2e/tools/bin/kube-apiserver)", "kube-apiserver (test/e2e/tools/bin/kube-apiserver)"},
		{"home", "--bin /home/alice/bin", "--bin ~/bin"},
		{"temp", `"socket":"/tmp/kwb123/s2/kms.sock"`, `"socket":"$TMPDIR/kwb123/s2/kms.sock"`},
		{"uri", "file:///tmp/kwb1/keyset.json", "file://$TMPDIR/kwb1/keyset.json"},
		{"second temp", "/var/tmp/x/y", "$TMPDIR/y"},
		{"whole directories only", "/work/mainly/x /tmpfs/y /home/alicia", "/work/mainly/x /tmpfs/y /home/alicia"},
		{"relative path kept", "bench/results/tmp/keystores-run2", "bench/results/tmp/keystores-run2"},
		{"paths side by side", "/tmp/a:/tmp/b,(/work/main/c)", "$TMPDIR/a:$TMPDIR/b,(c)"},
		{"start of a line", "x\n/tmp/a", "x\n$TMPDIR/a"},
		{"system path kept", "/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/softhsm/libsofthsm2.so"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(p.Redact([]byte(tc.in))); got != tc.want {
				t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
	// "/" and relative directories are never prefixes.
	if got := string((Paths{Roots: []string{"/", "."}, Temp: []string{""}}).Redact([]byte("/etc/x ./y"))); got != "/etc/x ./y" {
		t.Errorf("got %q", got)
	}
}

func TestRedactFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "servers.log")
	if err := os.WriteFile(f, []byte("listen unix:///tmp/kwb9/s1/kms.sock\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := (Paths{Temp: []string{"/tmp"}}).RedactFile(f); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); string(b) != "listen unix://$TMPDIR/kwb9/s1/kms.sock\n" {
		t.Errorf("got %q", b)
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "bench", "paths.go")); err != nil {
		t.Errorf("RepoRoot() = %s: %v", root, err)
	}
}

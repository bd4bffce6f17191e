package main

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSocketPath(t *testing.T) {
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{"absolute", "unix:///run/keywarden/kms.sock", "/run/keywarden/kms.sock", true},
		{"cleaned", "unix:///run/keywarden/../keywarden/kms.sock", "/run/keywarden/kms.sock", true},
		{"relative", "unix://run/kms.sock", "", false},
		{"no scheme", "/run/kms.sock", "", false},
		{"tcp", "tcp://127.0.0.1:1", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := socketPath(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("socketPath(%q) = %q, %v", tc.in, got, err)
			}
		})
	}
}

func TestListenUnixDirectoryRules(t *testing.T) {
	log := slog.New(slog.DiscardHandler)

	// A loose directory holding only our socket path is tightened to 0700.
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := listenUnix(filepath.Join(dir, "kms.sock"), log)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %04o, want 0700", fi.Mode().Perm())
	}

	// A loose directory shared with other files is refused, not chmod'ed.
	shared := t.TempDir()
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shared, "other"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(filepath.Join(shared, "kms.sock"), log); err == nil || !strings.Contains(err.Error(), "dedicated directory") {
		t.Fatalf("shared loose dir: %v", err)
	}
	if fi, _ := os.Stat(shared); fi.Mode().Perm() != 0o755 {
		t.Fatal("shared directory was chmod'ed")
	}

	// A live socket is not stolen.
	live := filepath.Join(t.TempDir(), "kms.sock")
	l1, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	if _, err := listenUnix(live, log); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("live socket: %v", err)
	}
}

// A successor that bound the path while we drained keeps its socket: our
// shutdown removes only the file we made (same device and inode).
func TestSocketRemoveOnlyOurs(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	path := filepath.Join(t.TempDir(), "run", "kms.sock")

	// Our own file, untouched: removed.
	a, err := listenUnix(path, log)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a.Remove(log)
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("own socket left behind: %v", err)
	}

	// A closes its listener (GracefulStop does that first), B finds the
	// path dead, replaces it and serves; then A finishes draining.
	a, err = listenUnix(path, log)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b, err := listenUnix(path, log)
	if err != nil {
		t.Fatalf("successor could not bind: %v", err)
	}
	defer b.Close()
	go func() {
		for {
			c, err := b.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	a.Remove(log)
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the successor's socket was removed: %v", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the successor's socket does not accept: %v", err)
	}
	c.Close()

	// Anything else put at the path is left alone too.
	b.Close()
	b.Remove(log)
	d, err := listenUnix(path, log)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Remove(log)
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("a regular file at the path was removed: %v", err)
	}
}

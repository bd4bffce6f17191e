package secretfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore"
)

const secret = "s3cr3t-contents"

func write(t *testing.T, name string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

func TestRead(t *testing.T) {
	tests := []struct {
		name    string
		path    func(t *testing.T) string
		wantErr bool
	}{
		{"0600", func(t *testing.T) string { return write(t, "f", 0o600) }, false},
		{"0400", func(t *testing.T) string { return write(t, "f", 0o400) }, false},
		{"0644", func(t *testing.T) string { return write(t, "f", 0o644) }, true},
		{"0640", func(t *testing.T) string { return write(t, "f", 0o640) }, true},
		{"0604", func(t *testing.T) string { return write(t, "f", 0o604) }, true},
		{"0620", func(t *testing.T) string { return write(t, "f", 0o620) }, true},
		{"symlink to 0600", func(t *testing.T) string {
			p := write(t, "f", 0o600)
			l := filepath.Join(t.TempDir(), "link")
			if err := os.Symlink(p, l); err != nil {
				t.Fatal(err)
			}
			return l
		}, false},
		{"symlink to 0644", func(t *testing.T) string {
			p := write(t, "f", 0o644)
			l := filepath.Join(t.TempDir(), "link")
			if err := os.Symlink(p, l); err != nil {
				t.Fatal(err)
			}
			return l
		}, true},
		{"directory", func(t *testing.T) string { return t.TempDir() }, true},
		{"missing", func(t *testing.T) string { return filepath.Join(t.TempDir(), "none") }, true},
		{"over the limit", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "big")
			if err := os.WriteFile(p, []byte(strings.Repeat(secret, 10)), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.path(t)
			b, err := Read("test secret", p, 64)
			if !tc.wantErr {
				if err != nil || string(b) != secret {
					t.Fatalf("Read = %q, %v; want the contents", b, err)
				}
				return
			}
			if !errors.Is(err, keystore.ErrConfig) {
				t.Fatalf("Read = %v, want ErrConfig", err)
			}
			if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "test secret") {
				t.Fatalf("error %q does not name the file", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error %q shows the contents", err)
			}
		})
	}
	if _, err := Read("x", filepath.Join(t.TempDir(), "none"), 1); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v, want fs.ErrNotExist in the chain", err)
	}
}

func TestReadOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a file owned by someone else needs root")
	}
	p := write(t, "f", 0o600)
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := Read("test secret", p, 64)
	if !errors.Is(err, keystore.ErrConfig) || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("file of another user: %v, want ErrConfig naming its owner", err)
	}
}

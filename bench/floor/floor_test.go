package floor

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/kms/pkg/service"
)

func TestServiceCopies(t *testing.T) {
	ctx := context.Background()
	pt := []byte("seed")
	e, err := Service{}.Encrypt(ctx, "uid", pt)
	if err != nil || !bytes.Equal(e.Ciphertext, pt) || e.KeyID != KeyID {
		t.Fatalf("Encrypt = %+v, %v", e, err)
	}
	pt[0] = 'X'
	if e.Ciphertext[0] != 's' {
		t.Error("Encrypt aliased its input")
	}
	d, err := Service{}.Decrypt(ctx, "uid", &service.DecryptRequest{Ciphertext: e.Ciphertext, KeyID: KeyID})
	if err != nil || string(d) != "seed" {
		t.Fatalf("Decrypt = %q, %v", d, err)
	}
	s, err := Service{}.Status(ctx)
	if err != nil || s.Version != "v2" || s.Healthz != "ok" || s.KeyID != KeyID {
		t.Fatalf("Status = %+v, %v", s, err)
	}
}

func TestListen(t *testing.T) {
	dir, err := os.MkdirTemp("", "kwfl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "run", "kms.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", di.Mode().Perm())
	}
	if _, err := Listen(path); err == nil {
		t.Error("a socket in use must not be replaced")
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = ln.Close()
	ln2, err := Listen(path) // stale: nobody answers
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	_ = ln2.Close()
	file := filepath.Join(dir, "file")
	_ = os.WriteFile(file, nil, 0o600)
	if _, err := Listen(file); err == nil {
		t.Error("a regular file must not be replaced")
	}
}

func TestSocketPath(t *testing.T) {
	if p, err := SocketPath("unix:///run/x/kms.sock"); err != nil || p != "/run/x/kms.sock" {
		t.Errorf("got %q, %v", p, err)
	}
	for _, bad := range []string{"/run/x.sock", "unix://rel/x.sock", "tcp://1.2.3.4:5"} {
		if _, err := SocketPath(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

package file

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

func newKeyset(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keyset.json")
	if _, err := Init(p); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return p
}

func openNew(t *testing.T) *Backend {
	t.Helper()
	b, err := Open(newKeyset(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return b
}

func TestConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystoretest.Fixture {
		b := openNew(t)
		return keystoretest.Fixture{
			Backend: b,
			Rotate: func(ctx context.Context) error {
				v, err := b.Add(ctx)
				if err != nil {
					return err
				}
				return b.Promote(ctx, v.KeyID)
			},
		}
	})
}

func TestOpenRefusesLoosePermissions(t *testing.T) {
	p := newKeyset(t)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o666} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(p); !errors.Is(err, keystore.ErrConfig) {
			t.Fatalf("mode %04o: got %v, want ErrConfig", mode, err)
		}
	}
	if err := os.Chmod(p, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p); err != nil {
		t.Fatalf("mode 0400 refused: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.json")
	if err := os.WriteFile(garbage, []byte(`{"primaryKeyId": 1, "key": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
	}{
		{"relative", "keyset.json"},
		{"missing", filepath.Join(dir, "nope.json")},
		{"garbage", garbage},
		{"directory", dir},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Open(tc.path); !errors.Is(err, keystore.ErrConfig) && !errors.Is(err, keystore.ErrUnavailable) {
				t.Fatalf("got %v, want ErrConfig or ErrUnavailable", err)
			}
		})
	}
}

func TestInitRefusesOverwrite(t *testing.T) {
	p := newKeyset(t)
	before, _ := os.ReadFile(p)
	if _, err := Init(p); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("second Init: got %v, want ErrConfig", err)
	}
	after, _ := os.ReadFile(p)
	if string(before) != string(after) {
		t.Fatal("second Init changed the keyset")
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("keyset mode %04o, want 0600", st.Mode().Perm())
	}
}

// A second process (kmsctl) promotes a version; the running backend sees it
// at its next KeyID call without being told.
func TestReloadOnChange(t *testing.T) {
	ctx := context.Background()
	p := newKeyset(t)
	running, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := running.KeyID(ctx)
	w, err := running.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ctl.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := running.KeyID(ctx); got != old {
		t.Fatalf("Add changed the primary: %q", got)
	}
	if err := ctl.Promote(ctx, v.KeyID); err != nil {
		t.Fatal(err)
	}
	got, err := running.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != v.KeyID {
		t.Fatalf("running backend KeyID = %q, want promoted %q", got, v.KeyID)
	}
	if _, err := running.Unwrap(ctx, w, nil); err != nil {
		t.Fatalf("old ciphertext after promotion: %v", err)
	}
	// A corrupt rewrite is reported, and the last good keyset keeps working.
	if err := os.WriteFile(p, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := running.KeyID(ctx); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("KeyID on corrupt file: got %v, want ErrConfig", err)
	}
	if _, err := running.Unwrap(ctx, w, nil); err != nil {
		t.Fatalf("Unwrap with last good keyset: %v", err)
	}
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	b := openNew(t)
	first, _ := b.KeyID(ctx)
	w, err := b.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Disable(ctx, first); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("disable primary: got %v, want ErrConfig", err)
	}
	v, err := b.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.KeyID == "" || v.Primary {
		t.Fatalf("Add returned %+v", v)
	}
	if err := b.Promote(ctx, v.KeyID); err != nil {
		t.Fatal(err)
	}
	if err := b.Destroy(ctx, first); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("destroy enabled version: got %v, want ErrConfig", err)
	}
	if err := b.Disable(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w, nil); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap under disabled version: got %v, want ErrKeyDisabled", err)
	}
	if err := b.Promote(ctx, first); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("promote disabled: got %v, want ErrKeyDisabled", err)
	}
	if err := b.Enable(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w, nil); err != nil {
		t.Fatalf("Unwrap after re-enable: %v", err)
	}
	if err := b.Disable(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := b.Destroy(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w, nil); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("Unwrap under destroyed version: got %v, want ErrKeyNotFound", err)
	}
	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].KeyID != v.KeyID || !list[0].Primary {
		t.Fatalf("List = %+v, want only the promoted version", list)
	}
	if err := b.Promote(ctx, "tink:1:0000000000000000"); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("promote unknown: got %v, want ErrKeyNotFound", err)
	}
}

// The keyset is read under the secret-file rule, owner included: a keyset
// another user owns (and so could rewrite) is refused.
func TestOpenRefusesForeignOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a file owned by someone else needs root")
	}
	p := newKeyset(t)
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p); !errors.Is(err, keystore.ErrConfig) || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("keyset owned by uid 65534: got %v, want ErrConfig naming the owner", err)
	}
}

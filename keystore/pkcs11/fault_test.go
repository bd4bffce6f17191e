//go:build !nopkcs11

package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

// The token's files disappear under a running backend (a token pulled out,
// an HSM partition gone): every call fails with ErrUnavailable, none panics,
// and once the token is back the backend recovers by itself.
func TestTokenRemovedAndRestored(t *testing.T) {
	b, tok := newBackend(t)
	ctx := context.Background()
	w, err := b.Wrap(ctx, kek, []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := b.KeyID(ctx)

	away := filepath.Join(t.TempDir(), "token")
	if err := os.Rename(tok.dir, away); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := os.Rename(away, tok.dir); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer restore()

	ops := []struct {
		name string
		fn   func() error
	}{
		{"KeyID", func() error { _, err := b.KeyID(ctx); return err }},
		{"Wrap", func() error { _, err := b.Wrap(ctx, kek, nil); return err }},
		{"Unwrap", func() error { _, err := b.Unwrap(ctx, w, []byte("aad")); return err }},
		{"List", func() error { _, err := b.List(ctx); return err }},
		{"Add", func() error { _, err := b.Add(ctx); return err }},
	}
	for round := range 2 {
		for _, op := range ops {
			if err := op.fn(); !errors.Is(err, keystore.ErrUnavailable) {
				t.Fatalf("round %d, %s with the token gone: got %v, want ErrUnavailable", round, op.name, err)
			}
		}
	}
	// A new backend cannot open it either.
	if _, err := Open(ctx, tok.uri); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("Open with the token gone: got %v, want ErrUnavailable", err)
	}

	restore()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := b.KeyID(ctx)
		if err == nil {
			if got != kid {
				t.Fatalf("KeyID after recovery = %q, want %q", got, kid)
			}
			break
		}
		if !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("KeyID while recovering: got %v, want ErrUnavailable", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery 15s after the token came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pt, err := b.Unwrap(ctx, w, []byte("aad"))
	if err != nil || !bytes.Equal(pt, kek) {
		t.Fatalf("Unwrap after recovery: %v", err)
	}
	if _, err := b.Wrap(ctx, kek, nil); err != nil {
		t.Fatalf("Wrap after recovery: %v", err)
	}
}

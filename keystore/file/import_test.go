package file

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

// TestImport is the HA case: node B's keyset is a copy of node A's; a
// version added on A and imported into B has the same key ID on both, and
// once A promotes it, B unwraps what A wraps.
func TestImport(t *testing.T) {
	ctx := context.Background()
	a := openNew(t)
	raw, err := os.ReadFile(a.path)
	if err != nil {
		t.Fatal(err)
	}
	pb := filepath.Join(t.TempDir(), "keyset.json")
	if err := os.WriteFile(pb, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := Open(pb)
	if err != nil {
		t.Fatal(err)
	}
	v, err := a.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.Import(ctx, a, v.KeyID)
	if err != nil || got != (keystore.KeyVersion{KeyID: v.KeyID, State: keystore.KeyEnabled}) {
		t.Fatalf("Import: %+v %v", got, err)
	}
	vs, err := b.List(ctx)
	if err != nil || len(vs) != 2 || vs[1].KeyID != v.KeyID || vs[1].Primary || vs[1].State != keystore.KeyEnabled {
		t.Fatalf("B after import: %+v %v", vs, err)
	}
	if err := a.Promote(ctx, v.KeyID); err != nil {
		t.Fatal(err)
	}
	w, err := a.Wrap(ctx, []byte("kek"), []byte("aad"))
	if err != nil || w.KeyID != v.KeyID {
		t.Fatalf("wrap under the new version: %+v %v", w, err)
	}
	if pt, err := b.Unwrap(ctx, w, []byte("aad")); err != nil || !bytes.Equal(pt, []byte("kek")) {
		t.Fatalf("B unwraps A's ciphertext under the imported version: %v", err)
	}
	// Again: nothing changes, not even the file.
	st, _ := os.Stat(pb)
	if got, err := b.Import(ctx, a, v.KeyID); err != nil || got.KeyID != v.KeyID {
		t.Fatalf("second import: %+v %v", got, err)
	}
	if st2, _ := os.Stat(pb); !st2.ModTime().Equal(st.ModTime()) {
		t.Fatal("a second import rewrote the keyset")
	}
	if _, err := b.Import(ctx, a, "tink:1:0000000000000000"); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("unknown version: %v", err)
	}
	old := vs[0].KeyID
	if err := a.Disable(ctx, old); err != nil {
		t.Fatal(err)
	}
	c := openNew(t)
	if _, err := c.Import(ctx, a, old); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("disabled version: %v", err)
	}
}

// TestImportOtherKind: the material never leaves through the interface, so
// a src that is not a file keystore (here a file keystore behind a wrapper
// that hides it) is refused as unsupported, and the keyset is untouched.
func TestImportOtherKind(t *testing.T) {
	ctx := context.Background()
	a, b := openNew(t), openNew(t)
	v, err := a.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var imp keystore.Importer = b
	if _, err := imp.Import(ctx, keystoretest.NewSpy(a), v.KeyID); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("import from a wrapped backend: %v", err)
	}
	if vs, err := b.List(ctx); err != nil || len(vs) != 1 {
		t.Fatalf("after a refused import: %+v %v", vs, err)
	}
}

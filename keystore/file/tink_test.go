package file

import (
	"bytes"
	"context"
	"crypto/fips140"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/keywarden/keywarden/keystore"
)

// The backend's AES-GCM writes and reads exactly Tink's ciphertext: Tink's
// own AEAD over the same keyset opens what Wrap makes, and Unwrap opens
// what Tink's AEAD makes. Tink's AEAD uses cipher.NewGCM, which
// GODEBUG=fips140=only refuses, so under it the test makes and uses Tink's
// AEAD with enforcement lifted (for the comparison only: the backend itself
// runs enforced).
func TestTinkCompatible(t *testing.T) {
	ctx := context.Background()
	b := openNew(t)
	// A second version, promoted: its key and prefix are the ones in use.
	v, err := b.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Promote(ctx, v.KeyID); err != nil {
		t.Fatal(err)
	}
	h, _, err := readHandle(b.path)
	if err != nil {
		t.Fatal(err)
	}
	var tinkAEAD tink.AEAD
	fips140.WithoutEnforcement(func() { tinkAEAD, err = aead.New(h) })
	if err != nil {
		t.Fatal(err)
	}
	pt := bytes.Repeat([]byte{0x5a}, 32)
	aad := []byte("keywarden.io/local-kek/v1")

	w, err := b.Wrap(ctx, pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	if w.KeyID != v.KeyID {
		t.Fatalf("Wrap under %q, want the primary %q", w.KeyID, v.KeyID)
	}
	if len(w.Ciphertext) != tinkPrefixLen+tinkIVSize+len(pt)+tinkTagSize {
		t.Fatalf("ciphertext is %d bytes, want Tink's %d", len(w.Ciphertext), tinkPrefixLen+tinkIVSize+len(pt)+tinkTagSize)
	}
	var got []byte
	fips140.WithoutEnforcement(func() { got, err = tinkAEAD.Decrypt(w.Ciphertext, aad) })
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Tink's AEAD does not open the backend's ciphertext: %v", err)
	}

	var ct []byte
	fips140.WithoutEnforcement(func() { ct, err = tinkAEAD.Encrypt(pt, aad) })
	if err != nil {
		t.Fatal(err)
	}
	got, err = b.Unwrap(ctx, keystore.Wrapped{KeyID: v.KeyID, Ciphertext: ct}, aad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("the backend does not open Tink's ciphertext: %v", err)
	}
}

package kms

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/kms/envelope"
)

// goldenResponse is an EncryptResponse made by an earlier release over a
// committed (test-only) keyset. Every later release must decrypt it: stored
// Secrets outlive plugin versions. It also pins the file keystore's key_id
// derivation, which must never change for an existing key.
type goldenResponse struct {
	KeyID      string `json:"keyID"`
	Ciphertext []byte `json:"ciphertext"`
	Annotation []byte `json:"annotation"`
	Plaintext  []byte `json:"plaintext"`
}

func TestGoldenDecrypt(t *testing.T) {
	keyset, err := os.ReadFile("testdata/golden-keyset.json")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "keyset.json")
	if err := os.WriteFile(p, keyset, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := file.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("testdata/golden-responses.json")
	if err != nil {
		t.Fatal(err)
	}
	var gs []goldenResponse
	if err := json.Unmarshal(raw, &gs); err != nil || len(gs) == 0 {
		t.Fatalf("golden responses: %v (%d)", err, len(gs))
	}
	s, err := New(context.Background(), Config{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		got, err := s.Decrypt(context.Background(), "golden", &service.DecryptRequest{
			Ciphertext: g.Ciphertext, KeyID: g.KeyID, Annotations: map[string][]byte{envelope.AnnotationKey: g.Annotation},
		})
		if err != nil {
			t.Fatalf("golden response under %s no longer decrypts: %v", g.KeyID, err)
		}
		if !bytes.Equal(got, g.Plaintext) {
			t.Fatal("golden response decrypts to different bytes")
		}
	}
	// The key_id of the committed keyset's primary is pinned.
	kid, err := b.KeyID(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if kid != gs[len(gs)-1].KeyID {
		t.Fatalf("file keystore key_id derivation changed: %q, want %q", kid, gs[len(gs)-1].KeyID)
	}
}

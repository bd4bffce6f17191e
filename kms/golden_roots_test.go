package kms

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/kms/envelope"
)

var updateRoots = flag.Bool("update-roots", false, "write testdata/golden-keyset-2.json and golden-responses-roots.json (once; never rewrite them)")

const (
	goldenKeyset2     = "testdata/golden-keyset-2.json"
	goldenRootsResult = "testdata/golden-responses-roots.json"
)

// goldenRoots is an EncryptResponse made under two roots, the committed
// test keysets golden-keyset.json and golden-keyset-2.json in that order.
type goldenRoots struct {
	RootKeyIDs []string `json:"rootKeyIDs"`
	goldenResponse
}

// openGolden opens a committed test keyset through a 0600 copy.
func openGolden(t *testing.T, path string) keystore.Backend {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "keyset.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fb, err := file.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	return fb
}

// What a keywarden with two roots stored decrypts in every later release:
// with both roots, either order, and with either root alone (a root
// removed from the list).
func TestGoldenDecryptRoots(t *testing.T) {
	if *updateRoots {
		writeGoldenRoots(t)
	}
	raw, err := os.ReadFile(goldenRootsResult)
	if err != nil {
		t.Fatal(err)
	}
	var gs []goldenRoots
	if err := json.Unmarshal(raw, &gs); err != nil || len(gs) == 0 {
		t.Fatalf("golden responses: %v (%d)", err, len(gs))
	}
	k1, k2 := openGolden(t, "testdata/golden-keyset.json"), openGolden(t, goldenKeyset2)
	for name, cfg := range map[string]Config{
		"both":        {Roots: []keystore.Backend{k1, k2}},
		"reordered":   {Roots: []keystore.Backend{k2, k1}},
		"first only":  {Backend: k1},
		"second only": {Backend: k2},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := New(context.Background(), cfg)
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
		})
	}
	// The several-roots key_id of the committed keysets' primaries is
	// pinned, as is each root's.
	var ids []string
	for _, b := range []keystore.Backend{k1, k2} {
		id, err := b.KeyID(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	last := gs[len(gs)-1]
	if kid, _ := envelope.RootsKeyID(ids); kid != last.KeyID || ids[0] != last.RootKeyIDs[0] || ids[1] != last.RootKeyIDs[1] {
		t.Fatalf("key_id derivation changed: %q over %q, want %q over %q", kid, ids, last.KeyID, last.RootKeyIDs)
	}
}

func writeGoldenRoots(t *testing.T) {
	if _, err := os.Stat(goldenKeyset2); os.IsNotExist(err) {
		p := filepath.Join(t.TempDir(), "keyset.json")
		if _, err := file.Init(p); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenKeyset2, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k1, k2 := openGolden(t, "testdata/golden-keyset.json"), openGolden(t, goldenKeyset2)
	s, err := New(context.Background(), Config{Roots: []keystore.Backend{k1, k2}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range []keystore.Backend{k1, k2} {
		id, _ := b.KeyID(context.Background())
		ids = append(ids, id)
	}
	pt := []byte("golden seed under two roots 0123")
	r, err := s.Encrypt(context.Background(), "golden", pt)
	if err != nil {
		t.Fatal(err)
	}
	gs := []goldenRoots{{RootKeyIDs: ids, goldenResponse: goldenResponse{KeyID: r.KeyID, Ciphertext: r.Ciphertext, Annotation: r.Annotations[envelope.AnnotationKey], Plaintext: pt}}}
	b, _ := json.MarshalIndent(gs, "", "  ")
	if err := os.WriteFile(goldenRootsResult, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

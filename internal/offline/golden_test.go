package offline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/keystore/recovery"
	"github.com/keywarden/keywarden/kms"
	"github.com/keywarden/keywarden/kms/envelope"
)

var update = flag.Bool("update", false, "write testdata/golden-recovery*.json (once; never rewrite them)")

const (
	goldenRootKeyset = "../../kms/testdata/golden-keyset.json"
	goldenPrivate    = "testdata/golden-recovery-private.json"
	goldenValues     = "testdata/golden-recovery-values.json"
)

// golden is what a keywarden with one root and a recovery key stored:
// its EncryptResponse, and a value kube-apiserver's transformer wrote
// with it at an etcd key.
type golden struct {
	RecoveryKeyID string `json:"recoveryKeyID"`
	KeyID         string `json:"keyID"`
	Ciphertext    []byte `json:"ciphertext"`
	Annotation    []byte `json:"annotation"`
	Seed          []byte `json:"seed"`
	EtcdKey       string `json:"etcdKey"`
	Stored        []byte `json:"stored"`
	Object        []byte `json:"object"`
}

func copy600(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// What today's keywarden sealed to a recovery key opens in every later
// release: offline with the private keyset, through the apiserver's
// transformer, and on a node through the root, with or without the
// recovery key configured. The recovery key_id derivation is pinned.
func TestGoldenRecovery(t *testing.T) {
	if *update {
		writeGolden(t)
	}
	ctx := context.Background()
	key, err := recovery.OpenPrivate(copy600(t, goldenPrivate), nil)
	if errors.Is(err, recovery.ErrFIPSOnly) {
		t.Skip("no recovery key under GODEBUG=fips140=only (X25519 is not FIPS approved; keystore/recovery's TestFIPSOnly checks the refusal)")
	}
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(goldenValues)
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatal(err)
	}
	if key.KeyID() != g.RecoveryKeyID {
		t.Fatalf("recovery key_id derivation changed: %q, want %q", key.KeyID(), g.RecoveryKeyID)
	}
	req := &service.DecryptRequest{Ciphertext: g.Ciphertext, KeyID: g.KeyID, Annotations: map[string][]byte{envelope.AnnotationKey: g.Annotation}}
	if got, err := NewDecrypter(key).Decrypt(ctx, "golden", req); err != nil || !bytes.Equal(got, g.Seed) {
		t.Fatalf("offline Decrypt: %v", err)
	}
	if got, err := NewReader(key).Open(ctx, g.EtcdKey, g.Stored, stored.Parse(g.Stored)); err != nil || !bytes.Equal(got, g.Object) {
		t.Fatalf("offline Open: %q, %v", got, err)
	}
	pub, err := key.Public()
	if err != nil {
		t.Fatal(err)
	}
	fb, err := file.Open(copy600(t, goldenRootKeyset))
	if err != nil {
		t.Fatal(err)
	}
	for name, rec := range map[string]*recovery.PublicKey{"with recovery key": pub, "without": nil} {
		t.Run(name, func(t *testing.T) {
			cfg := kms.Config{Backend: fb}
			if rec != nil {
				cfg.Recovery = rec
			}
			s, err := kms.New(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := s.Decrypt(ctx, "golden", req); err != nil || !bytes.Equal(got, g.Seed) {
				t.Fatalf("node Decrypt: %v", err)
			}
		})
	}
}

func writeGolden(t *testing.T) {
	ctx := context.Background()
	if _, err := os.Stat(goldenPrivate); err == nil {
		t.Fatal("golden recovery files exist: never rewrite them")
	}
	k, err := recovery.New()
	if err != nil {
		t.Fatal(err)
	}
	b, err := k.Marshal(nil, recovery.DefaultKDF())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenPrivate, b, 0o644); err != nil {
		t.Fatal(err)
	}
	pub, err := k.Public()
	if err != nil {
		t.Fatal(err)
	}
	fb, err := file.Open(copy600(t, goldenRootKeyset))
	if err != nil {
		t.Fatal(err)
	}
	s, err := kms.New(ctx, kms.Config{Backend: fb, Recovery: pub})
	if err != nil {
		t.Fatal(err)
	}
	seed := []byte("golden seed sealed to recovery 0")
	r, err := s.Encrypt(ctx, "golden", seed)
	if err != nil {
		t.Fatal(err)
	}
	const etcdKey = "/registry/secrets/default/golden"
	obj := []byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"golden","namespace":"default"},"data":{"k":"Z29sZGVu"}}`)
	a := &apiserver{t: t, tr: writer(t, s)}
	g := golden{
		RecoveryKeyID: k.KeyID(), KeyID: r.KeyID, Ciphertext: r.Ciphertext, Annotation: r.Annotations[envelope.AnnotationKey], Seed: seed,
		EtcdKey: etcdKey, Stored: a.write(etcdKey, obj), Object: obj,
	}
	out, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenValues, append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

package lab

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

func TestPerCall(t *testing.T) {
	ctx := context.Background()
	ks := "file://" + filepath.Join(t.TempDir(), "keyset.json")
	if _, err := byuri.Init(ctx, ks); err != nil {
		t.Fatal(err)
	}
	b, err := byuri.Open(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	spy := keystoretest.NewSpy(b)
	p := &PerCall{Backend: spy}
	seed := bytes.Repeat([]byte{7}, 32)
	e, err := p.Encrypt(ctx, "uid", seed)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		pt, err := p.Decrypt(ctx, "uid", &service.DecryptRequest{Ciphertext: e.Ciphertext, KeyID: e.KeyID})
		if err != nil || !bytes.Equal(pt, seed) {
			t.Fatalf("Decrypt = %x, %v", pt, err)
		}
	}
	if spy.Wraps.Load() != 1 || spy.Unwraps.Load() != 3 {
		t.Errorf("keystore calls: %d wraps, %d unwraps; want 1 and 3 (one per request)", spy.Wraps.Load(), spy.Unwraps.Load())
	}
	tampered := bytes.Clone(e.Ciphertext)
	tampered[len(tampered)-1] ^= 1
	for name, ct := range map[string][]byte{"empty": nil, "short": {5, 'a'}, "tampered": tampered} {
		if _, err := p.Decrypt(ctx, "uid", &service.DecryptRequest{Ciphertext: ct}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

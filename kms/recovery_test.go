package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/recovery"
	"github.com/keywarden/keywarden/kms/envelope"
)

func newRecovery(t testing.TB) (*recovery.PrivateKey, *recovery.PublicKey) {
	t.Helper()
	priv, err := recovery.New()
	if errors.Is(err, recovery.ErrFIPSOnly) {
		t.Skip("no recovery key under GODEBUG=fips140=only (X25519 is not FIPS approved; keystore/recovery's TestFIPSOnly checks the refusal)")
	}
	if err != nil {
		t.Fatal(err)
	}
	pub, err := priv.Public()
	if err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

// openOffline opens a Decrypt request the way `kmsctl recover` does: the
// local KEK from the recovery copy, then the ciphertext under it, with no
// Service and no root keystore.
func openOffline(t *testing.T, priv *recovery.PrivateKey, kid string, ann, ct []byte) []byte {
	t.Helper()
	a, err := envelope.DecodeAnnotation(ann)
	if err != nil {
		t.Fatal(err)
	}
	if a.KeyID != kid {
		t.Fatalf("annotation key_id %q, request %q", a.KeyID, kid)
	}
	var c *envelope.Copy
	for i := range a.Copies {
		if a.Copies[i].Backend == recovery.Name {
			c = &a.Copies[i]
		}
	}
	if c == nil {
		t.Fatal("no recovery copy")
	}
	kek, err := priv.Unwrap(keystore.Wrapped{KeyID: c.KeyID, Ciphertext: c.RootCT}, envelope.RootAAD())
	if err != nil {
		t.Fatal(err)
	}
	aead, err := envelope.NewAEAD(kek)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := envelope.Open(aead, ct, envelope.AAD(kid, ann))
	if err != nil {
		t.Fatal(err)
	}
	return pt
}

// With a recovery key, every new local KEK is also sealed to it: one more
// copy, after the roots', in a version-2 annotation whose key_id covers
// the recovery key. The holder of the private keyset opens every
// ciphertext offline; a node never asks the recovery copy anything.
func TestRecoverySeal(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		roots []string
	}{{"one root", []string{"file"}}, {"two roots", []string{"file", "awskms"}}} {
		t.Run(tt.name, func(t *testing.T) {
			rs := newRoots(t, tt.roots...)
			priv, pub := newRecovery(t)
			s := rs.service(t, func(c *Config) { c.Recovery = pub })
			st, _ := s.Status(ctx)
			want, err := envelope.RootsKeyID(append(rs.keyIDs(t), priv.KeyID()))
			if err != nil {
				t.Fatal(err)
			}
			if st.Healthz != "ok" || st.KeyID != want {
				t.Fatalf("Status = %+v, want key_id %q", st, want)
			}
			pt := seed(t)
			r := encrypt(t, s, pt)
			ann := r.Annotations[envelope.AnnotationKey]
			a, err := envelope.DecodeAnnotation(ann)
			n := len(tt.roots)
			if err != nil || a.Version != envelope.Version2 || len(a.Copies) != n+1 || a.Copies[n].Backend != recovery.Name || a.Copies[n].KeyID != priv.KeyID() {
				t.Fatalf("annotation %+v (%v)", a, err)
			}
			if r.KeyID != want || len(r.Ciphertext) > 1024 {
				t.Fatalf("Encrypt key_id %q, ciphertext %d bytes", r.KeyID, len(r.Ciphertext))
			}
			if got := openOffline(t, priv, r.KeyID, ann, r.Ciphertext); !bytes.Equal(got, pt) {
				t.Fatal("recovery key opened another plaintext")
			}
			// A restarted node reads it through its root, as before.
			fresh := rs.service(t, func(c *Config) { c.Recovery = pub })
			if got, err := fresh.Decrypt(ctx, "u", req(r)); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("cold Decrypt: %v", err)
			}
			// Every root refusing: Decrypt fails, with nothing to fall
			// back on (the node has no private key), and names no
			// recovery attempt.
			errs := make([]error, n)
			for i := range errs {
				errs[i] = keystore.ErrKeyNotFound
			}
			cold := rs.service(t, func(c *Config) { c.Recovery = pub })
			rs.setErr(errs...)
			_, err = cold.Decrypt(ctx, "u", req(r))
			if err == nil || bytes.Contains([]byte(err.Error()), []byte(recovery.Name+")")) {
				t.Fatalf("Decrypt with every root refusing: %v", err)
			}
		})
	}
}

// The recovery key is part of the key set: a new one changes key_id and
// mints a new local KEK; without one the annotation is version 1 again.
func TestRecoveryKeyChange(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	_, pub1 := newRecovery(t)
	_, pub2 := newRecovery(t)
	s1 := e.service(func(c *Config) { c.Recovery = pub1 })
	r1 := encrypt(t, s1, seed(t))
	s2 := e.service(func(c *Config) { c.Recovery = pub2 })
	r2 := encrypt(t, s2, seed(t))
	plain := e.service(nil)
	r0 := encrypt(t, plain, seed(t))
	rootID, _ := e.file.KeyID(ctx)
	if r1.KeyID == r2.KeyID || r1.KeyID == rootID || r0.KeyID != rootID {
		t.Fatalf("key_ids %q %q %q, root %q", r1.KeyID, r2.KeyID, r0.KeyID, rootID)
	}
	if v := r0.Annotations[envelope.AnnotationKey][0]; v != envelope.Version1 {
		t.Fatalf("without a recovery key the annotation is version %d", v)
	}
	// Each node reads the others' objects through the root.
	for _, s := range []*Service{plain, s1, s2} {
		for _, r := range []*service.EncryptResponse{r0, r1, r2} {
			if _, err := s.Decrypt(ctx, "u", req(r)); err != nil {
				t.Fatalf("Decrypt under %s: %v", r.KeyID, err)
			}
		}
	}
}

func TestRecoveryConfig(t *testing.T) {
	rs := newRoots(t, "file", "awskms", "gcpkms", "azurekv")
	_, pub := newRecovery(t)
	_, err := New(context.Background(), Config{Roots: rs.backends(), Recovery: pub})
	if err == nil {
		t.Fatal("four roots and a recovery key accepted: five copies")
	}
	one := newRoots(t, recovery.Name)
	if _, err := New(context.Background(), Config{Roots: one.backends(), Recovery: pub}); err == nil {
		t.Fatal("a root named like the recovery key accepted")
	}
}

// With one root and a recovery key the annotation is version 2, and the
// breaker's probe still unwraps the root's copy for real (never the
// recovery copy) before it closes.
func TestRecoveryBreakerProbe(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	_, pub := newRecovery(t)
	s := e.service(func(c *Config) { c.Recovery = pub })
	encrypt(t, s, seed(t))
	e.spy.SetErr(fmt.Errorf("%w: connection refused", keystore.ErrUnavailable))
	s.Check(ctx)
	if !s.circuitOpen() {
		t.Fatal("breaker closed with the keystore down")
	}
	e.spy.SetErr(nil)
	before := e.spy.Unwraps.Load()
	s.Check(ctx)
	if s.circuitOpen() {
		t.Fatal("breaker still open after the keystore answered")
	}
	if n := e.spy.Unwraps.Load() - before; n != 1 {
		t.Fatalf("%d unwraps by the probe, want 1 (of the root's copy)", n)
	}
}

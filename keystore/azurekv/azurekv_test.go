package azurekv

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/fips140"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys/fake"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

// All tests run the real azkeys client against the SDK's own fake server
// (azkeys/fake, in-process, no network), backed by fakeVault (fake_test.go).

const fakeHost = "https://fake.vault.azure.net"

var keyN atomic.Int64

type env struct {
	vault *fakeVault
	srv   *fake.Server
}

func newEnv() *env {
	v := newFakeVault(fakeHost)
	return &env{vault: v, srv: v.server()}
}

// newKey creates a key with one version; kty RSA (2048 bits, for speed) or
// oct-HSM.
func (e *env) newKey(kty azkeys.KeyType) string {
	name := fmt.Sprintf("kw-%d", keyN.Add(1))
	e.vault.addVersion(name, kty, 2048)
	return name
}

func (e *env) open(t testing.TB, name string, params ...string) (*Backend, error) {
	t.Helper()
	u := Scheme + "://fake.vault.azure.net/keys/" + name
	if len(params) > 0 {
		u += "?" + strings.Join(params, "&")
	}
	cfg, err := parseURI(u)
	if err != nil {
		t.Fatal(err)
	}
	return open(context.Background(), cfg, &azfake.TokenCredential{}, e.vault.transport(e.srv))
}

func (e *env) mustOpen(t testing.TB, name string, params ...string) *Backend {
	t.Helper()
	b, err := e.open(t, name, params...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return b
}

func TestConformance(t *testing.T) {
	for _, kty := range []azkeys.KeyType{azkeys.KeyTypeRSA, azkeys.KeyTypeOctHSM} {
		t.Run(string(kty), func(t *testing.T) {
			e := newEnv()
			keystoretest.Run(t, func(t *testing.T) keystoretest.Fixture {
				b := e.mustOpen(t, e.newKey(kty))
				return keystoretest.Fixture{
					Backend: b,
					Rotate: func(ctx context.Context) error {
						_, err := b.Add(ctx)
						return err
					},
					// Each bit flipped in the RSA-wrapped data key is one
					// RSA decryption in the fake.
					MaxFlips: 512,
				}
			})
		})
	}
}

func TestParseURI(t *testing.T) {
	tests := []struct {
		name    string
		uri     string
		wantErr bool
		check   func(t *testing.T, c config)
	}{
		{name: "latest", uri: "azure-kv://MyVault.vault.azure.net/keys/keywarden", check: func(t *testing.T, c config) {
			if c.vault != "https://myvault.vault.azure.net" || c.name != "keywarden" || c.version != "" {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "pinned", uri: "azure-kv://hsm.managedhsm.azure.net/keys/kw/0123456789abcdef0123456789abcdef?timeout=2s", check: func(t *testing.T, c config) {
			if c.version != "0123456789abcdef0123456789abcdef" || c.Timeout != 2*time.Second {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "secrets path", uri: "azure-kv://v.vault.azure.net/secrets/kw", wantErr: true},
		{name: "no name", uri: "azure-kv://v.vault.azure.net/keys/", wantErr: true},
		{name: "extra path", uri: "azure-kv://v.vault.azure.net/keys/kw/v1/x", wantErr: true},
		{name: "bad name", uri: "azure-kv://v.vault.azure.net/keys/k_w", wantErr: true},
		{name: "scheme", uri: "https://v.vault.azure.net/keys/kw", wantErr: true},
		{name: "unknown param", uri: "azure-kv://v.vault.azure.net/keys/kw?tenant=x", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseURI(tc.uri)
			if tc.wantErr {
				if !errors.Is(err, keystore.ErrConfig) {
					t.Fatalf("got %v, want ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestEnvelopeMalformed(t *testing.T) {
	for _, ct := range [][]byte{nil, {1}, {2, 1, 0, 1, 0}, {1, 9, 0, 1}, {1, 1, 0, 0}, {1, 1, 0xff, 0xff}} {
		if _, _, _, err := parseEnvelope(ct); !errors.Is(err, keystore.ErrInvalid) {
			t.Errorf("parseEnvelope(%x) = %v, want ErrInvalid", ct, err)
		}
	}
}

// The newest enabled version is primary; disabling it falls back to the
// previous one, pinning fixes the version.
func TestVersionSelection(t *testing.T) {
	e := newEnv()
	ctx := context.Background()
	name := e.newKey(azkeys.KeyTypeOctHSM)
	b := e.mustOpen(t, name, "key-id-ttl=0s")
	v1, _ := b.KeyID(ctx)
	w1, err := b.Wrap(ctx, []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	v2 := e.vault.addVersion(name, azkeys.KeyTypeOctHSM, 0) // made outside keywarden
	k2, _ := b.KeyID(ctx)
	if !strings.HasSuffix(k2, v2.id) {
		t.Fatalf("KeyID %s, want the new version %s", k2, v2.id)
	}
	e.vault.mu.Lock()
	v2.enabled = false
	e.vault.mu.Unlock()
	if k, _ := b.KeyID(ctx); k != v1 {
		t.Fatalf("KeyID with the newest version disabled = %s, want %s", k, v1)
	}
	pinned := e.mustOpen(t, name+"/"+strings.TrimPrefix(v1, fakeHost+"/keys/"+name+"/"))
	if k, _ := pinned.KeyID(ctx); k != v1 {
		t.Fatalf("pinned KeyID = %s, want %s", k, v1)
	}
	if _, err := pinned.Unwrap(ctx, keystore.Wrapped{KeyID: k2, Ciphertext: w1.Ciphertext}, nil); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("pinned Unwrap of another version: %v, want ErrKeyNotFound", err)
	}
}

func TestManager(t *testing.T) {
	e := newEnv()
	ctx := context.Background()
	b := e.mustOpen(t, e.newKey(azkeys.KeyTypeRSA))
	pt := bytes.Repeat([]byte{5}, 32)
	w1, err := b.Wrap(ctx, pt, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	var last keystore.KeyVersion
	for range 2 {
		if last, err = b.Add(ctx); err != nil || !last.Primary {
			t.Fatalf("Add: %+v %v", last, err)
		}
	}
	if k, _ := b.KeyID(ctx); k != last.KeyID {
		t.Fatalf("KeyID after Add = %s, want %s", k, last.KeyID)
	}
	if err := b.Promote(ctx, w1.KeyID); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Promote old: %v", err)
	}
	if err := b.Promote(ctx, last.KeyID); err != nil {
		t.Fatalf("Promote current: %v", err)
	}
	if err := b.Disable(ctx, last.KeyID); !errors.Is(err, keystore.ErrInvalid) {
		t.Fatalf("Disable primary: %v, want ErrInvalid", err)
	}
	if err := b.Disable(ctx, w1.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w1, []byte("a")); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap disabled: %v, want ErrKeyDisabled", err)
	}
	vs, err := b.List(ctx)
	if err != nil || len(vs) != 3 || vs[0].State != keystore.KeyDisabled || !vs[2].Primary {
		t.Fatalf("List: %+v %v", vs, err)
	}
	if err := b.Enable(ctx, w1.KeyID); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Unwrap(ctx, w1, []byte("a")); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Unwrap re-enabled: %v", err)
	}
	if err := b.Destroy(ctx, w1.KeyID); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Destroy: %v, want ErrUnsupported", err)
	}
}

func TestOpenErrors(t *testing.T) {
	e := newEnv()
	if _, err := e.open(t, "missing"); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("missing key: %v, want ErrKeyNotFound", err)
	}
	e.vault.setFault("GetKey", fault{status: http.StatusForbidden, code: "Forbidden", count: 1})
	if _, err := e.open(t, e.newKey(azkeys.KeyTypeOctHSM)); !errors.Is(err, keystore.ErrPermission) {
		t.Fatalf("forbidden: %v, want ErrPermission", err)
	}
	e.vault.setFault("GetKey", fault{status: http.StatusServiceUnavailable, code: "ServiceUnavailable", count: 3})
	if _, err := e.open(t, e.newKey(azkeys.KeyTypeOctHSM), "timeout=300ms"); err != nil {
		t.Fatalf("unavailable at Open: %v (must not fail Open)", err)
	}
}

func TestErrorClassesAndRetries(t *testing.T) {
	e := newEnv()
	ctx := context.Background()
	b := e.mustOpen(t, e.newKey(azkeys.KeyTypeOctHSM), "timeout=300ms")
	tests := []struct {
		status int
		code   string
		count  int
		want   error
		calls  int
	}{
		{http.StatusServiceUnavailable, "ServiceUnavailable", 2, nil, 3},
		{http.StatusServiceUnavailable, "ServiceUnavailable", 5, keystore.ErrUnavailable, 3},
		{http.StatusTooManyRequests, "Throttled", 5, keystore.ErrThrottled, 3},
		{http.StatusInternalServerError, "InternalError", 5, keystore.ErrUnavailable, 3},
		{http.StatusForbidden, "Forbidden", 5, keystore.ErrPermission, 1},
		{http.StatusUnauthorized, "Unauthorized", 5, keystore.ErrPermission, 1},
		{http.StatusNotFound, "KeyNotFound", 5, keystore.ErrKeyNotFound, 1},
		{http.StatusBadRequest, "BadParameter", 5, keystore.ErrInvalid, 1},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.status, tc.code), func(t *testing.T) {
			before := e.vault.callCount("WrapKey")
			e.vault.setFault("WrapKey", fault{status: tc.status, code: tc.code, count: tc.count})
			defer e.vault.setFault("WrapKey", fault{})
			_, err := b.Wrap(ctx, []byte("x"), nil)
			if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Wrap: %v, want %v", err, tc.want)
			}
			if n := e.vault.callCount("WrapKey") - before; n != tc.calls {
				t.Fatalf("%d WrapKey calls, want %d", n, tc.calls)
			}
		})
	}
	t.Run("per-call timeout", func(t *testing.T) {
		w, err := b.Wrap(ctx, []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		keystoretest.PerCallTimeout(t, "Unwrap", func() func() {
			e.vault.setFault("UnwrapKey", fault{hang: true, count: 10})
			return func() { e.vault.setFault("UnwrapKey", fault{}) }
		}, func(ctx context.Context) error { _, err := b.Unwrap(ctx, w, nil); return err })
	})
	t.Run("create key not retried", func(t *testing.T) {
		e.vault.setFault("CreateKey", fault{status: http.StatusServiceUnavailable, code: "ServiceUnavailable", count: 1})
		before := e.vault.callCount("CreateKey")
		if _, err := b.Add(ctx); !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("Add: %v, want ErrUnavailable", err)
		}
		if n := e.vault.callCount("CreateKey") - before; n != 1 {
			t.Fatalf("%d CreateKey calls, want 1", n)
		}
	})
}

func benchBackend(b *testing.B, kty azkeys.KeyType) *Backend {
	e := newEnv()
	return e.mustOpen(b, e.newKey(kty))
}

func BenchmarkWrap(b *testing.B) {
	for _, kty := range []azkeys.KeyType{azkeys.KeyTypeRSA, azkeys.KeyTypeOctHSM} {
		b.Run(string(kty), func(b *testing.B) {
			be := benchBackend(b, kty)
			ctx := context.Background()
			kek := make([]byte, 32)
			aad := []byte("keywarden bench aad")
			b.ReportAllocs()
			for b.Loop() {
				if _, err := be.Wrap(ctx, kek, aad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkUnwrap(b *testing.B) {
	for _, kty := range []azkeys.KeyType{azkeys.KeyTypeRSA, azkeys.KeyTypeOctHSM} {
		b.Run(string(kty), func(b *testing.B) {
			be := benchBackend(b, kty)
			ctx := context.Background()
			aad := []byte("keywarden bench aad")
			w, err := be.Wrap(ctx, make([]byte, 32), aad)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := be.Unwrap(ctx, w, aad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// An envelope sealed as releases before FIPS 140-only support sealed it
// (AES-GCM with the nonce passed in, cipher.NewGCM) still opens: only who
// draws the nonce changed, not a byte of the layout. cipher.NewGCM is
// refused under GODEBUG=fips140=only, so the old sealing runs with
// enforcement lifted; Unwrap does not.
func TestEnvelopeOfEarlierReleases(t *testing.T) {
	ctx := context.Background()
	e := newEnv()
	name := fmt.Sprintf("kw-%d", keyN.Add(1))
	v := e.vault.addVersion(name, azkeys.KeyTypeOctHSM, 0)
	b := e.mustOpen(t, name)
	kid, err := b.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dk := bytes.Repeat([]byte{7}, dkSize)
	wdk, err := aesKeyWrap(v.aes, dk)
	if err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{9}, nonceSize)
	pt, aad := bytes.Repeat([]byte{0x42}, 32), []byte("keywarden.io/local-kek/v1")
	var sealed []byte
	fips140.WithoutEnforcement(func() {
		block, _ := aes.NewCipher(dk)
		var g cipher.AEAD
		if g, err = cipher.NewGCM(block); err == nil {
			sealed = g.Seal(nil, nonce, pt, remote.BoundAAD(aadDomain, kid, aad))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	ct := append(append(appendEnvelopeHead(nil, algA256KW, wdk), nonce...), sealed...)
	got, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: kid, Ciphertext: ct}, aad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Unwrap of an earlier release's envelope: %v", err)
	}
}

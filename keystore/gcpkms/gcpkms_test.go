package gcpkms

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

// All tests run the real Cloud KMS client library against fakeKMS (a fake of
// the Cloud KMS gRPC service, fake_test.go) on 127.0.0.1.

var keyN atomic.Int64

type env struct {
	fake *fakeKMS
	addr string
}

func newEnv(t testing.TB) *env {
	f := newFakeKMS()
	return &env{fake: f, addr: f.serve(t)}
}

func (e *env) newKey(t testing.TB) string {
	name := fakeKeyName(keyN.Add(1))
	e.fake.createKey(name, kmspb.CryptoKey_ENCRYPT_DECRYPT)
	return name
}

func (e *env) clientOptions() []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(e.addr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

func (e *env) open(t testing.TB, key string, params ...string) (*Backend, error) {
	t.Helper()
	u := Scheme + "://" + key
	if len(params) > 0 {
		u += "?" + strings.Join(params, "&")
	}
	cfg, err := parseURI(u)
	if err != nil {
		t.Fatal(err)
	}
	return open(context.Background(), cfg, e.clientOptions()...)
}

func (e *env) mustOpen(t testing.TB, key string, params ...string) *Backend {
	t.Helper()
	b, err := e.open(t, key, params...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return b
}

func rotate(b *Backend) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		v, err := b.Add(ctx)
		if err != nil {
			return err
		}
		return b.Promote(ctx, v.KeyID)
	}
}

func TestConformance(t *testing.T) {
	e := newEnv(t)
	keystoretest.Run(t, func(t *testing.T) keystoretest.Fixture {
		b := e.mustOpen(t, e.newKey(t))
		return keystoretest.Fixture{Backend: b, Rotate: rotate(b)}
	})
}

func TestParseURI(t *testing.T) {
	const key = "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k"
	tests := []struct {
		name    string
		uri     string
		wantErr bool
	}{
		{"key", "gcp-kms://" + key, false},
		{"options", "gcp-kms://" + key + "?endpoint=private-kms.example:443&timeout=2s&key-id-ttl=10s", false},
		{"version", "gcp-kms://" + key + "/cryptoKeyVersions/1", true},
		{"key ring", "gcp-kms://projects/p/locations/l/keyRings/r", true},
		{"scheme", "gcpkms://" + key, true},
		{"unknown param", "gcp-kms://" + key + "?project=x", true},
		{"bad ttl", "gcp-kms://" + key + "?key-id-ttl=soon", true},
		{"endpoint with path", "gcp-kms://" + key + "?endpoint=https://x/y", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseURI(tc.uri)
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, keystore.ErrConfig)) {
				t.Fatalf("parseURI: %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

// A new primary set outside keywarden (gcloud kms keys set-primary-version)
// reaches KeyID at the next refresh.
func TestExternalPrimaryChange(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	key := e.newKey(t)
	admin := e.mustOpen(t, key)
	defer admin.Close()
	b := e.mustOpen(t, key, "key-id-ttl=0s")
	defer b.Close()
	k1, _ := b.KeyID(ctx)
	if err := rotate(admin)(ctx); err != nil {
		t.Fatal(err)
	}
	k2, err := b.KeyID(ctx)
	if err != nil || k2 == k1 || !strings.HasSuffix(k2, "/cryptoKeyVersions/2") {
		t.Fatalf("KeyID %q then %q (%v)", k1, k2, err)
	}
}

func TestManager(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	b := e.mustOpen(t, e.newKey(t))
	defer b.Close()
	pt := bytes.Repeat([]byte{3}, 32)
	w1, err := b.Wrap(ctx, pt, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	// Several versions, so listing crosses pages.
	var last keystore.KeyVersion
	for range 4 {
		if last, err = b.Add(ctx); err != nil {
			t.Fatal(err)
		}
		if last.Primary || last.State != keystore.KeyEnabled {
			t.Fatalf("Add: %+v", last)
		}
	}
	if k, _ := b.KeyID(ctx); k != w1.KeyID {
		t.Fatalf("Add changed the primary: %s", k)
	}
	if err := b.Promote(ctx, last.KeyID); err != nil {
		t.Fatal(err)
	}
	if k, _ := b.KeyID(ctx); k != last.KeyID {
		t.Fatalf("KeyID after Promote = %s, want %s", k, last.KeyID)
	}
	vs, err := b.List(ctx)
	if err != nil || len(vs) != 5 || !vs[4].Primary || vs[0].Primary {
		t.Fatalf("List: %+v %v", vs, err)
	}
	if err := b.Disable(ctx, last.KeyID); !errors.Is(err, keystore.ErrInvalid) {
		t.Fatalf("Disable primary: %v, want ErrInvalid", err)
	}
	if err := b.Destroy(ctx, w1.KeyID); !errors.Is(err, keystore.ErrInvalid) {
		t.Fatalf("Destroy enabled: %v, want ErrInvalid", err)
	}
	if err := b.Disable(ctx, w1.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w1, []byte("a")); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap disabled: %v, want ErrKeyDisabled", err)
	}
	if err := b.Enable(ctx, w1.KeyID); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Unwrap(ctx, w1, []byte("a")); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Unwrap re-enabled: %v", err)
	}
	if err := b.Disable(ctx, w1.KeyID); err != nil {
		t.Fatal(err)
	}
	if err := b.Destroy(ctx, w1.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w1, []byte("a")); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap destroyed: %v, want ErrKeyDisabled", err)
	}
	if vs, _ := b.List(ctx); vs[0].State != keystore.KeyDestroyed {
		t.Fatalf("List after Destroy: %+v", vs[0])
	}
}

func TestOpenErrors(t *testing.T) {
	e := newEnv(t)
	sign := fakeKeyName(keyN.Add(1))
	e.fake.createKey(sign, kmspb.CryptoKey_ASYMMETRIC_SIGN)
	if _, err := e.open(t, fakeKeyName(999999)); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("missing key: %v, want ErrKeyNotFound", err)
	}
	if _, err := e.open(t, sign); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("signing key: %v, want ErrConfig", err)
	}
	e.fake.setFault("GetCryptoKey", fault{code: codes.PermissionDenied, count: 1})
	if _, err := e.open(t, e.newKey(t)); !errors.Is(err, keystore.ErrPermission) {
		t.Fatalf("denied: %v, want ErrPermission", err)
	}
	e.fake.setFault("GetCryptoKey", fault{code: codes.Unavailable, count: 3})
	b, err := e.open(t, e.newKey(t), "timeout=300ms")
	if err != nil {
		t.Fatalf("unavailable at Open: %v (must not fail Open)", err)
	}
	b.Close()
}

func TestErrorClassesAndRetries(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	b := e.mustOpen(t, e.newKey(t), "timeout=300ms")
	defer b.Close()
	tests := []struct {
		code  codes.Code
		count int
		want  error
		calls int
	}{
		{codes.Unavailable, 2, nil, 3},
		{codes.Unavailable, 5, keystore.ErrUnavailable, 3},
		{codes.ResourceExhausted, 5, keystore.ErrThrottled, 3},
		{codes.Internal, 5, keystore.ErrUnavailable, 3},
		{codes.PermissionDenied, 5, keystore.ErrPermission, 1},
		{codes.Unauthenticated, 5, keystore.ErrPermission, 1},
		{codes.FailedPrecondition, 5, keystore.ErrKeyDisabled, 1},
		{codes.NotFound, 5, keystore.ErrKeyNotFound, 1},
		{codes.InvalidArgument, 5, keystore.ErrInvalid, 1},
	}
	for _, tc := range tests {
		t.Run(tc.code.String(), func(t *testing.T) {
			before := e.fake.callCount("Encrypt")
			e.fake.setFault("Encrypt", fault{code: tc.code, count: tc.count})
			defer e.fake.setFault("Encrypt", fault{})
			_, err := b.Wrap(ctx, []byte("x"), nil)
			if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Wrap: %v, want %v", err, tc.want)
			}
			if n := e.fake.callCount("Encrypt") - before; n != tc.calls {
				t.Fatalf("%d Encrypt calls, want %d", n, tc.calls)
			}
		})
	}
	t.Run("per-call timeout", func(t *testing.T) {
		w, err := b.Wrap(ctx, []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		keystoretest.PerCallTimeout(t, "Unwrap", func() func() {
			e.fake.setFault("Decrypt", fault{hang: true, count: 10})
			return func() { e.fake.setFault("Decrypt", fault{}) }
		}, func(ctx context.Context) error { _, err := b.Unwrap(ctx, w, nil); return err })
	})
	t.Run("create version not retried", func(t *testing.T) {
		e.fake.setFault("CreateCryptoKeyVersion", fault{code: codes.Unavailable, count: 1})
		before := e.fake.callCount("CreateCryptoKeyVersion")
		if _, err := b.Add(ctx); !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("Add: %v, want ErrUnavailable", err)
		}
		if n := e.fake.callCount("CreateCryptoKeyVersion") - before; n != 1 {
			t.Fatalf("%d CreateCryptoKeyVersion calls, want 1", n)
		}
	})
}

// The client library's own retries are off, so ours are the only ones.
func TestLibraryRetriesOff(t *testing.T) {
	e := newEnv(t)
	c, err := kms.NewKeyManagementClient(context.Background(), e.clientOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	*c.CallOptions = kms.KeyManagementCallOptions{}
	e.newKey(t)
	e.fake.setFault("GetCryptoKey", fault{code: codes.Unavailable, count: 1})
	if _, err := c.GetCryptoKey(context.Background(), &kmspb.GetCryptoKeyRequest{Name: fakeKeyName(keyN.Load())}); err == nil {
		t.Fatal("library retried an Unavailable GetCryptoKey by itself")
	}
}

func BenchmarkWrap(b *testing.B) {
	e := newEnv(b)
	be := e.mustOpen(b, e.newKey(b))
	defer be.Close()
	ctx := context.Background()
	kek := make([]byte, 32)
	aad := []byte("keywarden bench aad")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.Wrap(ctx, kek, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrap(b *testing.B) {
	e := newEnv(b)
	be := e.mustOpen(b, e.newKey(b))
	defer be.Close()
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
}

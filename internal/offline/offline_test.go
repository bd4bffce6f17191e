package offline

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apiserver/pkg/storage/value"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/keystore/recovery"
	"github.com/keywarden/keywarden/kms"
)

const provider = "keywarden"

// apiserver writes values as kube-apiserver does: its own KMS v2
// envelope transformer over a keywarden kms.Service, one seed.
type apiserver struct {
	t  *testing.T
	tr value.Transformer
}

func newAPIServer(t *testing.T, rec *recovery.PublicKey) *apiserver {
	t.Helper()
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "keyset.json")
	if _, err := file.Init(p); err != nil {
		t.Fatal(err)
	}
	fb, err := file.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kms.Config{Backend: fb}
	if rec != nil {
		cfg.Recovery = rec
	}
	svc, err := kms.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &apiserver{t: t, tr: writer(t, svc)}
}

func writer(t *testing.T, svc service.Service) value.Transformer {
	t.Helper()
	tr, o, cacheKey, err := kmsv2.GenerateTransformer(context.Background(), "uid", svc, true)
	if err != nil {
		t.Fatal(err)
	}
	st := kmsv2.State{
		Transformer:                           tr,
		EncryptedObjectKeyID:                  o.KeyID,
		EncryptedObjectEncryptedDEKSource:     o.EncryptedDEKSource,
		EncryptedObjectAnnotations:            o.Annotations,
		EncryptedObjectEncryptedDEKSourceType: o.EncryptedDEKSourceType,
		ExpirationTimestamp:                   time.Now().Add(time.Hour),
		CacheKey:                              cacheKey,
		KMSProviderName:                       provider,
	}
	return kmsv2.NewEnvelopeTransformer(svc, provider, func() (kmsv2.State, error) { return st, nil }, "test")
}

func (a *apiserver) write(key string, pt []byte) []byte {
	a.t.Helper()
	ct, err := a.tr.TransformToStorage(context.Background(), pt, value.DefaultContext(key))
	if err != nil {
		a.t.Fatal(err)
	}
	return append([]byte("k8s:enc:kms:v2:"+provider+":"), ct...)
}

func newKey(t *testing.T) (*recovery.PrivateKey, *recovery.PublicKey) {
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

func TestOpen(t *testing.T) {
	ctx := context.Background()
	priv, pub := newKey(t)
	other, _ := newKey(t)
	api := newAPIServer(t, pub)
	old := newAPIServer(t, nil)
	const key = "/registry/secrets/default/s1"
	pt := []byte(`{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s1"},"data":{"a":"YQ=="}}`)
	raw := api.write(key, pt)

	rd := NewReader(priv)
	got, err := rd.Open(ctx, key, raw, stored.Parse(raw))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	flipped := bytes.Clone(raw)
	flipped[len(flipped)-1] ^= 1
	for _, tt := range []struct {
		name string
		rd   *Reader
		key  string
		raw  []byte
		want error // nil: any error
	}{
		{"moved to another etcd key", rd, "/registry/secrets/default/s2", raw, nil},
		{"tampered data", rd, key, flipped, nil},
		{"made before the recovery key", rd, key, old.write(key, pt), ErrNoRecoveryCopy},
		{"another recovery key", NewReader(other), key, raw, ErrNoRecoveryCopy},
		{"identity", rd, key, pt, ErrNotKMSv2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.rd.Open(ctx, tt.key, tt.raw, stored.Parse(tt.raw))
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || got != nil {
				t.Fatalf("Open = %q, %v; want error %v", got, err, tt.want)
			}
		})
	}
	if _, err := rd.Decrypter().Encrypt(ctx, "u", pt); err == nil {
		t.Fatal("Decrypter encrypted")
	}
}

// Run over a real etcd: every value decrypted and handed to Write, or
// counted by why not; --verify (no Write) counts the same.
func TestRun(t *testing.T) {
	_, cli := etcdtest.Start(t)
	ctx := context.Background()
	priv, pub := newKey(t)
	api := newAPIServer(t, pub)
	old := newAPIServer(t, nil)
	want := map[string][]byte{}
	for _, name := range []string{"a", "b", "c"} {
		k := "/registry/secrets/ns/" + name
		want[k] = []byte(`{"kind":"Secret","apiVersion":"v1","metadata":{"name":"` + name + `","namespace":"ns"}}`)
		if _, err := cli.Put(ctx, k, string(api.write(k, want[k]))); err != nil {
			t.Fatal(err)
		}
	}
	puts := map[string][]byte{
		"/registry/secrets/ns/old":      old.write("/registry/secrets/ns/old", []byte("{}")),
		"/registry/secrets/ns/moved":    api.write("/registry/secrets/ns/elsewhere", []byte("{}")),
		"/registry/configmaps/ns/plain": []byte(`{"kind":"ConfigMap"}`),
	}
	for k, v := range puts {
		if _, err := cli.Put(ctx, k, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	scopes, err := audit.Scopes("/registry", []string{"secrets", "configmaps"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	r, err := Run(ctx, cli, priv, Options{Scopes: scopes, PageSize: 2, Write: func(k string, pt []byte) error {
		got[k] = bytes.Clone(pt)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Objects != 6 || r.Decrypted != 3 || r.Written != 3 || r.NoRecoveryCopy != 1 || r.Failed != 1 || r.NotKMSv2 != 1 || r.KEKs != 1 || r.OK() {
		t.Fatalf("report %+v", r)
	}
	for k, v := range want {
		if !bytes.Equal(got[k], v) {
			t.Fatalf("%s = %q, want %q", k, got[k], v)
		}
	}
	if r.Samples["noRecoveryCopy"][0] != "/registry/secrets/ns/old" || r.Samples["failed"][0] != "/registry/secrets/ns/moved" {
		t.Fatalf("samples %v", r.Samples)
	}
	v, err := Run(ctx, cli, priv, Options{Scopes: scopes})
	if err != nil || v.Decrypted != 3 || v.Written != 0 {
		t.Fatalf("verify: %+v, %v", v, err)
	}
}

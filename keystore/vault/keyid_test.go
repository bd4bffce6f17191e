package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore"
)

// fakeTransit is Transit's key read, encrypt and decrypt for one key, with
// an identity "cipher" (nonce and tag are zeros): enough to see which
// key_id each call produces and which version a decrypt asks for.
type fakeTransit struct {
	mu       sync.Mutex
	created  map[int]int64 // version → creation time, as the key read lists it
	latest   int
	minDec   int
	decrypts []string // ciphertexts decrypt was asked for
}

func (f *fakeTransit) Read(_ context.Context, path string) (*api.Secret, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := map[string]any{}
	for v, t := range f.created {
		if v >= f.minDec {
			keys[strconv.Itoa(v)] = t
		}
	}
	return &api.Secret{Data: map[string]any{
		"type": "aes256-gcm96", "keys": keys, "latest_version": f.latest,
		"min_decryption_version": f.minDec, "min_available_version": 0, "min_encryption_version": 0,
	}}, nil
}

func (f *fakeTransit) Write(_ context.Context, path string, data map[string]any) (*api.Secret, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case strings.Contains(path, "/encrypt/"):
		pt, _ := base64.StdEncoding.DecodeString(data["plaintext"].(string))
		raw := append(append(make([]byte, 12), pt...), make([]byte, 16)...)
		return &api.Secret{Data: map[string]any{"ciphertext": formatCiphertext(f.latest, raw)}}, nil
	case strings.Contains(path, "/decrypt/"):
		ct := data["ciphertext"].(string)
		f.decrypts = append(f.decrypts, ct)
		v, raw, err := parseCiphertext(ct)
		if err != nil || v > f.latest || v < f.minDec {
			return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"invalid ciphertext"}}
		}
		return &api.Secret{Data: map[string]any{"plaintext": base64.StdEncoding.EncodeToString(raw[12 : len(raw)-16])}}, nil
	}
	return nil, fmt.Errorf("fake transit: unexpected write to %s", path)
}

func (f *fakeTransit) Login(context.Context, string, map[string]any) (*api.Secret, error) {
	return nil, errors.New("fake transit: no login")
}
func (f *fakeTransit) SetToken(string) {}

func fakeBackend(t *testing.T, f *fakeTransit) *Backend {
	t.Helper()
	tok := writeToken(t)
	cfg, err := parseURI("hcvault://127.0.0.1:8200/transit/keys/kw?tls=off&token-file=" + tok)
	if err != nil {
		t.Fatal(err)
	}
	b := newBackend(cfg, f, time.Now)
	if err := b.meta.Prime(context.Background(), b.fetch); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeToken(t *testing.T) string {
	t.Helper()
	return tokenFile(t, "hvs.fake")
}

// A key deleted and re-created under the same name restarts at v1; a
// keywarden started after that must not report the old key's key_id.
func TestKeyIDNamesTheKey(t *testing.T) {
	ctx := context.Background()
	old := &fakeTransit{created: map[int]int64{1: 1_700_000_000}, latest: 1}
	k1, err := fakeBackend(t, old).KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recreated := &fakeTransit{created: map[int]int64{1: 1_700_000_500}, latest: 1}
	k2, err := fakeBackend(t, recreated).KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k1 == k2 {
		t.Fatalf("KeyID %q before and after the key was deleted and re-created", k1)
	}
	for _, k := range []string{k1, k2} {
		if len(k) > keystore.MaxKeyIDLen || !strings.HasPrefix(k, "transit/keys/kw:v1") {
			t.Fatalf("KeyID %q", k)
		}
	}
}

// Wrap reports the key_id KeyID does; Unwrap takes that form and the one
// keywarden wrote before key_ids named the key ("<mount>/keys/<name>:v<n>",
// in every existing cluster's etcd), and refuses, without a call, a key_id
// whose version Vault lists with another creation time.
func TestKeyIDForms(t *testing.T) {
	ctx := context.Background()
	f := &fakeTransit{created: map[int]int64{1: 1_700_000_000, 2: 1_700_000_100}, latest: 2, minDec: 1}
	b := fakeBackend(t, f)
	kid, err := b.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pt := []byte("0123456789abcdef0123456789abcdef")
	w, err := b.Wrap(ctx, pt, nil)
	if err != nil || w.KeyID != kid {
		t.Fatalf("Wrap key_id %q, %v; KeyID %q", w.KeyID, err, kid)
	}
	for _, form := range []string{kid, "transit/keys/kw:v2"} {
		got, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: form, Ciphertext: w.Ciphertext}, nil)
		if err != nil || string(got) != string(pt) {
			t.Fatalf("Unwrap under %q: %q, %v", form, got, err)
		}
	}
	f.mu.Lock()
	calls := len(f.decrypts)
	f.mu.Unlock()
	stale := strings.Replace(kid, "1700000100", "1600000000", 1)
	if stale == kid {
		t.Fatalf("key_id %q does not carry the version's creation time", kid)
	}
	if _, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: stale, Ciphertext: w.Ciphertext}, nil); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("Unwrap under another key's v2 (%q): %v, want ErrKeyNotFound", stale, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.decrypts) != calls {
		t.Fatalf("a key_id of another key reached Vault")
	}
}

// On the dev server: a key deleted and re-created under the same name gets
// new key_ids, and a keywarden opened after that (a restart) refuses the old
// key's key_ids instead of sending them to the new key.
func TestRecreatedKeyNewKeyID(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	name := newKey(t)
	b1 := openKey(t, name)
	k1, err := b1.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w, err := b1.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = b1.Close()
	if _, err := srv.admin.Logical().Write(srv.mount+"/keys/"+name+"/config", map[string]any{"deletion_allowed": true}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.admin.Logical().Delete(srv.mount + "/keys/" + name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // creation times have one-second resolution
	if _, err := srv.admin.Logical().Write(srv.mount+"/keys/"+name, map[string]any{"type": "aes256-gcm96"}); err != nil {
		t.Fatal(err)
	}
	b2 := openKey(t, name)
	defer b2.Close()
	k2, err := b2.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k1 == k2 {
		t.Fatalf("KeyID %q before and after the key was deleted and re-created", k1)
	}
	if _, err := b2.Unwrap(ctx, w, nil); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("Unwrap under the deleted key's key_id %q: %v, want ErrKeyNotFound", w.KeyID, err)
	}
}

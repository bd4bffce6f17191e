package vault

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

func TestParseURI(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		uri     string
		wantErr bool
		check   func(t *testing.T, c config)
	}{
		{name: "token file", uri: "hcvault://vault.example.com:8200/transit/keys/kw?token-file=" + tok, check: func(t *testing.T, c config) {
			if c.addr != "https://vault.example.com:8200" || c.mount != "transit" || c.name != "kw" || c.auth != authToken || c.tls == nil {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "nested mount", uri: "hcvault://v:8200/team/a/transit/keys/kw?token-file=" + tok, check: func(t *testing.T, c config) {
			if c.mount != "team/a/transit" || c.name != "kw" {
				t.Fatalf("mount %q name %q", c.mount, c.name)
			}
		}},
		{name: "approle", uri: "hcvault://v:8200/transit/keys/kw?role-id-file=/r&secret-id-file=/s&auth-mount=ar", check: func(t *testing.T, c config) {
			if c.auth != authAppRole || c.authMount != "ar" {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "jwt", uri: "hcvault://v:8200/transit/keys/kw?auth=jwt&jwt-file=/var/run/secrets/vault/token&role=kw", check: func(t *testing.T, c config) {
			if c.auth != authJWT || c.authMount != "jwt" || c.jwtFile != "/var/run/secrets/vault/token" || c.role != "kw" {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "kubernetes", uri: "hcvault://v:8200/transit/keys/kw?auth=kubernetes&jwt-file=/t&role=kw&auth-mount=/k8s/c1/", check: func(t *testing.T, c config) {
			if c.auth != authKubernetes || c.authMount != "k8s/c1" || c.jwtFile != "/t" || c.role != "kw" {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "durations", uri: "hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&timeout=2s&key-id-ttl=30s", check: func(t *testing.T, c config) {
			if c.Timeout != 2*time.Second || c.KeyIDTTL != 30*time.Second {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "tls off on loopback", uri: "hcvault://127.0.0.1:8200/transit/keys/kw?tls=off&token-file=" + tok, check: func(t *testing.T, c config) {
			if c.addr != "http://127.0.0.1:8200" || c.tls != nil {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "tls off remote", uri: "hcvault://vault.example.com:8200/transit/keys/kw?tls=off&token-file=" + tok, wantErr: true},
		{name: "wrong scheme", uri: "vault://v:8200/transit/keys/kw?token-file=" + tok, wantErr: true},
		{name: "no keys segment", uri: "hcvault://v:8200/transit/kw?token-file=" + tok, wantErr: true},
		{name: "no key name", uri: "hcvault://v:8200/transit/keys/?token-file=" + tok, wantErr: true},
		{name: "no credentials", uri: "hcvault://v:8200/transit/keys/kw", wantErr: true},
		{name: "two credentials", uri: "hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&role-id-file=/r&secret-id-file=/s", wantErr: true},
		{name: "half approle", uri: "hcvault://v:8200/transit/keys/kw?role-id-file=/r", wantErr: true},
		{name: "jwt without role", uri: "hcvault://v:8200/transit/keys/kw?auth=jwt&jwt-file=/t", wantErr: true},
		{name: "jwt without file", uri: "hcvault://v:8200/transit/keys/kw?auth=kubernetes&role=kw", wantErr: true},
		{name: "jwt relative file", uri: "hcvault://v:8200/transit/keys/kw?auth=jwt&role=kw&jwt-file=t", wantErr: true},
		{name: "jwt and token", uri: "hcvault://v:8200/transit/keys/kw?auth=jwt&role=kw&jwt-file=/t&token-file=" + tok, wantErr: true},
		{name: "role with token", uri: "hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&role=kw", wantErr: true},
		{name: "cert without cert", uri: "hcvault://v:8200/transit/keys/kw?auth=cert", wantErr: true},
		{name: "relative file", uri: "hcvault://v:8200/transit/keys/kw?token-file=token", wantErr: true},
		{name: "unknown param", uri: "hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&tokenfile=x", wantErr: true},
		{name: "key_id too long", uri: "hcvault://v:8200/transit/keys/" + strings.Repeat("k", 480) + "?token-file=" + tok, wantErr: true},
		{name: "repeated param", uri: "hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&token-file=" + tok, wantErr: true},
		{name: "userinfo", uri: "hcvault://root@v:8200/transit/keys/kw?token-file=" + tok, wantErr: true},
		{name: "bad timeout", uri: "hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&timeout=1ms", wantErr: true},
		{name: "missing ca", uri: "hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&ca-file=/nonexistent", wantErr: true},
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

func TestParseKeyID(t *testing.T) {
	b := &Backend{prefix: "transit/keys/kw:"}
	tests := []struct {
		kid     string
		v       int
		created int64
		tagged  bool
	}{
		{"transit/keys/kw:v3", 3, 0, false}, // the form before key_ids named the key
		{"transit/keys/kw:v3#1733212345", 3, 1733212345, true},
	}
	for _, tc := range tests {
		v, created, tagged, err := b.parseKeyID(tc.kid)
		if err != nil || v != tc.v || created != tc.created || tagged != tc.tagged {
			t.Errorf("parseKeyID(%q) = %d, %d, %v, %v", tc.kid, v, created, tagged, err)
		}
	}
	for _, kid := range []string{"", "transit/keys/kw:", "transit/keys/kw:v", "transit/keys/kw:v0", "transit/keys/kw:v01",
		"transit/keys/kw:v1:1", "transit/keys/kw:v1x", "transit/keys/kx:v1", "transit/keys/kw:v-1", "transit/keys/kw:v+1", "other/keys/kw:v1",
		"transit/keys/kw:v1#", "transit/keys/kw:v1#01", "transit/keys/kw:v1#-5", "transit/keys/kw:v1#0", "transit/keys/kw:v1#x",
		"transit/keys/kw:v1#1#2", "transit/keys/kw:v1#+5", "transit/keys/kw:#5", "transit/keys/kw:v1#99999999999999999999"} {
		if _, _, _, err := b.parseKeyID(kid); !errors.Is(err, keystore.ErrKeyNotFound) {
			t.Errorf("parseKeyID(%q) = %v, want ErrKeyNotFound", kid, err)
		}
	}
}

// A rotation made outside keywarden (vault write -f transit/keys/x/rotate)
// reaches KeyID at the next refresh; a Wrap that Vault did with the newer
// version makes it known at once.
func TestExternalRotation(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	name := newKey(t)
	rotate := func() {
		if _, err := srv.admin.Logical().Write(srv.mount+"/keys/"+name+"/rotate", nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("ttl", func(t *testing.T) {
		b := openKey(t, name, "key-id-ttl=0s")
		defer b.Close()
		k1, _ := b.KeyID(ctx)
		rotate()
		k2, err := b.KeyID(ctx)
		if err != nil || k1 == k2 || !strings.Contains(k2, ":v2#") {
			t.Fatalf("KeyID %q then %q (%v)", k1, k2, err)
		}
	})
	t.Run("wrap", func(t *testing.T) {
		b := openKey(t, name, "key-id-ttl=1h")
		defer b.Close()
		k1, _ := b.KeyID(ctx)
		rotate()
		if k, _ := b.KeyID(ctx); k != k1 {
			t.Fatalf("KeyID changed before the TTL: %q", k)
		}
		w, err := b.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), nil)
		if err != nil {
			t.Fatal(err)
		}
		k2, _ := b.KeyID(ctx)
		if w.KeyID == k1 || k2 != w.KeyID {
			t.Fatalf("Wrap used %q; KeyID before %q, after %q", w.KeyID, k1, k2)
		}
	})
}

// A key deleted and re-created under the same name starts again at v1, so
// its key_ids would repeat the old key's: a running backend notices (by the
// versions' creation times) and refuses to go on.
func TestRecreatedKeyDetected(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	name := newKey(t)
	b := openKey(t, name, "key-id-ttl=0s")
	defer b.Close()
	w, err := b.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatal(err)
	}
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
	if k, err := b.KeyID(ctx); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("KeyID after the key was re-created: %q, %v; want ErrConfig", k, err)
	}
	if _, err := b.Unwrap(ctx, w, nil); !errors.Is(err, keystore.ErrInvalid) {
		t.Fatalf("Unwrap of the deleted key's ciphertext: %v, want ErrInvalid", err)
	}
}

func TestOpenErrors(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	name := newKey(t)
	weak, err := srv.admin.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"default"}, TTL: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.admin.Logical().Write(srv.mount+"/keys/rsa", map[string]any{"type": "rsa-2048"}); err != nil {
		t.Fatal(err)
	}
	closed := closedPort(t)
	tests := []struct {
		name string
		uri  string
		want error
	}{
		{"no permission", keyURI(srv.host, name, tokenFile(t, weak.Auth.ClientToken)), keystore.ErrPermission},
		{"no such key", keyURI(srv.host, "nope", tokenFile(t, srv.token)), keystore.ErrKeyNotFound},
		{"not an AEAD", keyURI(srv.host, "rsa", tokenFile(t, srv.token)), keystore.ErrConfig},
		{"empty token file", keyURI(srv.host, name, tokenFile(t, "")), keystore.ErrConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Open(ctx, tc.uri)
			if !errors.Is(err, tc.want) {
				if b != nil {
					b.Close()
				}
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		// Open succeeds (keywarden starts unhealthy); calls are Unavailable.
		b, err := Open(ctx, keyURI(closed, name, tokenFile(t, srv.token), "timeout=300ms"))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		if _, err := b.KeyID(ctx); !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("KeyID: %v, want ErrUnavailable", err)
		}
		if _, err := b.Wrap(ctx, []byte("x"), nil); !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("Wrap: %v, want ErrUnavailable", err)
		}
	})
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestManager(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	b := openKey(t, newKey(t))
	defer b.Close()
	pt := []byte("0123456789abcdef0123456789abcdef")
	w1, err := b.Wrap(ctx, pt, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := b.Add(ctx)
	if err != nil || !v2.Primary {
		t.Fatalf("Add: %+v %v", v2, err)
	}
	if err := b.Promote(ctx, v2.KeyID); err != nil {
		t.Fatalf("Promote latest: %v", err)
	}
	if err := b.Promote(ctx, w1.KeyID); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Promote old: %v, want ErrUnsupported", err)
	}
	if err := b.Disable(ctx, v2.KeyID); !errors.Is(err, keystore.ErrInvalid) {
		t.Fatalf("Disable primary: %v, want ErrInvalid", err)
	}
	if err := b.Destroy(ctx, w1.KeyID); !errors.Is(err, keystore.ErrInvalid) {
		t.Fatalf("Destroy enabled: %v, want ErrInvalid", err)
	}
	if err := b.Disable(ctx, w1.KeyID); err != nil {
		t.Fatalf("Disable v1: %v", err)
	}
	if _, err := b.Unwrap(ctx, w1, []byte("a")); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap disabled: %v, want ErrKeyDisabled", err)
	}
	vs, err := b.List(ctx)
	if err != nil || len(vs) != 2 || vs[0].State != keystore.KeyDisabled || vs[1].State != keystore.KeyEnabled || !vs[1].Primary || vs[0].Primary {
		t.Fatalf("List: %+v %v", vs, err)
	}
	if err := b.Enable(ctx, w1.KeyID); err != nil {
		t.Fatalf("Enable v1: %v", err)
	}
	if got, err := b.Unwrap(ctx, w1, []byte("a")); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Unwrap re-enabled: %v", err)
	}
	if err := b.Disable(ctx, w1.KeyID); err != nil {
		t.Fatal(err)
	}
	if err := b.Destroy(ctx, w1.KeyID); err != nil {
		t.Fatalf("Destroy v1: %v", err)
	}
	if _, err := b.Unwrap(ctx, w1, []byte("a")); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap destroyed: %v, want ErrKeyDisabled", err)
	}
	if vs, _ := b.List(ctx); len(vs) != 1 || vs[0].KeyID != v2.KeyID {
		t.Fatalf("List after destroy: %+v", vs)
	}
}

// Vault's own rate limit quota answers 429: ErrThrottled, after retries.
func TestThrottled(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	name := newKey(t)
	b := openKey(t, name)
	defer b.Close()
	quota := "sys/quotas/rate-limit/" + srv.mount + "-" + name
	if _, err := srv.admin.Logical().Write(quota, map[string]any{"path": srv.mount + "/encrypt/" + name, "rate": 1, "interval": "1m"}); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = srv.admin.Logical().Delete(quota) }()
	var err error
	for range 3 {
		if _, err = b.Wrap(ctx, []byte("x"), nil); err != nil {
			break
		}
	}
	if !errors.Is(err, keystore.ErrThrottled) {
		t.Fatalf("Wrap under a 1/min quota: %v, want ErrThrottled", err)
	}
}

// A token file rewritten with a new token (Vault Agent's job) is picked up,
// even when the old token is already revoked.
func TestTokenFileReread(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	mk := func() string {
		tk, err := srv.admin.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{srv.mount}, TTL: "10m"})
		if err != nil {
			t.Fatal(err)
		}
		return tk.Auth.ClientToken
	}
	t1 := mk()
	path := tokenFile(t, t1)
	b, err := Open(ctx, keyURI(srv.host, newKey(t), path))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Wrap(ctx, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.admin.Auth().Token().RevokeTree(t1); err != nil {
		t.Fatal(err)
	}
	// Same size, same mtime second: only the re-read after a 403 finds it.
	if err := os.WriteFile(path, []byte(mk()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, time.Time{}, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Wrap(ctx, []byte("x"), nil); err != nil {
		t.Fatalf("Wrap after the token was replaced: %v", err)
	}
}

// AppRole: the backend logs in, renews its token before it expires, logs in
// again once renewal no longer helps, and revokes its token on Close.
func TestAppRole(t *testing.T) {
	needServer(t)
	if testing.Short() {
		t.Skip("waits for token expiry")
	}
	ctx := context.Background()
	mount := srv.mount + "-approle"
	if err := srv.admin.Sys().EnableAuthWithOptions(mount, &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.admin.Sys().DisableAuth(mount) }()
	role := "auth/" + mount + "/role/kw"
	if _, err := srv.admin.Logical().Write(role, map[string]any{"token_policies": srv.mount, "token_ttl": "2s", "token_max_ttl": "5s"}); err != nil {
		t.Fatal(err)
	}
	rid, err := srv.admin.Logical().Read(role + "/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := srv.admin.Logical().Write(role+"/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, v string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ridFile := write("role-id", rid.Data["role_id"].(string))
	sidFile := write("secret-id", sid.Data["secret_id"].(string))
	name := newKey(t)
	uri := "hcvault://" + srv.host + "/" + srv.mount + "/keys/" + name + "?tls=off&auth-mount=" + mount +
		"&role-id-file=" + ridFile + "&secret-id-file=" + sidFile
	b, err := Open(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	// 7 s of calls: past the 2 s TTL (renewals) and the 5 s max TTL (new login).
	tokens := map[string]bool{}
	renewals := 0
	var lastIssued time.Time
	deadline := time.Now().Add(7 * time.Second)
	for time.Now().Before(deadline) {
		b.tok.mu.Lock()
		tok, issued := b.tok.token, b.tok.issued
		b.tok.mu.Unlock()
		if tokens[tok] && !issued.Equal(lastIssued) {
			renewals++
		}
		tokens[tok], lastIssued = true, issued
		w, err := b.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), nil)
		if err != nil {
			t.Fatalf("Wrap at %s: %v", time.Until(deadline), err)
		}
		if _, err := b.Unwrap(ctx, w, nil); err != nil {
			t.Fatalf("Unwrap: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if len(tokens) < 2 || renewals < 1 {
		t.Fatalf("%d tokens, %d renewals over 7 s; want a renewal and a new login", len(tokens), renewals)
	}
	b.tok.mu.Lock()
	tok := b.tok.token
	b.tok.mu.Unlock()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.admin.Auth().Token().Lookup(tok); err == nil {
		t.Fatal("login token still valid after Close")
	}

	bad := "hcvault://" + srv.host + "/" + srv.mount + "/keys/" + name + "?tls=off&auth-mount=" + mount +
		"&role-id-file=" + ridFile + "&secret-id-file=" + write("bad", "not-a-secret-id")
	if _, err := Open(ctx, bad); !errors.Is(err, keystore.ErrPermission) {
		t.Fatalf("Open with a wrong secret-id: %v, want ErrPermission", err)
	}
}

// faultProxy stands between the backend and the real dev server on
// 127.0.0.1 and fails or delays requests on demand.
type faultProxy struct {
	fail  atomic.Int64 // answer this many matching requests with 503
	hang  atomic.Bool  // hold matching requests until the client gives up
	match string       // path substring that faults apply to
	seen  atomic.Int64 // matching requests seen
}

func newFaultProxy(t *testing.T, match string) (*faultProxy, string) {
	t.Helper()
	target, _ := url.Parse(srv.addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	fp := &faultProxy{match: match}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, fp.match) {
			fp.seen.Add(1)
			if fp.hang.Load() {
				// The server notices the client hang up only once the
				// body is read.
				_, _ = io.Copy(io.Discard, r.Body)
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
				return
			}
			if fp.fail.Add(-1) >= 0 {
				http.Error(w, `{"errors":["injected"]}`, http.StatusServiceUnavailable)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	return fp, strings.TrimPrefix(ts.URL, "http://")
}

func TestRetries(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	name := newKey(t)
	fp, host := newFaultProxy(t, "/encrypt/")
	b, err := Open(ctx, keyURI(host, name, tokenFile(t, srv.token), "timeout=300ms"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	t.Run("idempotent call retried", func(t *testing.T) {
		fp.seen.Store(0)
		fp.fail.Store(2)
		if _, err := b.Wrap(ctx, []byte("x"), nil); err != nil {
			t.Fatalf("Wrap through two 503s: %v", err)
		}
		if n := fp.seen.Load(); n != 3 {
			t.Fatalf("%d encrypt requests, want 3", n)
		}
	})
	t.Run("gives up", func(t *testing.T) {
		fp.seen.Store(0)
		fp.fail.Store(10)
		if _, err := b.Wrap(ctx, []byte("x"), nil); !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("Wrap: %v, want ErrUnavailable", err)
		}
		if n := fp.seen.Load(); n != 3 {
			t.Fatalf("%d encrypt requests, want 3", n)
		}
		fp.fail.Store(0)
	})
	t.Run("per-call timeout", func(t *testing.T) {
		fp.seen.Store(0)
		keystoretest.PerCallTimeout(t, "Wrap", func() func() {
			fp.hang.Store(true)
			return func() { fp.hang.Store(false) }
		}, func(ctx context.Context) error { _, err := b.Wrap(ctx, []byte("x"), nil); return err })
	})

	t.Run("rotate not retried", func(t *testing.T) {
		fp2, host2 := newFaultProxy(t, "/rotate")
		b2, err := Open(ctx, keyURI(host2, name, tokenFile(t, srv.token)))
		if err != nil {
			t.Fatal(err)
		}
		defer b2.Close()
		fp2.fail.Store(1)
		if _, err := b2.Add(ctx); !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("Add: %v, want ErrUnavailable", err)
		}
		if n := fp2.seen.Load(); n != 1 {
			t.Fatalf("%d rotate requests, want exactly 1", n)
		}
	})
}

// The SDK's environment variables do not configure keywarden.
func TestEnvironmentIgnored(t *testing.T) {
	needServer(t)
	t.Setenv("VAULT_TOKEN", "not-a-token")
	t.Setenv("VAULT_HEADERS", `{"X-Test":"1"}`)
	b := openKey(t, newKey(t))
	defer b.Close()
	if _, err := b.Wrap(context.Background(), []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkWrap(b *testing.B) {
	needServer(b)
	be := openKey(b, newKey(b))
	defer be.Close()
	ctx := context.Background()
	kek := bytes.Repeat([]byte{7}, 32)
	aad := []byte("keywarden bench aad")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.Wrap(ctx, kek, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrap(b *testing.B) {
	needServer(b)
	be := openKey(b, newKey(b))
	defer be.Close()
	ctx := context.Background()
	aad := []byte("keywarden bench aad")
	w, err := be.Wrap(ctx, bytes.Repeat([]byte{7}, 32), aad)
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

func BenchmarkKeyID(b *testing.B) {
	needServer(b)
	be := openKey(b, newKey(b))
	defer be.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.KeyID(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

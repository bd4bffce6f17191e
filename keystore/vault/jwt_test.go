package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore"
)

// signJWT makes an ES256 JWT, as kube-apiserver signs a projected
// service-account token (there with RS256 or ES256, per its key).
func signJWT(t *testing.T, key *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	in := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(claims)
	h := sha256.Sum256([]byte(in))
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestJWTLogin: auth=jwt logs in with the JWT in jwt-file, reads the file
// again at every login (a projected token rotates), and a token for
// another audience is refused as ErrPermission without the JWT in the
// message.
func TestJWTLogin(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	mount := srv.mount + "-jwt"
	if err := srv.admin.Sys().EnableAuthWithOptions(mount, &api.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.admin.Sys().DisableAuth(mount) }()
	const iss = "https://kubernetes.default.svc"
	if _, err := srv.admin.Logical().Write("auth/"+mount+"/config", map[string]any{
		"jwt_validation_pubkeys": []string{pub}, "bound_issuer": iss,
	}); err != nil {
		t.Fatal(err)
	}
	sub := "system:serviceaccount:kube-system:keywarden"
	if _, err := srv.admin.Logical().Write("auth/"+mount+"/role/keywarden", map[string]any{
		"role_type": "jwt", "bound_audiences": []string{"vault"}, "user_claim": "sub",
		"bound_subject": sub, "claim_mappings": map[string]string{"n": "n"},
		"token_policies": []string{srv.mount}, "token_ttl": "1h",
	}); err != nil {
		t.Fatal(err)
	}
	jwtFor := func(aud, n string) string {
		now := time.Now()
		return signJWT(t, key, map[string]any{"iss": iss, "sub": sub, "aud": []string{aud}, "n": n,
			"iat": now.Unix(), "nbf": now.Unix() - 5, "exp": now.Add(10 * time.Minute).Unix()})
	}
	p := filepath.Join(t.TempDir(), "token")
	write := func(jwt string) {
		t.Helper()
		// As the kubelet does: a new file put in place, not rewritten.
		tmp := p + ".new"
		if err := os.WriteFile(tmp, []byte(jwt), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, p); err != nil {
			t.Fatal(err)
		}
	}
	meta := func(b *Backend) string {
		t.Helper()
		b.tok.mu.Lock()
		tok := b.tok.token
		b.tok.mu.Unlock()
		s, err := srv.admin.Auth().Token().Lookup(tok)
		if err != nil {
			t.Fatalf("lookup of the login token: %v", err)
		}
		m, _ := s.Data["meta"].(map[string]any)
		n, _ := m["n"].(string)
		return n
	}
	name := newKey(t)
	uri := "hcvault://" + srv.host + "/" + srv.mount + "/keys/" + name + "?tls=off&auth=jwt&auth-mount=" + mount +
		"&role=keywarden&jwt-file=" + p

	write(jwtFor("vault", "first"))
	b, err := Open(ctx, uri)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	w, err := b.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	if got := meta(b); got != "first" {
		t.Fatalf("login token from JWT %q, want first", got)
	}

	// Rotation: the kubelet replaces the file; the next login uses it.
	write(jwtFor("vault", "second"))
	b.tok.mu.Lock()
	err = b.tok.loginLocked(ctx)
	b.tok.mu.Unlock()
	if err != nil {
		t.Fatalf("re-login: %v", err)
	}
	if got := meta(b); got != "second" {
		t.Fatalf("after rotation the login token is from JWT %q, want second", got)
	}
	if _, err := b.Unwrap(ctx, w, nil); err != nil {
		t.Fatalf("Unwrap after re-login: %v", err)
	}

	// A token for another audience is refused, at Open and at re-login.
	wrong := jwtFor("https://kubernetes.default.svc", "wrong")
	write(wrong)
	b.tok.mu.Lock()
	err = b.tok.loginLocked(ctx)
	b.tok.mu.Unlock()
	if !errors.Is(err, keystore.ErrPermission) {
		t.Fatalf("re-login with a wrong-audience JWT: %v, want ErrPermission", err)
	}
	_, err = Open(ctx, uri)
	if !errors.Is(err, keystore.ErrPermission) {
		t.Fatalf("Open with a wrong-audience JWT: %v, want ErrPermission", err)
	}
	if !strings.Contains(err.Error(), "aud") {
		t.Errorf("error %q does not say the audience is wrong", err)
	}
	sig := wrong[strings.LastIndex(wrong, ".")+1:]
	if strings.Contains(err.Error(), sig) || strings.Contains(err.Error(), wrong[:20]) {
		t.Errorf("error holds the JWT: %q", err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, uri); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("Open with a world-readable jwt-file: %v, want ErrConfig", err)
	}
}

package vault

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote/remotetest"
)

// FuzzParseCiphertext: Transit's answer to encrypt. No input panics, every
// refusal is ErrUnavailable, and what parses is a version ≥ 1 and a
// ciphertext Unwrap will take, in the one form formatCiphertext writes back
// to Vault.
func FuzzParseCiphertext(f *testing.F) {
	raw := make([]byte, minCiphertext+32)
	for _, s := range []string{
		formatCiphertext(1, raw),
		formatCiphertext(12, raw[:minCiphertext]),
		formatCiphertext(1, raw[:minCiphertext-1]),
		formatCiphertext(1, make([]byte, maxCiphertext)),
		formatCiphertext(1, make([]byte, maxCiphertext+1)),
		"vault:v0:" + formatCiphertext(1, raw)[9:],
		"vault:v-1:" + formatCiphertext(1, raw)[9:],
		"vault:v01:" + formatCiphertext(1, raw)[9:],
		"vault:v+1:" + formatCiphertext(1, raw)[9:],
		formatCiphertext(1, raw[:30]) + "\n",
		formatCiphertext(1, raw[:29])[:len(formatCiphertext(1, raw[:29]))-3] + "AB=",
		"vault:v:",
		"vault:v1",
		"vault:v1:!!!!",
		"vault:",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, raw, err := parseCiphertext(s)
		if err != nil {
			if !errors.Is(err, keystore.ErrUnavailable) {
				t.Fatalf("%q: unclassified refusal %v", s, err)
			}
			return
		}
		if v < 1 {
			t.Fatalf("%q: version %d", s, v)
		}
		if len(raw) < minCiphertext || len(raw) > maxCiphertext {
			t.Fatalf("%q: accepted a %d-byte ciphertext that Unwrap refuses", s, len(raw))
		}
		if again := formatCiphertext(v, raw); again != s {
			t.Fatalf("%q formats back as %q", s, again)
		}
	})
}

// FuzzParseURI: no URI panics, every refusal is ErrConfig, and an accepted
// one has a usable timeout, a mount and key name, one kind of credentials
// held in absolute paths, and plain HTTP only to a loopback host.
func FuzzParseURI(f *testing.F) {
	dir := f.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("t"), 0o600); err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		"hcvault://vault.example.com:8200/transit/keys/kw?token-file=" + tok,
		"hcvault://v:8200/team/a/transit/keys/kw?token-file=" + tok,
		"hcvault://v:8200/transit/keys/kw?role-id-file=/r&secret-id-file=/s&auth-mount=ar",
		"hcvault://v:8200/transit/keys/kw?auth=approle&role-id-file=/r&secret-id-file=/s",
		"hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&timeout=2s&key-id-ttl=30s",
		"hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&timeout=&key-id-ttl=",
		"hcvault://v:8200/transit/keys/kw?token-file=/t&namespace=ns1&server-name=vault.internal",
		"hcvault://127.0.0.1:8200/transit/keys/kw?tls=off&token-file=" + tok,
		"hcvault://localhost:8200/transit/keys/kw?tls=off&token-file=/t",
		"hcvault://[::1]:8200/transit/keys/kw?tls=off&token-file=/t",
		"hcvault://vault.example.com:8200/transit/keys/kw?tls=off&token-file=" + tok,
		"vault://v:8200/transit/keys/kw?token-file=" + tok,
		"hcvault://v:8200/transit/kw?token-file=" + tok,
		"hcvault://v:8200/transit/keys/?token-file=" + tok,
		"hcvault://v:8200/transit/keys/kw",
		"hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&role-id-file=/r&secret-id-file=/s",
		"hcvault://v:8200/transit/keys/kw?role-id-file=/r",
		"hcvault://v:8200/transit/keys/kw?auth=cert",
		"hcvault://v:8200/transit/keys/kw?auth=jwt&jwt-file=/var/run/secrets/vault/token&role=keywarden",
		"hcvault://v:8200/transit/keys/kw?auth=kubernetes&jwt-file=/t&role=kw&auth-mount=k8s/c1",
		"hcvault://v:8200/transit/keys/kw?auth=jwt&jwt-file=/t",
		"hcvault://v:8200/transit/keys/kw?auth=jwt&role=kw&jwt-file=t",
		"hcvault://v:8200/transit/keys/kw?token-file=/t&role=kw",
		"hcvault://v:8200/transit/keys/kw?token-file=token",
		"hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&tokenfile=x",
		"hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&token-file=" + tok,
		"hcvault://root@v:8200/transit/keys/kw?token-file=" + tok,
		"hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&timeout=1ms",
		"hcvault://v:8200/transit/keys/kw?token-file=" + tok + "&ca-file=/nonexistent",
		"hcvault://v:8200/transit/keys/kw?token-file=/t&ca-file=" + tok,
		"hcvault://v:8200/transit/keys/kw?token-file=/t&cert-file=/c",
		"hcvault://v:8200/transit/keys/kw?token-file=/t#x",
		"hcvault://:8200/transit/keys/kw?token-file=/t",
		"hcvault://::/transit/keys/kw?token-file=/t",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// tlsConfig reads ca-file, cert-file and key-file: keep the fuzzer
		// away from files that never end.
		if u, err := url.Parse(s); err == nil {
			for _, vs := range u.Query() {
				for _, v := range vs {
					if p := filepath.Clean(v); p != "/" && (strings.HasPrefix(p, "/dev") || strings.HasPrefix(p, "/proc") || strings.HasPrefix(p, "/sys")) {
						return
					}
				}
			}
		}
		c, err := parseURI(s)
		if !remotetest.ParseResult(t, s, c.Options, err) {
			return
		}
		if c.mount == "" || c.name == "" || strings.Contains(c.name, "/") {
			t.Fatalf("%q: mount %q key %q", s, c.mount, c.name)
		}
		creds := 0
		for _, p := range []string{c.tokenFile, c.roleIDFile, c.secretIDFile, c.jwtFile} {
			if p != "" {
				creds++
				if !filepath.IsAbs(p) {
					t.Fatalf("%q: relative credential file %q", s, p)
				}
			}
		}
		switch c.auth {
		case authToken:
			if c.tokenFile == "" || creds != 1 || c.role != "" {
				t.Fatalf("%q: token auth with %+v", s, c)
			}
		case authAppRole:
			if c.roleIDFile == "" || c.secretIDFile == "" || c.tokenFile != "" {
				t.Fatalf("%q: approle auth with %+v", s, c)
			}
		case authCert:
			if c.tls == nil || len(c.tls.Certificates) == 0 || creds != 0 {
				t.Fatalf("%q: cert auth with %+v", s, c)
			}
		case authJWT, authKubernetes:
			if c.jwtFile == "" || c.role == "" || creds != 1 || c.authMount == "" {
				t.Fatalf("%q: %s auth with %+v", s, c.auth, c)
			}
		default:
			t.Fatalf("%q: auth %q", s, c.auth)
		}
		u, err := url.Parse(c.addr)
		if err != nil || u.Hostname() == "" || u.Path != "" || u.User != nil {
			t.Fatalf("%q: address %q (%v)", s, c.addr, err)
		}
		switch u.Scheme {
		case "https":
			if c.tls == nil {
				t.Fatalf("%q: https without a TLS config", s)
			}
		case "http":
			if c.tls != nil || !isLoopback(u.Hostname()) {
				t.Fatalf("%q: plain HTTP to %q", s, u.Host)
			}
		default:
			t.Fatalf("%q: address %q", s, c.addr)
		}
	})
}

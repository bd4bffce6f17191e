package vault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore/keystoretest"
)

// These tests run against a real Vault (or OpenBao) dev server:
//
//	test/keystores/servers.sh start vault   # prints VAULT_ADDR and VAULT_TOKEN
//
// VAULT_ADDR must be a loopback address and VAULT_TOKEN a root token. Without
// VAULT_ADDR every test that needs the server skips, unless
// KEYWARDEN_REQUIRE_VAULT is set (CI), which makes it a failure.

const requireEnv = "KEYWARDEN_REQUIRE_VAULT"

var srv struct {
	addr  string // http://127.0.0.1:8200
	host  string // 127.0.0.1:8200
	admin *api.Client
	mount string // a transit mount of this test process
	token string // a token with the documented least-privilege policy (+ management)
	n     atomic.Int64
	err   string // why there is no server
}

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	if err := setupServer(); err != nil {
		if os.Getenv(requireEnv) != "" {
			fmt.Fprintf(os.Stderr, "%s is set but the Vault dev server is not usable: %v\n", requireEnv, err)
			return 1
		}
		srv.err = err.Error()
		return m.Run()
	}
	defer func() {
		_ = srv.admin.Sys().Unmount(srv.mount)
		_ = srv.admin.Sys().DeletePolicy(srv.mount)
	}()
	return m.Run()
}

func setupServer() error {
	addr := os.Getenv("VAULT_ADDR")
	if addr == "" {
		return fmt.Errorf("VAULT_ADDR is not set (test/keystores/servers.sh start vault)")
	}
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "http" {
		return fmt.Errorf("VAULT_ADDR %q: want http://127.0.0.1:<port> (a dev server)", addr)
	}
	// Tests only ever talk to loopback.
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("VAULT_ADDR %q is not a loopback IP address", addr)
	}
	if os.Getenv("VAULT_TOKEN") == "" {
		return fmt.Errorf("VAULT_TOKEN (the dev server's root token) is not set")
	}
	cfg := api.DefaultConfig()
	cfg.Address = addr
	admin, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	admin.SetToken(os.Getenv("VAULT_TOKEN"))
	if _, err := admin.Sys().Health(); err != nil {
		return fmt.Errorf("vault at %s: %w", addr, err)
	}
	mount := "kw-test-" + randHex(4)
	if err := admin.Sys().Mount(mount, &api.MountInput{Type: "transit"}); err != nil {
		return fmt.Errorf("mount transit: %w", err)
	}
	// The policy docs/keystores/vault.md gives keywarden, plus kmsctl's
	// management paths, which the rotation tests use.
	policy := strings.NewReplacer("MOUNT", mount).Replace(`
path "MOUNT/encrypt/*" { capabilities = ["update"] }
path "MOUNT/decrypt/*" { capabilities = ["update"] }
path "MOUNT/keys/*"    { capabilities = ["read"] }
path "MOUNT/keys/+/rotate" { capabilities = ["update"] }
path "MOUNT/keys/+/config" { capabilities = ["update"] }
path "MOUNT/keys/+/trim"   { capabilities = ["update"] }
`)
	if err := admin.Sys().PutPolicy(mount, policy); err != nil {
		return fmt.Errorf("put policy: %w", err)
	}
	tok, err := admin.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{mount}, NoDefaultPolicy: false, TTL: "1h"})
	if err != nil {
		return fmt.Errorf("create token: %w", err)
	}
	srv.addr, srv.host, srv.admin, srv.mount, srv.token = addr, u.Host, admin, mount, tok.Auth.ClientToken
	return nil
}

func needServer(t testing.TB) {
	t.Helper()
	if srv.admin == nil {
		t.Skipf("no Vault dev server: %s", srv.err)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newKey creates a fresh aes256-gcm96 key and returns its name.
func newKey(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("k%d", srv.n.Add(1))
	if _, err := srv.admin.Logical().Write(srv.mount+"/keys/"+name, map[string]any{"type": "aes256-gcm96"}); err != nil {
		t.Fatalf("create key: %v", err)
	}
	return name
}

func tokenFile(t testing.TB, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// keyURI is the hcvault:// URI of a key on the dev server, with extra query
// parameters.
func keyURI(host, name, tokenPath string, extra ...string) string {
	q := append([]string{"tls=off", "token-file=" + tokenPath}, extra...)
	return "hcvault://" + host + "/" + srv.mount + "/keys/" + name + "?" + strings.Join(q, "&")
}

func openKey(t testing.TB, name string, extra ...string) *Backend {
	t.Helper()
	b, err := Open(context.Background(), keyURI(srv.host, name, tokenFile(t, srv.token), extra...))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return b
}

func TestConformance(t *testing.T) {
	needServer(t)
	keystoretest.Run(t, func(t *testing.T) keystoretest.Fixture {
		b := openKey(t, newKey(t))
		return keystoretest.Fixture{
			Backend: b,
			Rotate: func(ctx context.Context) error {
				_, err := b.Add(ctx)
				return err
			},
		}
	})
}

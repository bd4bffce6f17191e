package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/test/keystores/vaulttransit"
)

// VaultBin is the Vault server binary: $KEYWARDEN_VAULT_BIN, or
// <repo>/test/vault/tools/bin/vault (`make vault-tools`). It returns an
// error if there is no executable there.
func VaultBin() (string, error) {
	bin := os.Getenv("KEYWARDEN_VAULT_BIN")
	if bin == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		bin = filepath.Join(root, "test", "vault", "tools", "bin", "vault")
	}
	bin = abs(bin)
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("no Vault server binary at %s (run `make vault-tools`, or set KEYWARDEN_VAULT_BIN)", bin)
	}
	return bin, nil
}

// Vault is a Vault dev server of the test's own (in memory, on a free
// loopback port), with a Transit mount and an aes256-gcm96 key, and a
// token limited to the policy docs/keystores/vault.md documents. Unlike a
// shared dev server it can be frozen: Freeze and Thaw send SIGSTOP and
// SIGCONT, so every connection to it hangs as a hung keystore does.
type Vault struct {
	// Addr is http://127.0.0.1:<port>.
	Addr string
	// Keyset is keywarden's keystore on the Transit key, with key-id-ttl=1s
	// so a check really reaches Vault every second.
	Keyset *Keyset
	p      *Process
	frozen bool
	port   int
	dir    string
}

// VaultRootToken is the root token of every dev server StartVault starts.
const VaultRootToken = "keywarden-e2e-root"

// StartVault starts bin (VaultBin) in dev mode, with its own HOME and
// nothing of VAULT_ADDR or VAULT_TOKEN from the test's environment, and
// sets up the Transit key and keywarden's token file. The server is
// stopped at cleanup (thawed first if frozen).
func StartVault(t testing.TB, tools Tools, bin string) *Vault {
	t.Helper()
	v := &Vault{dir: workDir(t, "vault"), port: mustPort(t)}
	v.Addr = "http://" + hostPort(v.port)
	admin := v.startDev(t, bin, "home")
	const mount = "transit"
	if err := vaulttransit.Setup(admin, mount, "keywarden", false); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"keywarden"}, TTL: "24h"})
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	tokenFile := filepath.Join(v.dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(tok.Auth.ClientToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := fmt.Sprintf("hcvault://%s/%s/keys/keywarden?tls=off&token-file=%s&key-id-ttl=1s", hostPort(v.port), mount, tokenFile)
	v.Keyset = NewKeystore(tools, uri)
	return v
}

// startDev starts a dev server on v's port with HOME in v.dir/home, waits
// until it is initialized and unsealed, and returns a client with the root
// token.
func (v *Vault) startDev(t testing.TB, bin, home string) *vaultapi.Client {
	t.Helper()
	home = filepath.Join(v.dir, home)
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	v.p = StartProcessEnv(t, "vault", filepath.Join(v.dir, "vault.log"),
		[]string{"HOME=" + home, "VAULT_ADDR=", "VAULT_TOKEN=", "VAULT_CACERT=", "VAULT_CLIENT_CERT=", "VAULT_CLIENT_KEY="},
		bin, "server", "-dev", "-dev-listen-address="+hostPort(v.port), "-dev-root-token-id="+VaultRootToken, "-dev-no-store-token")
	// Registered after StartProcessEnv's stop, so it runs before it: a
	// stopped process would hold SIGTERM pending until the SIGKILL.
	t.Cleanup(func() { _ = v.Thaw() })
	admin, err := v.Admin()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		h, err := admin.Sys().Health()
		if err == nil && h.Initialized && !h.Sealed {
			return admin
		}
		if v.p.Exited() || time.Now().After(deadline) {
			t.Fatalf("vault dev server at %s not up: %v\n%s", v.Addr, err, tail(v.p.LogPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Admin is a client of the dev server with its root token.
func (v *Vault) Admin() (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.Addr
	cfg.Timeout = 10 * time.Second
	admin, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	admin.SetToken(VaultRootToken)
	return admin, nil
}

// RestartEmpty stops the dev server and starts a new one on the same
// address: in memory, so with no Transit mount, no key and no token but
// the root token. Keywarden's URI (Keyset) still names it, and now fails.
func (v *Vault) RestartEmpty(t testing.TB, bin string) {
	t.Helper()
	if err := v.Thaw(); err != nil {
		t.Fatal(err)
	}
	v.p.Stop(20 * time.Second)
	v.startDev(t, bin, fmt.Sprintf("home-%d", time.Now().UnixNano()))
}

// Pid is the Vault server's process id.
func (v *Vault) Pid() int { return v.p.Pid() }

// Freeze stops the server with SIGSTOP: its sockets stay open and every
// request to it hangs, the way a wedged keystore behaves (a refused
// connection would fail fast instead).
func (v *Vault) Freeze() error {
	if err := syscall.Kill(-v.p.Pid(), syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP vault: %w", err)
	}
	v.frozen = true
	return nil
}

// Thaw resumes a frozen server with SIGCONT; it does nothing otherwise.
func (v *Vault) Thaw() error {
	if !v.frozen {
		return nil
	}
	if err := syscall.Kill(-v.p.Pid(), syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("SIGCONT vault: %w", err)
	}
	v.frozen = false
	return nil
}

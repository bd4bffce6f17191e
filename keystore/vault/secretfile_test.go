package vault

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore"
)

// loginAPI answers logins with a token and nothing else; the files are
// read before any call, so it is all these tests need.
type loginAPI struct{ token string }

func (a *loginAPI) Read(context.Context, string) (*api.Secret, error) { return nil, nil }
func (a *loginAPI) Write(context.Context, string, map[string]any) (*api.Secret, error) {
	return nil, nil
}
func (a *loginAPI) Login(context.Context, string, map[string]any) (*api.Secret, error) {
	return &api.Secret{Auth: &api.SecretAuth{ClientToken: "hvs.login", LeaseDuration: 3600}}, nil
}
func (a *loginAPI) SetToken(t string) { a.token = t }

// Every file that holds a Vault credential is read under the secret-file
// rule: 0644 is refused with ErrConfig naming the file (never its
// contents), 0600 is read.
func TestSecretFilePermissions(t *testing.T) {
	const secret = "hvs.s3cr3t-credential"
	kinds := []struct {
		name string
		cfg  func(path, other string) config
	}{
		{"token-file", func(p, _ string) config { return config{auth: authToken, tokenFile: p} }},
		{"role-id-file", func(p, other string) config {
			return config{auth: authAppRole, authMount: "approle", roleIDFile: p, secretIDFile: other}
		}},
		{"secret-id-file", func(p, other string) config {
			return config{auth: authAppRole, authMount: "approle", roleIDFile: other, secretIDFile: p}
		}},
	}
	for _, k := range kinds {
		for _, mode := range []os.FileMode{0o644, 0o600} {
			t.Run(k.name+"/"+mode.String(), func(t *testing.T) {
				dir := t.TempDir()
				p, other := filepath.Join(dir, "cred"), filepath.Join(dir, "other")
				if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(other, []byte("other-id\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, mode); err != nil {
					t.Fatal(err)
				}
				cfg := k.cfg(p, other)
				a := &loginAPI{}
				tok := &tokens{cfg: &cfg, api: a, now: func() time.Time { return time.Unix(0, 0) }}
				err := tok.ensure(context.Background())
				if mode == 0o600 {
					if err != nil || a.token == "" {
						t.Fatalf("0600 %s: %v (token %q)", k.name, err, a.token)
					}
					if cfg.auth == authToken {
						// A file loosened later is refused at the next call.
						if err := os.Chmod(p, 0o644); err != nil {
							t.Fatal(err)
						}
						if err := tok.ensure(context.Background()); !errors.Is(err, keystore.ErrConfig) {
							t.Fatalf("token-file chmod 644 after a good read: %v, want ErrConfig", err)
						}
					}
					return
				}
				if !errors.Is(err, keystore.ErrConfig) {
					t.Fatalf("0644 %s: %v, want ErrConfig", k.name, err)
				}
				if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), k.name) || !strings.Contains(err.Error(), "0644") {
					t.Fatalf("error %q does not name the file, its role and its mode", err)
				}
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error %q shows the credential", err)
				}
				if a.token != "" {
					t.Fatalf("a token was set from a refused file")
				}
			})
		}
	}
}

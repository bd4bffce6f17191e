package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/secretfile"
)

// tokens keeps the Vault token current. A token from token-file is re-read
// whenever the file changes (Vault Agent or an operator renews it there);
// a token from an AppRole, cert, JWT or Kubernetes login belongs to us: it is renewed once
// two thirds of its TTL have passed, and replaced by a new login when it can
// no longer be renewed.
type tokens struct {
	cfg *config
	api vaultAPI
	now func() time.Time

	mu       sync.Mutex
	token    string
	stamp    fileStamp // token-file only
	issued   time.Time // login/renewal time; zero for a token file
	ttl      time.Duration
	renew    bool
	loggedIn bool
}

type fileStamp struct {
	size  int64
	mtime time.Time
	mode  os.FileMode // a chmod alone makes the file be read (and checked) again
}

// ensure makes sure the client holds a usable token before a call.
func (t *tokens) ensure(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch t.cfg.auth {
	case authToken:
		return t.readFileLocked(false)
	default:
		if !t.loggedIn {
			return t.loginLocked(ctx)
		}
		if t.ttl > 0 && t.now().Sub(t.issued) >= t.ttl*2/3 {
			return t.renewLocked(ctx)
		}
		return nil
	}
}

// denied is called after Vault refused the token. It reports whether a new
// token is now in hand, so the call is worth one more try.
func (t *tokens) denied(ctx context.Context) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.token
	switch t.cfg.auth {
	case authToken:
		if err := t.readFileLocked(true); err != nil {
			return false
		}
	default:
		if err := t.loginLocked(ctx); err != nil {
			return false
		}
	}
	return t.token != old
}

func (t *tokens) readFileLocked(force bool) error {
	fi, err := os.Stat(t.cfg.tokenFile)
	if err != nil {
		return fmt.Errorf("%w: vault token-file: %v", keystore.ErrConfig, err)
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime(), mode: fi.Mode()}
	if !force && t.token != "" && st == t.stamp {
		return nil
	}
	tok, err := readSecretFile("token-file", t.cfg.tokenFile)
	if err != nil {
		return err
	}
	t.token, t.stamp = tok, st
	t.api.SetToken(tok)
	return nil
}

func (t *tokens) loginLocked(ctx context.Context) error {
	var data map[string]any
	switch t.cfg.auth {
	case authAppRole:
		roleID, err := readSecretFile("role-id-file", t.cfg.roleIDFile)
		if err != nil {
			return err
		}
		secretID, err := readSecretFile("secret-id-file", t.cfg.secretIDFile)
		if err != nil {
			return err
		}
		data = map[string]any{"role_id": roleID, "secret_id": secretID}
	case authJWT, authKubernetes:
		// Read at every login: a projected service-account token is
		// replaced by the kubelet well before it expires.
		jwt, err := readSecretFile("jwt-file", t.cfg.jwtFile)
		if err != nil {
			return err
		}
		data = map[string]any{"role": t.cfg.role, "jwt": jwt}
	case authCert:
		data = map[string]any{}
		if t.cfg.certRole != "" {
			data["name"] = t.cfg.certRole
		}
	}
	s, err := t.api.Login(ctx, "auth/"+t.cfg.authMount+"/login", data)
	if err != nil {
		return classifyLogin(err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return fmt.Errorf("%w: vault %s login returned no token", keystore.ErrPermission, t.cfg.auth)
	}
	t.setLocked(s.Auth)
	return nil
}

func (t *tokens) renewLocked(ctx context.Context) error {
	if t.renew {
		s, err := t.api.Write(ctx, "auth/token/renew-self", map[string]any{"increment": int(t.ttl.Seconds())})
		// A renewal that no longer extends the token (max TTL reached) is
		// as good as a failure: log in again.
		if err == nil && s != nil && s.Auth != nil && s.Auth.ClientToken != "" &&
			time.Duration(s.Auth.LeaseDuration)*time.Second > t.ttl/3 {
			t.setLocked(s.Auth)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return t.loginLocked(ctx)
}

func (t *tokens) setLocked(a *api.SecretAuth) {
	t.token = a.ClientToken
	t.ttl = time.Duration(a.LeaseDuration) * time.Second
	t.renew = a.Renewable
	t.issued = t.now()
	t.loggedIn = true
	t.api.SetToken(a.ClientToken)
}

// revoke gives back a token we logged in for. Tokens from a file belong to
// whoever wrote the file.
func (t *tokens) revoke(ctx context.Context) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cfg.auth == authToken || !t.loggedIn {
		return
	}
	_, _ = t.api.Write(ctx, "auth/token/revoke-self", nil)
	t.loggedIn = false
	t.token = ""
	t.api.SetToken("")
}

// readSecretFile reads a credential file (what names its URI parameter)
// under the secret-file rule: 0600 or stricter, owned by us or root.
func readSecretFile(what, path string) (string, error) {
	b, err := secretfile.Read("vault "+what, path, maxSecretFile)
	if err != nil {
		return "", err
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "", fmt.Errorf("%w: vault %s %s is empty", keystore.ErrConfig, what, path)
	}
	return string(b), nil
}

// jsonInt reads a number that Vault's JSON (decoded with UseNumber) holds.
func jsonInt(v any) (int64, error) {
	switch n := v.(type) {
	case json.Number:
		return n.Int64()
	case float64:
		return int64(n), nil
	case int:
		return int64(n), nil
	case int64:
		return n, nil
	}
	return 0, errors.New("not a number")
}

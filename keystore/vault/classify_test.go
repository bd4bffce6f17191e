package vault

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore"
)

func TestClassify(t *testing.T) {
	resp := func(status int, msg string) error {
		return fmt.Errorf("write: %w", &api.ResponseError{StatusCode: status, Errors: []string{msg}})
	}
	tests := []struct {
		name      string
		err       error
		want      error // from classify
		wantLogin error // from classifyLogin
	}{
		{"bad ciphertext", resp(400, "invalid ciphertext: unable to decrypt"), keystore.ErrInvalid, keystore.ErrPermission},
		{"version too old", resp(400, "ciphertext or signature version is disallowed by policy (too old)"), keystore.ErrKeyDisabled, keystore.ErrPermission},
		{"version too new", resp(400, "requested version for decryption version is too new"), keystore.ErrKeyNotFound, keystore.ErrPermission},
		{"no key", resp(404, ""), keystore.ErrKeyNotFound, keystore.ErrKeyNotFound},
		{"forbidden", resp(403, "permission denied"), keystore.ErrPermission, keystore.ErrPermission},
		{"throttled", resp(429, "rate limit quota exceeded"), keystore.ErrThrottled, keystore.ErrThrottled},
		{"standby behind", resp(412, ""), keystore.ErrUnavailable, keystore.ErrUnavailable},
		{"sealed", resp(503, "Vault is sealed"), keystore.ErrUnavailable, keystore.ErrUnavailable},
		{"no answer", errors.New("dial tcp: connection refused"), keystore.ErrUnavailable, keystore.ErrUnavailable},
		{"cancelled", fmt.Errorf("write: %w", context.Canceled), context.Canceled, context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.err); !errors.Is(got, tc.want) {
				t.Errorf("classify: got %v, want %v", got, tc.want)
			}
			if got := classifyLogin(tc.err); !errors.Is(got, tc.wantLogin) {
				t.Errorf("classifyLogin: got %v, want %v", got, tc.wantLogin)
			}
		})
	}
	// An HTTP status no class covers is classified as none (kms: Internal).
	for _, f := range []func(error) error{classify, classifyLogin} {
		got := f(resp(418, "teapot"))
		if got == nil || !strings.Contains(got.Error(), "HTTP 418") || errors.Is(got, keystore.ErrUnavailable) || errors.Is(got, keystore.ErrInvalid) {
			t.Errorf("HTTP 418: got %v", got)
		}
	}
}

// garbledTransit answers encrypt with something that is not a Transit
// ciphertext.
type garbledTransit struct {
	*fakeTransit
	ciphertext string
}

func (g garbledTransit) Write(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	if strings.Contains(path, "/encrypt/") {
		return &api.Secret{Data: map[string]any{"ciphertext": g.ciphertext}}, nil
	}
	return g.fakeTransit.Write(ctx, path, data)
}

// A malformed answer to encrypt is the keystore failing: ErrUnavailable,
// which kms answers as Unavailable, not a bare error (Internal).
func TestMalformedCiphertextClassified(t *testing.T) {
	ctx := context.Background()
	cfg, err := parseURI("hcvault://127.0.0.1:8200/transit/keys/kw?tls=off&token-file=" + writeToken(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, ct := range []string{"", "vault:v1:!!!!", "vault:v0:AAAA", "vault:v1:" + strings.Repeat("A", 8)} {
		f := &fakeTransit{created: map[int]int64{1: 1_700_000_000}, latest: 1}
		b := newBackend(cfg, garbledTransit{f, ct}, time.Now)
		if err := b.meta.Prime(ctx, b.fetch); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Wrap(ctx, []byte("k"), nil); !errors.Is(err, keystore.ErrUnavailable) {
			t.Errorf("Wrap answered with %q: got %v, want ErrUnavailable", ct, err)
		}
		if _, err := b.fetchAndProbe(ctx); !errors.Is(err, keystore.ErrUnavailable) || !strings.Contains(err.Error(), "health probe") {
			t.Errorf("KeyID's probe answered with %q: got %v, want a health probe ErrUnavailable", ct, err)
		}
	}
}

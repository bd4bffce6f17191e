//go:build !nopkcs11

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
)

// plantPublic creates, on tok, a public (CKA_PRIVATE false) AES-256 key
// whose value the planter knows, under label and with a valid keywarden
// CKA_ID, and a public primary pointer to it with a high seq: what someone
// without the PIN can do on a token that allows R/W public sessions. With
// login false the session never logs in; with login true it does, as a
// careless tool holding the PIN would, and still makes the objects public.
func plantPublic(t *testing.T, tok testToken, label string, login bool) []byte {
	t.Helper()
	id, err := newCKAID(time.Now().Add(time.Hour), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	known := bytes.Repeat([]byte{0x42}, 32)
	_, err = softhsm.mod.call(func(c *p11.Ctx) error {
		slots, err := c.GetSlotList(true)
		if err != nil {
			return err
		}
		for _, s := range slots {
			if ti, err := c.GetTokenInfo(s); err != nil || ti.Label != tok.label {
				continue
			}
			sh, err := c.OpenSession(s, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
			if err != nil {
				return fmt.Errorf("open a public R/W session: %w", err)
			}
			defer func() { _ = c.CloseSession(sh) }()
			if login {
				if err := c.Login(sh, p11.CKU_USER, testUserPIN); err != nil && err != p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN) {
					return fmt.Errorf("login: %w", err)
				}
			}
			if _, err := c.CreateObject(sh, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
				p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
				p11.NewAttribute(p11.CKA_VALUE, known),
				p11.NewAttribute(p11.CKA_TOKEN, true),
				p11.NewAttribute(p11.CKA_PRIVATE, false),
				p11.NewAttribute(p11.CKA_SENSITIVE, true),
				p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
				p11.NewAttribute(p11.CKA_ENCRYPT, true),
				p11.NewAttribute(p11.CKA_DECRYPT, true),
				p11.NewAttribute(p11.CKA_LABEL, label),
				p11.NewAttribute(p11.CKA_ID, id),
			}); err != nil {
				return fmt.Errorf("plant a public key: %w", err)
			}
			if _, err := c.CreateObject(sh, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
				p11.NewAttribute(p11.CKA_TOKEN, true),
				p11.NewAttribute(p11.CKA_PRIVATE, false),
				p11.NewAttribute(p11.CKA_LABEL, label),
				p11.NewAttribute(p11.CKA_APPLICATION, application),
				p11.NewAttribute(p11.CKA_VALUE, formatPointer(1<<40, id)),
			}); err != nil {
				return fmt.Errorf("plant a public pointer: %w", err)
			}
			return nil
		}
		return fmt.Errorf("token %q not found", tok.label)
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Public objects under our label, made without the PIN (or with it but
// public), are not ours: they never become a root key version or the
// primary, and Wrap never uses the planted key.
func TestPublicObjectsIgnored(t *testing.T) {
	for _, login := range []bool{false, true} {
		t.Run(fmt.Sprintf("login=%v", login), func(t *testing.T) {
			tok := newToken(t)
			ctx := context.Background()
			genuine, err := Init(ctx, tok.uri) // closes its sessions: logged out again
			if err != nil {
				t.Fatal(err)
			}
			planted := keyIDOf(plantPublic(t, tok, "root", login))
			b, err := Open(ctx, tok.uri)
			if err != nil {
				t.Fatalf("Open with planted public objects: %v", err)
			}
			defer b.Close()
			if kid, err := b.KeyID(ctx); err != nil || kid != genuine.KeyID {
				t.Fatalf("KeyID = %q, %v; want the genuine primary %q (planted %q)", kid, err, genuine.KeyID, planted)
			}
			w, err := b.Wrap(ctx, kek, nil)
			if err != nil || w.KeyID != genuine.KeyID {
				t.Fatalf("Wrap used %q, %v; want %q", w.KeyID, err, genuine.KeyID)
			}
			vs, err := b.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if slices.ContainsFunc(vs, func(v keystore.KeyVersion) bool { return v.KeyID == planted }) || len(vs) != 1 {
				t.Fatalf("List = %+v; want only %s", vs, genuine.KeyID)
			}
			if _, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: planted, Ciphertext: w.Ciphertext}, nil); err == nil {
				t.Fatal("Unwrap under the planted key's key_id succeeded")
			}
		})
	}
}

// ownObject is the read-side check for a module that ignores a search
// template: only an object that says it is both a token object and private
// passes; a missing or malformed attribute does not.
func TestOwnObject(t *testing.T) {
	yes, no := []byte{1}, []byte{0}
	tests := []struct {
		name           string
		token, private []byte
		want           bool
	}{
		{"private token object", yes, yes, true},
		{"public", yes, no, false},
		{"session object", no, yes, false},
		{"attributes missing", nil, nil, false},
		{"malformed", []byte{1, 0}, yes, false},
	}
	for _, tc := range tests {
		if got := ownObject(tc.token, tc.private); got != tc.want {
			t.Errorf("%s: ownObject = %v, want %v", tc.name, got, tc.want)
		}
	}
}

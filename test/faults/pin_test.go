//go:build !nopkcs11

package faults

import (
	"errors"
	"testing"

	p11 "github.com/miekg/pkcs11"
)

// setPIN changes a token's user PIN through this process's SoftHSM (already
// initialized by the keystore package: the second C_Initialize says so and
// is harmless; this context is never finalized).
func setPIN(t *testing.T, label, oldPIN, newPIN string) {
	t.Helper()
	c := p11.New(hsm.module)
	if c == nil {
		t.Fatalf("load %s", hsm.module)
	}
	if err := c.Initialize(); err != nil && !errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatalf("C_Initialize: %v", err)
	}
	slots, err := c.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil || ti.Label != label {
			continue
		}
		sh, err := c.OpenSession(s, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			t.Fatalf("C_OpenSession: %v", err)
		}
		defer func() { _ = c.CloseSession(sh) }()
		if err := c.Login(sh, p11.CKU_USER, oldPIN); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
			t.Fatalf("C_Login: %v", err)
		}
		if err := c.SetPIN(sh, oldPIN, newPIN); err != nil {
			t.Fatalf("C_SetPIN: %v", err)
		}
		return
	}
	t.Fatalf("no token %q", label)
}

//go:build nopkcs11

package faults

import "testing"

// setPIN needs the PKCS#11 library binding, which a nopkcs11 build leaves
// out (as it leaves out the pkcs11 keystore the matrix would test).
func setPIN(t *testing.T, _, _, _ string) {
	t.Helper()
	t.Fatal("built with nopkcs11: no PKCS#11")
}

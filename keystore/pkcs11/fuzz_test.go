//go:build !nopkcs11

package pkcs11

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore"
)

// FuzzParseURI: no URI panics, every refusal is ErrConfig and never shows
// a pin-value, no URI with a pin-value is accepted, and an accepted URI
// selects a token and a key label in an existing module given by absolute
// path, with a way to get the PIN.
func FuzzParseURI(f *testing.F) {
	dir := f.TempDir()
	mod := filepath.Join(dir, "module.so")
	pin := filepath.Join(dir, "pin")
	for _, p := range []string{mod, pin} {
		if err := os.WriteFile(p, []byte("1234\n"), 0o600); err != nil {
			f.Fatal(err)
		}
	}
	for _, s := range []string{
		"pkcs11:token=kw;object=root?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:token=kw;object=root?module-path=" + mod + "&pin-value=1234",
		"pkcs11:token=kw;object=root?module-path=" + mod + "&pin-source=" + pin,
		"pkcs11:token=kw;object=root?module-path=" + mod + "&pin-source=file:pin",
		"pkcs11:serial=abc;object=root?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:slot-id=0;object=root?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:token=kw;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;object=root?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:token=my%20token;object=root%2f1?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:token=kw;object=root;type=secret-key?module-path=" + mod + "&pin-source=file:" + pin,
		"file:///x",
		"pkcs11:",
		"pkcs11:token=kw?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:token=kw;object=root;id=%01?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:object=root?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:token=kw;object=root?pin-value=1234",
		"pkcs11:token=kw;object=root?module-path=lib.so&pin-value=1234",
		"pkcs11:token=kw;object=root?module-path=/nonexistent/lib.so&pin-value=1234",
		"pkcs11:token=kw;object=root?module-path=" + dir + "&pin-source=file:" + pin,
		"pkcs11:token=kw;object=root?module-path=" + mod,
		"pkcs11:token=kw;object=root?module-path=" + mod + "&pin-value=1234&pin-source=file:" + pin,
		"pkcs11:token=kw;slot-id=x;object=root?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:token=kw;slot-id=-1;object=root?module-path=" + mod + "&pin-source=file:" + pin,
		"pkcs11:token=kw;object=root;junk?module-path=" + mod + "&pin-value=s3cr3t-pin",
		"pkcs11:token=kw;object=r%zzoot?module-path=" + mod + "&pin-value=s3cr3t-pin",
	} {
		f.Add(s)
	}
	// marker stands for a PIN: no seed holds it, so only the copy appended
	// below can put it in an error.
	const marker = "Pq7xPINzz"
	f.Fuzz(func(t *testing.T, s string) {
		if strings.Contains(s, marker) {
			return
		}
		checkParseURI(t, s)
		sep := "?"
		if strings.Contains(s, "?") {
			sep = "&"
		}
		_, err := parseURI(s + sep + "pin-value=" + marker)
		if err == nil {
			t.Fatalf("%q with a pin-value was accepted", s)
		}
		if strings.Contains(err.Error(), marker) {
			t.Fatalf("error %q shows the pin-value", err)
		}
	})
}

func checkParseURI(t *testing.T, s string) {
	c, err := parseURI(s)
	if err != nil {
		if !errors.Is(err, keystore.ErrConfig) {
			t.Fatalf("refusal %v is not ErrConfig", err)
		}
		return
	}
	if c.label == "" || (c.token.label == "" && c.token.serial == "" && c.token.slotID == nil) || c.pin == nil {
		t.Fatalf("%q: accepted %+v", s, c)
	}
	if fi, err := os.Stat(c.module); !filepath.IsAbs(c.module) || err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("%q: module %q (%v)", s, c.module, err)
	}
}

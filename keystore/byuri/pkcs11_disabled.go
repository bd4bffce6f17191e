//go:build nopkcs11

package byuri

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/keystore"
)

// hasPKCS11 reports whether this build has the backend.
const hasPKCS11 = false

var errNoPKCS11 = fmt.Errorf("%w: this build has no PKCS#11 support (built with -tags nopkcs11); use a keywarden binary built with cgo and without that tag", keystore.ErrConfig)

func openPKCS11(context.Context, string) (keystore.Backend, error) {
	return nil, errNoPKCS11
}

func initPKCS11(context.Context, string) (keystore.KeyVersion, error) {
	return keystore.KeyVersion{}, errNoPKCS11
}

func checkPKCS11(string) error { return errNoPKCS11 }

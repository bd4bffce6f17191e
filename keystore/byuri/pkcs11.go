//go:build !nopkcs11

package byuri

import (
	"context"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/pkcs11"
)

// hasPKCS11 reports whether this build has the backend.
const hasPKCS11 = true

func openPKCS11(ctx context.Context, uri string) (keystore.Backend, error) {
	b, err := pkcs11.Open(ctx, uri)
	if err != nil {
		return nil, err // not a nil *pkcs11.Backend inside a non-nil interface
	}
	return b, nil
}

func initPKCS11(ctx context.Context, uri string) (keystore.KeyVersion, error) {
	return pkcs11.Init(ctx, uri)
}

func checkPKCS11(uri string) error { return pkcs11.CheckURI(uri) }

//go:build !nopkcs11

package byuri

import (
	"context"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/pkcs11"
)

func openPKCS11(ctx context.Context, uri string) (keystore.Backend, error) {
	b, err := pkcs11.Open(ctx, uri)
	if err != nil {
		return nil, err // not a nil *pkcs11.Backend inside a non-nil interface
	}
	return b, nil
}

// InitPKCS11 creates the first root key version on the token a pkcs11: URI
// names (kmsctl keys init). It lives here so that callers need not import
// the cgo package, which a nopkcs11 build leaves out.
func InitPKCS11(ctx context.Context, uri string) (keystore.KeyVersion, error) {
	return pkcs11.Init(ctx, uri)
}

//go:build !novault

package byuri

import (
	"context"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/vault"
)

// hasVault reports whether this build has the backend.
const hasVault = true

func openVault(ctx context.Context, uri string) (keystore.Backend, error) {
	b, err := vault.Open(ctx, uri)
	if err != nil {
		return nil, err // not a nil *vault.Backend inside a non-nil interface
	}
	return b, nil
}

func checkVault(uri string) error { return vault.CheckURI(uri) }

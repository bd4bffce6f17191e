//go:build novault

package byuri

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/keystore"
)

// hasVault reports whether this build has the backend.
const hasVault = false

func openVault(context.Context, string) (keystore.Backend, error) {
	return nil, fmt.Errorf("%w: this keywarden was built without Vault/OpenBao Transit support (-tags novault); use a build without that tag", keystore.ErrConfig)
}

func checkVault(uri string) error {
	_, err := openVault(context.Background(), uri)
	return err
}

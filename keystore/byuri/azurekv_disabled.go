//go:build noazure

package byuri

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/keystore"
)

// hasAzure reports whether this build has the backend.
const hasAzure = false

func openAzure(context.Context, string) (keystore.Backend, error) {
	return nil, fmt.Errorf("%w: this keywarden was built without Azure Key Vault support (-tags noazure); use a build without that tag", keystore.ErrConfig)
}

func checkAzure(uri string) error {
	_, err := openAzure(context.Background(), uri)
	return err
}

//go:build nogcp

package byuri

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/keystore"
)

// hasGCP reports whether this build has the backend.
const hasGCP = false

func openGCP(context.Context, string) (keystore.Backend, error) {
	return nil, fmt.Errorf("%w: this keywarden was built without Google Cloud KMS support (-tags nogcp); use a build without that tag", keystore.ErrConfig)
}

func checkGCP(uri string) error {
	_, err := openGCP(context.Background(), uri)
	return err
}

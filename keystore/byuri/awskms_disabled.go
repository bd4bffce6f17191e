//go:build noaws

package byuri

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/keystore"
)

// hasAWS reports whether this build has the backend.
const hasAWS = false

func openAWS(context.Context, string) (keystore.Backend, error) {
	return nil, fmt.Errorf("%w: this keywarden was built without AWS KMS support (-tags noaws); use a build without that tag", keystore.ErrConfig)
}

func checkAWS(uri string) error {
	_, err := openAWS(context.Background(), uri)
	return err
}

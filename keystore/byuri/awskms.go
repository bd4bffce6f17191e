//go:build !noaws

package byuri

import (
	"context"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/awskms"
)

// hasAWS reports whether this build has the backend.
const hasAWS = true

func openAWS(ctx context.Context, uri string) (keystore.Backend, error) {
	b, err := awskms.Open(ctx, uri)
	if err != nil {
		return nil, err // not a nil *awskms.Backend inside a non-nil interface
	}
	return b, nil
}

func checkAWS(uri string) error { return awskms.CheckURI(uri) }

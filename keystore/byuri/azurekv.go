//go:build !noazure

package byuri

import (
	"context"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/azurekv"
)

// hasAzure reports whether this build has the backend.
const hasAzure = true

func openAzure(ctx context.Context, uri string) (keystore.Backend, error) {
	b, err := azurekv.Open(ctx, uri)
	if err != nil {
		return nil, err // not a nil *azurekv.Backend inside a non-nil interface
	}
	return b, nil
}

func checkAzure(uri string) error { return azurekv.CheckURI(uri) }

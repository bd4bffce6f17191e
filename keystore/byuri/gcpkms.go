//go:build !nogcp

package byuri

import (
	"context"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/gcpkms"
)

// hasGCP reports whether this build has the backend.
const hasGCP = true

func openGCP(ctx context.Context, uri string) (keystore.Backend, error) {
	b, err := gcpkms.Open(ctx, uri)
	if err != nil {
		return nil, err // not a nil *gcpkms.Backend inside a non-nil interface
	}
	return b, nil
}

func checkGCP(uri string) error { return gcpkms.CheckURI(uri) }

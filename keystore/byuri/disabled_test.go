package byuri

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore"
)

// Whatever backends this build has, a cloud URI never gets "unknown
// scheme": it opens (and fails for want of a reachable service or
// credentials) or says which build tag left the backend out.
func TestCloudSchemesKnown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		uri   string
		built bool
	}{
		{schemeAwskms + "://arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?endpoint=http://127.0.0.1:1", hasAWS},
		{schemeGcpkms + "://projects/p/locations/l/keyRings/r/cryptoKeys/k", hasGCP},
		{schemeAzurekv + "://v.vault.azure.net/keys/k", hasAzure},
		{schemeVault + "://127.0.0.1:1/transit/keys/k", hasVault},
	} {
		uri := c.uri
		b, err := Open(ctx, uri)
		if err == nil {
			_ = b.Close()
			if !c.built {
				t.Errorf("%s opened in a build without its backend", uri)
			}
			continue
		}
		if strings.Contains(err.Error(), "unknown keystore scheme") {
			t.Errorf("%s: %v", uri, err)
		}
		left := strings.Contains(err.Error(), "built without")
		if left == c.built || (left && !errors.Is(err, keystore.ErrConfig)) {
			t.Errorf("%s (backend in this build: %v): %v", uri, c.built, err)
		}
	}
}

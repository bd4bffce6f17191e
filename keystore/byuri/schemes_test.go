//go:build !noaws && !nogcp && !noazure && !novault

package byuri

import (
	"testing"

	"github.com/keywarden/keywarden/keystore/awskms"
	"github.com/keywarden/keywarden/keystore/azurekv"
	"github.com/keywarden/keywarden/keystore/gcpkms"
	"github.com/keywarden/keywarden/keystore/vault"
)

// byuri names the cloud schemes itself, so that a build without a backend
// still recognises its URIs; they must be the backends' own.
func TestSchemes(t *testing.T) {
	for _, c := range []struct{ ours, theirs string }{
		{schemeAwskms, awskms.Scheme}, {schemeGcpkms, gcpkms.Scheme},
		{schemeAzurekv, azurekv.Scheme}, {schemeVault, vault.Scheme},
	} {
		if c.ours != c.theirs {
			t.Errorf("byuri names scheme %q, the backend %q", c.ours, c.theirs)
		}
	}
}

package byuri

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/keystore"
)

// openPKCS11 is replaced by the pkcs11 backend when it lands.
func openPKCS11(_ context.Context, _ string) (keystore.Backend, error) {
	return nil, fmt.Errorf("%w: this build has no PKCS#11 support", keystore.ErrConfig)
}

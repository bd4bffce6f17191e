package byuri

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/keystore"
)

// initPKCS11 is replaced by the pkcs11 backend's Init when it lands.
func initPKCS11(_ context.Context, _ string) (keystore.KeyVersion, error) {
	return keystore.KeyVersion{}, fmt.Errorf("%w: this build has no PKCS#11 support", keystore.ErrConfig)
}

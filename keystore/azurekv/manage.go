package azurekv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/keywarden/keywarden/keystore"
)

// Key Vault versions belong to one key name that every node shares, and
// keywarden wraps with the newest enabled version. So, as with Vault
// Transit (docs/keystores/azure.md):
//
//   - Add creates a new version (same type and size) and it is primary at
//     once; Promote only accepts the version already in use.
//   - Disable and Enable set the version's enabled attribute.
//   - Destroy is not possible: Key Vault deletes whole keys, never one
//     version. A disabled version is the end state.

// List implements keystore.Manager.
func (b *Backend) List(ctx context.Context) ([]keystore.KeyVersion, error) {
	cur, err := b.cur.Update(ctx, b.resolve)
	if err != nil && !errors.Is(err, keystore.ErrKeyDisabled) {
		return nil, err
	}
	all, err := b.versions(ctx)
	if err != nil {
		return nil, err
	}
	var out []keystore.KeyVersion
	for _, kp := range all {
		v := keystore.KeyVersion{KeyID: string(*kp.KID), State: keystore.KeyEnabled, Primary: string(*kp.KID) == cur.kid}
		if !usable(kp.Attributes, time.Now()) {
			v.State = keystore.KeyDisabled
		}
		if kp.Attributes != nil && kp.Attributes.Created != nil {
			v.Created = kp.Attributes.Created.UTC()
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b keystore.KeyVersion) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// Add implements keystore.Manager with a new version of the same type and
// size. Unlike the interface's general contract, it is primary at once (it is
// the newest enabled version), unless the URI pins a version. Not retried:
// a retry after a lost answer would make a second version.
func (b *Backend) Add(ctx context.Context) (keystore.KeyVersion, error) {
	c, err := b.cur.Update(ctx, b.resolve)
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	params := azkeys.CreateKeyParameters{
		Kty:    &c.kty,
		KeyOps: []*azkeys.KeyOperation{ptr(azkeys.KeyOperationWrapKey), ptr(azkeys.KeyOperationUnwrapKey)},
	}
	switch c.kty {
	case azkeys.KeyTypeRSA, azkeys.KeyTypeRSAHSM:
		bits := c.rsaBits
		if bits == 0 {
			bits = 3072
		}
		params.KeySize = ptr(bits)
	case azkeys.KeyTypeOctHSM:
		params.KeySize = ptr(int32(256))
	}
	var res azkeys.CreateKeyResponse
	err = b.call(ctx, false, "createKey", func(ctx context.Context) (err error) {
		res, err = b.kv.CreateKey(ctx, b.cfg.name, params, nil)
		return err
	})
	b.cur.Invalidate()
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	v := keystore.KeyVersion{KeyID: kidString(res.Key.KID), State: keystore.KeyEnabled, Primary: b.cfg.version == ""}
	if res.Attributes != nil && res.Attributes.Created != nil {
		v.Created = res.Attributes.Created.UTC()
	}
	return v, nil
}

// Promote implements keystore.Manager: only the version already in use is
// accepted.
func (b *Backend) Promote(ctx context.Context, keyID string) error {
	if _, err := b.versionOf(keyID); err != nil {
		return err
	}
	c, err := b.cur.Update(ctx, b.resolve)
	if err != nil {
		return err
	}
	if c.kid != keyID {
		return fmt.Errorf("%w: key vault wraps with the newest enabled version (%s); disable the newer versions, or pin the version in the URI", errors.ErrUnsupported, c.kid)
	}
	return nil
}

// Disable implements keystore.Manager. The version in use cannot be
// disabled.
func (b *Backend) Disable(ctx context.Context, keyID string) error {
	c, err := b.cur.Update(ctx, b.resolve)
	if err != nil {
		return err
	}
	if c.kid == keyID {
		return fmt.Errorf("%w: %s is primary; add a newer version first", keystore.ErrInvalid, keyID)
	}
	return b.setEnabled(ctx, keyID, false)
}

// Enable implements keystore.Manager. Enabling a version newer than the one
// in use makes it primary.
func (b *Backend) Enable(ctx context.Context, keyID string) error {
	return b.setEnabled(ctx, keyID, true)
}

func (b *Backend) setEnabled(ctx context.Context, keyID string, on bool) error {
	v, err := b.versionOf(keyID)
	if err != nil {
		return err
	}
	err = b.call(ctx, true, "updateKey", func(ctx context.Context) error {
		_, err := b.kv.UpdateKey(ctx, b.cfg.name, v, azkeys.UpdateKeyParameters{KeyAttributes: &azkeys.KeyAttributes{Enabled: &on}}, nil)
		return err
	})
	b.cur.Invalidate()
	return err
}

// Destroy implements keystore.Manager: Key Vault cannot delete one version.
func (b *Backend) Destroy(context.Context, string) error {
	return fmt.Errorf("%w: key vault deletes whole keys, never one version; leave the version disabled (purge protection keeps deleted keys recoverable anyway)", errors.ErrUnsupported)
}

func ptr[T any](v T) *T { return &v }

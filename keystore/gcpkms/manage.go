package gcpkms

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/iterator"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/keywarden/keywarden/keystore"
)

// List implements keystore.Manager.
func (b *Backend) List(ctx context.Context) ([]keystore.KeyVersion, error) {
	primary, err := b.primary.Update(ctx, b.getPrimary)
	if err != nil && !errors.Is(err, keystore.ErrKeyDisabled) {
		return nil, err
	}
	var out []keystore.KeyVersion
	err = b.call(ctx, true, "list versions", func(ctx context.Context) error {
		out = out[:0]
		it := b.kms.ListCryptoKeyVersions(ctx, &kmspb.ListCryptoKeyVersionsRequest{Parent: b.cfg.key})
		for {
			v, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return nil
			}
			if err != nil {
				return err
			}
			out = append(out, keystore.KeyVersion{
				KeyID:   v.GetName(),
				State:   state(v.GetState()),
				Primary: v.GetName() == primary,
				Created: v.GetCreateTime().AsTime(),
			})
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func state(s kmspb.CryptoKeyVersion_CryptoKeyVersionState) keystore.KeyState {
	switch s {
	case kmspb.CryptoKeyVersion_ENABLED:
		return keystore.KeyEnabled
	case kmspb.CryptoKeyVersion_DESTROYED, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED:
		return keystore.KeyDestroyed
	default: // disabled, or not usable yet (pending generation or import)
		return keystore.KeyDisabled
	}
}

// Add implements keystore.Manager: a new version, not primary. It is not
// retried: a retry after a lost answer would make a second version.
func (b *Backend) Add(ctx context.Context) (keystore.KeyVersion, error) {
	var v *kmspb.CryptoKeyVersion
	err := b.call(ctx, false, "create version", func(ctx context.Context) (err error) {
		v, err = b.kms.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: b.cfg.key, CryptoKeyVersion: &kmspb.CryptoKeyVersion{}})
		return err
	})
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	return keystore.KeyVersion{KeyID: v.GetName(), State: state(v.GetState()), Created: v.GetCreateTime().AsTime()}, nil
}

// Promote implements keystore.Manager: UpdateCryptoKeyPrimaryVersion.
func (b *Backend) Promote(ctx context.Context, keyID string) error {
	id, err := b.versionID(keyID)
	if err != nil {
		return err
	}
	err = b.call(ctx, true, "set primary", func(ctx context.Context) error {
		_, err := b.kms.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: b.cfg.key, CryptoKeyVersionId: id})
		return err
	})
	b.primary.Invalidate()
	return err
}

// Disable implements keystore.Manager. The primary version cannot be
// disabled.
func (b *Backend) Disable(ctx context.Context, keyID string) error {
	return b.setState(ctx, keyID, kmspb.CryptoKeyVersion_DISABLED)
}

// Enable implements keystore.Manager.
func (b *Backend) Enable(ctx context.Context, keyID string) error {
	return b.setState(ctx, keyID, kmspb.CryptoKeyVersion_ENABLED)
}

func (b *Backend) setState(ctx context.Context, keyID string, s kmspb.CryptoKeyVersion_CryptoKeyVersionState) error {
	if _, err := b.versionID(keyID); err != nil {
		return err
	}
	if s != kmspb.CryptoKeyVersion_ENABLED {
		primary, err := b.primary.Update(ctx, b.getPrimary)
		if err != nil {
			return err
		}
		if primary == keyID {
			return fmt.Errorf("%w: %s is primary; promote another version first", keystore.ErrInvalid, keyID)
		}
	}
	return b.call(ctx, true, "update version", func(ctx context.Context) error {
		_, err := b.kms.UpdateCryptoKeyVersion(ctx, &kmspb.UpdateCryptoKeyVersionRequest{
			CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: keyID, State: s},
			UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}},
		})
		return err
	})
}

// Destroy implements keystore.Manager: DestroyCryptoKeyVersion, which Cloud
// KMS carries out after the key's destroy-scheduled duration (24 h by
// default; RestoreCryptoKeyVersion undoes it until then). Only a disabled
// version may be destroyed.
func (b *Backend) Destroy(ctx context.Context, keyID string) error {
	if _, err := b.versionID(keyID); err != nil {
		return err
	}
	vs, err := b.List(ctx)
	if err != nil {
		return err
	}
	for _, v := range vs {
		if v.KeyID != keyID {
			continue
		}
		if v.State != keystore.KeyDisabled || v.Primary {
			return fmt.Errorf("%w: %s is %s; disable it first", keystore.ErrInvalid, keyID, v.State)
		}
		return b.call(ctx, false, "destroy version", func(ctx context.Context) error {
			_, err := b.kms.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: keyID})
			return err
		})
	}
	return fmt.Errorf("%w: %s", keystore.ErrKeyNotFound, keyID)
}

func (b *Backend) versionID(keyID string) (string, error) {
	suffix, ok := strings.CutPrefix(keyID, b.cfg.key)
	if !ok || !versionSuffix.MatchString(suffix) {
		return "", fmt.Errorf("%w: %q is not a version of %s", keystore.ErrKeyNotFound, keyID, b.cfg.key)
	}
	return strings.TrimPrefix(suffix, "/cryptoKeyVersions/"), nil
}

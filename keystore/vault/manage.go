package vault

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

// Vault Transit keeps every version of one named key in one place that all
// keywarden instances share, and always encrypts with the latest version. So
// its management differs from the file and PKCS#11 keystores in two ways
// (docs/keystores/vault.md):
//
//   - Add is Transit's rotate: the new version is primary at once, on every
//     node, and Promote only accepts the version that is already latest.
//   - Disable and Enable move min_decryption_version, and Destroy trims with
//     min_available_version, so versions retire oldest first.

// List implements keystore.Manager.
func (b *Backend) List(ctx context.Context) ([]keystore.KeyVersion, error) {
	m, err := b.refreshMeta(ctx)
	if err != nil {
		return nil, err
	}
	// Transit reports creation times only for versions it keeps loaded
	// (from min_decryption_version on); older ones are listed without.
	var out []keystore.KeyVersion
	for v := max(m.minAvail, 1); v <= m.latest; v++ {
		kv := keystore.KeyVersion{KeyID: b.keyID(m, v), State: keystore.KeyEnabled, Primary: v == m.latest}
		if v < m.minDec {
			kv.State = keystore.KeyDisabled
		}
		if t, ok := m.created[v]; ok {
			kv.Created = time.Unix(t, 0).UTC()
		}
		out = append(out, kv)
	}
	return out, nil
}

// Add implements keystore.Manager with Transit's rotate. Unlike the
// interface's general contract, the new version is primary at once: Vault
// encrypts with the latest version and has no way to hold one back.
func (b *Backend) Add(ctx context.Context) (keystore.KeyVersion, error) {
	// Rotate is not idempotent: a retry could rotate twice. Run it once.
	err := b.call(ctx, false, "rotate", func(ctx context.Context) error {
		_, err := b.api.Write(ctx, b.cfg.mount+"/keys/"+b.cfg.name+"/rotate", nil)
		return err
	})
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	m, err := b.refreshMeta(ctx)
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	return keystore.KeyVersion{KeyID: b.keyID(m, m.latest), State: keystore.KeyEnabled, Primary: true, Created: time.Unix(m.created[m.latest], 0).UTC()}, nil
}

// Promote implements keystore.Manager. Only the latest version can be
// primary in Transit; promoting it is a no-op, anything else is refused.
func (b *Backend) Promote(ctx context.Context, keyID string) error {
	v, m, err := b.version(ctx, keyID)
	if err != nil {
		return err
	}
	if v != m.latest {
		return fmt.Errorf("%w: vault transit always encrypts with the latest version (v%d); v%d cannot be made primary again: `kmsctl keys add` rotates to a new one", errors.ErrUnsupported, m.latest, v)
	}
	return nil
}

// Disable implements keystore.Manager by raising min_decryption_version past
// v, which must be the oldest enabled version and not the latest.
func (b *Backend) Disable(ctx context.Context, keyID string) error {
	v, m, err := b.version(ctx, keyID)
	if err != nil {
		return err
	}
	minDec := max(m.minDec, 1)
	switch {
	case v == m.latest:
		return fmt.Errorf("%w: v%d is primary; rotate first (kmsctl keys add)", keystore.ErrInvalid, v)
	case v < minDec:
		return nil // already disabled
	case v > minDec:
		return fmt.Errorf("%w: vault disables versions oldest first (through min_decryption_version): disable v%d first", keystore.ErrInvalid, minDec)
	}
	return b.setMinDecryption(ctx, v+1)
}

// Enable implements keystore.Manager by lowering min_decryption_version to
// v, which must be the newest disabled version.
func (b *Backend) Enable(ctx context.Context, keyID string) error {
	v, m, err := b.version(ctx, keyID)
	if err != nil {
		return err
	}
	minDec := max(m.minDec, 1)
	switch {
	case v >= minDec:
		return nil // already enabled
	case v != minDec-1:
		return fmt.Errorf("%w: vault enables versions newest first (through min_decryption_version): enable v%d first", keystore.ErrInvalid, minDec-1)
	}
	return b.setMinDecryption(ctx, v)
}

// Destroy implements keystore.Manager by trimming the key to versions after
// v: the oldest remaining version, already disabled.
func (b *Backend) Destroy(ctx context.Context, keyID string) error {
	v, m, err := b.version(ctx, keyID)
	if err != nil {
		return err
	}
	minAvail := max(m.minAvail, 1)
	switch {
	case v >= max(m.minDec, 1):
		return fmt.Errorf("%w: v%d is enabled; disable it first", keystore.ErrInvalid, v)
	case v != minAvail:
		return fmt.Errorf("%w: vault destroys versions oldest first (trim): destroy v%d first", keystore.ErrInvalid, minAvail)
	}
	// Transit trims only below min_encryption_version. Encrypt always uses
	// the latest version anyway, so raising it past v changes nothing else.
	if m.minEnc < v+1 {
		err := b.call(ctx, true, "config", func(ctx context.Context) error {
			_, err := b.api.Write(ctx, b.cfg.mount+"/keys/"+b.cfg.name+"/config", map[string]any{"min_encryption_version": v + 1})
			return err
		})
		if err != nil {
			return err
		}
	}
	err = b.call(ctx, false, "trim", func(ctx context.Context) error {
		_, err := b.api.Write(ctx, b.cfg.mount+"/keys/"+b.cfg.name+"/trim", map[string]any{"min_available_version": v + 1})
		return err
	})
	b.meta.Invalidate()
	return err
}

func (b *Backend) setMinDecryption(ctx context.Context, v int) error {
	err := b.call(ctx, true, "config", func(ctx context.Context) error {
		_, err := b.api.Write(ctx, b.cfg.mount+"/keys/"+b.cfg.name+"/config", map[string]any{"min_decryption_version": v})
		return err
	})
	b.meta.Invalidate()
	return err
}

// version resolves a key_id of this key, in either form, against fresh
// metadata.
func (b *Backend) version(ctx context.Context, keyID string) (int, *keyMeta, error) {
	v, created, tagged, err := b.parseKeyID(keyID)
	if err != nil {
		return 0, nil, err
	}
	m, err := b.refreshMeta(ctx)
	if err != nil {
		return 0, nil, err
	}
	if err := b.checkCreated(m, keyID, v, created, tagged); err != nil {
		return 0, nil, err
	}
	if v > m.latest || v < max(m.minAvail, 1) {
		return 0, nil, fmt.Errorf("%w: vault key %s has no version %d (versions %d..%d)", keystore.ErrKeyNotFound, b.cfg.name, v, max(m.minAvail, 1), m.latest)
	}
	return v, m, nil
}

package file

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/keywarden/keywarden/internal/atomicfile"
	"github.com/keywarden/keywarden/keystore"
)

// lock takes an exclusive advisory lock beside the keyset so that two kmsctl
// runs on one node cannot interleave their read-modify-write cycles.
//
// The lock file must stay openable by everyone allowed to edit the keyset:
// root and the keyset's owner, keywarden's user. A lock file a root run made
// would be root's and 0600, and every later run as keywarden's user would
// fail to open it (issue 12). So a run as root hands the lock file to the
// owner of the keyset's directory (which the tmpfiles entry gives to
// keywarden's user), and a run that cannot open it says which file to chown.
func lock(path string) (func(), error) {
	lp := path + ".lock"
	f, err := os.OpenFile(lp, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: open lock file: %v%s", keystore.ErrUnavailable, pathErr(err), lockOwnerHint(lp, err))
	}
	if os.Geteuid() == 0 {
		giveToDirOwner(f, filepath.Dir(path))
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("%w: lock keyset: %v", keystore.ErrUnavailable, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}

// giveToDirOwner chowns the open lock file f to the owner of dir, if it is
// not already theirs. Best effort: if it fails, a later run as that user
// gets lockOwnerHint's error, which names the fix.
func giveToDirOwner(f *os.File, dir string) {
	dst, err := os.Stat(dir)
	if err != nil {
		return
	}
	fst, err := f.Stat()
	if err != nil {
		return
	}
	d, ok1 := dst.Sys().(*syscall.Stat_t)
	l, ok2 := fst.Sys().(*syscall.Stat_t)
	if !ok1 || !ok2 || (d.Uid == l.Uid && d.Gid == l.Gid) {
		return
	}
	_ = f.Chown(int(d.Uid), int(d.Gid))
}

// lockOwnerHint explains a lock file this user may not open: one an older
// kmsctl, run as root, left behind.
func lockOwnerHint(lp string, err error) string {
	if !errors.Is(err, fs.ErrPermission) {
		return ""
	}
	st, serr := os.Stat(lp)
	if serr != nil {
		return ""
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok && int(s.Uid) != os.Geteuid() {
		return fmt.Sprintf(" (owned by uid %d, not this user, uid %d: a kmsctl run as root made it; chown it to the keyset's owner, e.g. chown 65532:65532 %s)", s.Uid, os.Geteuid(), lp)
	}
	return ""
}

// modify runs fn on a manager over the keyset as it is on disk now, writes
// the result atomically and reloads it into b.
func (b *Backend) modify(ctx context.Context, fn func(m *keyset.Manager, ks *loaded) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	unlock, err := lock(b.path)
	if err != nil {
		return err
	}
	defer unlock()
	// Under the lock no other write is in flight: clear what a write killed
	// midway left behind (a temp file may hold an older copy of the keyset).
	_ = atomicfile.RemoveTemps(b.path)
	h, _, err := readHandle(b.path)
	if err != nil {
		return err
	}
	ks, err := parse(h)
	if err != nil {
		return err
	}
	m := keyset.NewManagerFromHandle(h)
	if err := fn(m, ks); err != nil {
		return err
	}
	nh, err := m.Handle()
	if err != nil {
		return fmt.Errorf("build keyset: %w", err)
	}
	if _, err := parse(nh); err != nil {
		return err
	}
	if err := write(b.path, nh); err != nil {
		return err
	}
	_, err = b.refresh()
	return err
}

func (ks *loaded) find(keyID string) (version, error) {
	v, ok := ks.byKeyID[keyID]
	if !ok {
		return version{}, fmt.Errorf("%w: no version %q in keyset", keystore.ErrKeyNotFound, short(keyID))
	}
	return v, nil
}

// List implements keystore.Manager. Tink keysets carry no creation time, so
// Created is left zero.
func (b *Backend) List(ctx context.Context) ([]keystore.KeyVersion, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ks, err := b.refresh()
	if err != nil {
		return nil, err
	}
	out := make([]keystore.KeyVersion, 0, len(ks.versions))
	for _, v := range ks.versions {
		out = append(out, keystore.KeyVersion{KeyID: v.keyID, State: state(v.status), Primary: v.keyID == ks.primary})
	}
	return out, nil
}

func state(s keyset.KeyStatus) keystore.KeyState {
	switch s {
	case keyset.Enabled:
		return keystore.KeyEnabled
	case keyset.Disabled:
		return keystore.KeyDisabled
	default:
		return keystore.KeyDestroyed
	}
}

// Add implements keystore.Manager.
func (b *Backend) Add(ctx context.Context) (keystore.KeyVersion, error) {
	var added keystore.KeyVersion
	var before map[string]bool
	err := b.modify(ctx, func(m *keyset.Manager, ks *loaded) error {
		before = make(map[string]bool, len(ks.versions))
		for _, v := range ks.versions {
			before[v.keyID] = true
		}
		if _, err := m.Add(aead.AES256GCMKeyTemplate()); err != nil {
			return fmt.Errorf("add key version: %w", err)
		}
		return nil
	})
	if err != nil {
		return added, err
	}
	for _, v := range b.current().versions {
		if !before[v.keyID] {
			added = keystore.KeyVersion{KeyID: v.keyID, State: state(v.status)}
		}
	}
	return added, nil
}

// Promote implements keystore.Manager.
func (b *Backend) Promote(ctx context.Context, keyID string) error {
	return b.modify(ctx, func(m *keyset.Manager, ks *loaded) error {
		v, err := ks.find(keyID)
		if err != nil {
			return err
		}
		if v.status != keyset.Enabled {
			return fmt.Errorf("%w: cannot promote %q: it is %s", keystore.ErrKeyDisabled, keyID, state(v.status))
		}
		return m.SetPrimary(v.tinkID)
	})
}

// Disable implements keystore.Manager.
func (b *Backend) Disable(ctx context.Context, keyID string) error {
	return b.modify(ctx, func(m *keyset.Manager, ks *loaded) error {
		v, err := ks.find(keyID)
		if err != nil {
			return err
		}
		if keyID == ks.primary {
			return fmt.Errorf("%w: cannot disable the primary version %q; promote another first", keystore.ErrConfig, keyID)
		}
		return m.Disable(v.tinkID)
	})
}

// Enable implements keystore.Manager.
func (b *Backend) Enable(ctx context.Context, keyID string) error {
	return b.modify(ctx, func(m *keyset.Manager, ks *loaded) error {
		v, err := ks.find(keyID)
		if err != nil {
			return err
		}
		return m.Enable(v.tinkID)
	})
}

// Destroy implements keystore.Manager: the version's material is removed from
// the keyset. Only a disabled, non-primary version can be destroyed.
func (b *Backend) Destroy(ctx context.Context, keyID string) error {
	return b.modify(ctx, func(m *keyset.Manager, ks *loaded) error {
		v, err := ks.find(keyID)
		if err != nil {
			return err
		}
		if keyID == ks.primary {
			return fmt.Errorf("%w: cannot destroy the primary version %q", keystore.ErrConfig, keyID)
		}
		if v.status != keyset.Disabled {
			return fmt.Errorf("%w: disable %q before destroying it", keystore.ErrConfig, keyID)
		}
		return m.Delete(v.tinkID)
	})
}

// Import implements keystore.Importer: it copies version keyID, key
// material and Tink ID alike, from src, another file keystore, into b's
// keyset, enabled and not primary: how one control-plane node's keyset
// gets the version another node's added, so that both can decrypt what
// either writes once it is promoted. The copy has the same key ID (the ID
// fingerprints the key). Importing a version b already has changes nothing;
// a different key under the same Tink ID is refused, and so, with
// errors.ErrUnsupported, is a src of another kind.
func (b *Backend) Import(ctx context.Context, src keystore.Backend, keyID string) (keystore.KeyVersion, error) {
	if err := ctx.Err(); err != nil {
		return keystore.KeyVersion{}, err
	}
	sf, ok := src.(*Backend)
	if !ok {
		return keystore.KeyVersion{}, fmt.Errorf("%w: the file keystore copies versions only from another file keystore, not from %s", errors.ErrUnsupported, src.Name())
	}
	h, _, err := readHandle(sf.path)
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	var k *aesgcm.Key
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return keystore.KeyVersion{}, fmt.Errorf("%w: keyset entry %d: %v", keystore.ErrConfig, i, err)
		}
		if ek, ok := e.Key().(*aesgcm.Key); ok && keyIDFor(e.KeyID(), ek) == keyID {
			if e.KeyStatus() != keyset.Enabled {
				return keystore.KeyVersion{}, fmt.Errorf("%w: %q is %s in %s", keystore.ErrKeyDisabled, keyID, state(e.KeyStatus()), sf.path)
			}
			k = ek
		}
	}
	if k == nil {
		return keystore.KeyVersion{}, fmt.Errorf("%w: no version %q in %s", keystore.ErrKeyNotFound, short(keyID), sf.path)
	}
	tinkID, _ := k.IDRequirement()
	out := keystore.KeyVersion{KeyID: keyID, State: keystore.KeyEnabled}
	err = b.modify(ctx, func(m *keyset.Manager, ks *loaded) error {
		if v, ok := ks.byKeyID[keyID]; ok {
			out.State, out.Primary = state(v.status), keyID == ks.primary
			return errUnchanged
		}
		for _, v := range ks.versions {
			if v.tinkID == tinkID {
				return fmt.Errorf("%w: %s already holds another key with Tink ID %d (%s)", keystore.ErrConfig, b.path, tinkID, v.keyID)
			}
		}
		if _, err := m.AddKey(k); err != nil {
			return fmt.Errorf("import key version: %w", err)
		}
		return nil
	})
	if errors.Is(err, errUnchanged) {
		err = nil
	}
	return out, err
}

// errUnchanged stops modify before it writes: there is nothing to change.
var errUnchanged = errors.New("keyset unchanged")

// Package file is the keystore backed by a Tink keyset on local disk.
//
// The keyset holds several AES-256-GCM root key versions, one primary. It is
// stored as Tink's cleartext JSON keyset, so tinkey can read it, and must be
// mode 0600 or stricter and owned by keywarden's user or root, or it is
// refused (keystore/internal/secretfile's rule). The backend re-reads the file when
// it changes (size, mtime or inode), so a promotion by kmsctl reaches a running
// plugin at its next health check without a restart.
//
// Tink reads, writes and manages the keyset; the AES-GCM itself is the
// standard library's cipher.NewGCMWithRandomNonce over each version's key
// bytes, writing and reading exactly Tink's ciphertext (5-byte output prefix
// | 12-byte IV | ciphertext | 16-byte tag). Tink's own AES-GCM primitive
// chooses the IV itself and passes it to cipher.NewGCM, which Go's FIPS
// 140-3 module does not approve for encryption and which GODEBUG=fips140=only
// refuses outright; this one works in every mode (docs/fips.md).
package file

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/keywarden/keywarden/internal/atomicfile"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/secretfile"
)

// Name is the backend name used in metrics and logs.
const Name = "file"

// maxKeysetSize bounds what we read: a keyset of hundreds of versions is
// still far below it.
const maxKeysetSize = 1 << 20

// Tink's AES-GCM ciphertext: output prefix (one version byte, four bytes
// key ID), IV, ciphertext, tag.
const (
	tinkPrefixLen = 5
	tinkIVSize    = 12
	tinkTagSize   = 16
)

// Backend is a keystore.Backend over a Tink keyset file.
type Backend struct {
	path string

	mu    sync.RWMutex
	ks    *loaded
	stamp stamp
}

var (
	_ keystore.Backend  = (*Backend)(nil)
	_ keystore.Manager  = (*Backend)(nil)
	_ keystore.Importer = (*Backend)(nil)
)

type version struct {
	tinkID uint32
	keyID  string
	status keyset.KeyStatus
	prefix []byte      // Tink's output prefix of this key
	aead   cipher.AEAD // nil unless enabled
}

type loaded struct {
	primary  string
	versions []version // keyset order
	byKeyID  map[string]version
}

type stamp struct {
	size  int64
	mtime time.Time
	ino   uint64
}

// Open loads the keyset at path.
func Open(path string) (*Backend, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%w: keyset path %q must be absolute", keystore.ErrConfig, path)
	}
	b := &Backend{path: path}
	ks, st, err := load(path)
	if err != nil {
		return nil, err
	}
	b.ks, b.stamp = ks, st
	return b, nil
}

// Init creates a new keyset with one primary version at path, atomically. It
// refuses to overwrite an existing file.
func Init(path string) (keystore.KeyVersion, error) {
	if !filepath.IsAbs(path) {
		return keystore.KeyVersion{}, fmt.Errorf("%w: keyset path %q must be absolute", keystore.ErrConfig, path)
	}
	unlock, err := lock(path)
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	defer unlock()
	if _, err := os.Lstat(path); err == nil {
		return keystore.KeyVersion{}, fmt.Errorf("%w: %s already exists; refusing to overwrite a keyset", keystore.ErrConfig, path)
	}
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return keystore.KeyVersion{}, fmt.Errorf("create keyset: %w", err)
	}
	if err := write(path, h); err != nil {
		return keystore.KeyVersion{}, err
	}
	ks, err := parse(h)
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	return keystore.KeyVersion{KeyID: ks.primary, State: keystore.KeyEnabled, Primary: true}, nil
}

// Name implements keystore.Backend.
func (b *Backend) Name() string { return Name }

// Close implements keystore.Backend.
func (b *Backend) Close() error { return nil }

// KeyID implements keystore.Backend. It re-reads the keyset if the file
// changed; a file that no longer parses is reported as an error and the last
// good keyset stays in use.
func (b *Backend) KeyID(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	ks, err := b.refresh()
	if err != nil {
		return "", err
	}
	return ks.primary, nil
}

// Wrap implements keystore.Backend.
func (b *Backend) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Wrapped{}, err
	}
	ks := b.current()
	v := ks.byKeyID[ks.primary]
	out := make([]byte, 0, len(v.prefix)+tinkIVSize+len(pt)+tinkTagSize)
	out = append(out, v.prefix...)
	return keystore.Wrapped{KeyID: ks.primary, Ciphertext: v.aead.Seal(out, nil, pt, aad)}, nil
}

// Unwrap implements keystore.Backend.
func (b *Backend) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ks := b.current()
	v, ok := ks.byKeyID[w.KeyID]
	if !ok {
		// A version added by kmsctl since our last look: re-read once.
		var err error
		if ks, err = b.refresh(); err != nil {
			return nil, err
		}
		if v, ok = ks.byKeyID[w.KeyID]; !ok {
			return nil, fmt.Errorf("%w: no version %q in keyset", keystore.ErrKeyNotFound, short(w.KeyID))
		}
	}
	if v.status != keyset.Enabled {
		return nil, fmt.Errorf("%w: version %q is %s", keystore.ErrKeyDisabled, v.keyID, strings.ToLower(v.status.String()))
	}
	if !bytes.HasPrefix(w.Ciphertext, v.prefix) {
		return nil, fmt.Errorf("%w: ciphertext was not made by version %q", keystore.ErrInvalid, v.keyID)
	}
	pt, err := v.aead.Open(nil, nil, w.Ciphertext[len(v.prefix):], aad)
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed", keystore.ErrInvalid)
	}
	return pt, nil
}

func (b *Backend) current() *loaded {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.ks
}

// refresh re-reads the keyset if the file's stamp changed.
func (b *Backend) refresh() (*loaded, error) {
	st, err := statFile(b.path)
	if err != nil {
		return b.current(), err
	}
	b.mu.RLock()
	same := st == b.stamp
	ks := b.ks
	b.mu.RUnlock()
	if same {
		return ks, nil
	}
	ks, st, err = load(b.path)
	if err != nil {
		return b.current(), err
	}
	b.mu.Lock()
	b.ks, b.stamp = ks, st
	b.mu.Unlock()
	return ks, nil
}

func statFile(path string) (stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, fmt.Errorf("%w: stat keyset: %v", keystore.ErrUnavailable, pathErr(err))
	}
	var ino uint64
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return stamp{size: fi.Size(), mtime: fi.ModTime(), ino: ino}, nil
}

func load(path string) (*loaded, stamp, error) {
	h, st, err := readHandle(path)
	if err != nil {
		return nil, stamp{}, err
	}
	ks, err := parse(h)
	if err != nil {
		return nil, stamp{}, err
	}
	return ks, st, nil
}

func readHandle(path string) (*keyset.Handle, stamp, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, stamp{}, fmt.Errorf("%w: keyset %s does not exist (create it with: kmsctl keys init --keystore file://%s)", keystore.ErrConfig, path, path)
		}
		return nil, stamp{}, fmt.Errorf("%w: open keyset: %v", keystore.ErrUnavailable, pathErr(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, stamp{}, fmt.Errorf("%w: stat keyset: %v", keystore.ErrUnavailable, pathErr(err))
	}
	// Checked on the open file: the one read is the one checked.
	if err := secretfile.Check("keyset", path, fi); err != nil {
		return nil, stamp{}, err
	}
	if fi.Size() > maxKeysetSize {
		return nil, stamp{}, fmt.Errorf("%w: keyset %s is %d bytes, over the %d limit", keystore.ErrConfig, path, fi.Size(), maxKeysetSize)
	}
	buf := make([]byte, fi.Size())
	if _, err := f.ReadAt(buf, 0); err != nil {
		return nil, stamp{}, fmt.Errorf("%w: read keyset: %v", keystore.ErrUnavailable, pathErr(err))
	}
	// Tink's error text never echoes key bytes, but we do not pass it on
	// anyway: a parse failure needs no detail beyond "not a keyset".
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(buf)))
	if err != nil {
		return nil, stamp{}, fmt.Errorf("%w: %s is not a valid Tink JSON keyset", keystore.ErrConfig, path)
	}
	var ino uint64
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return h, stamp{size: fi.Size(), mtime: fi.ModTime(), ino: ino}, nil
}

func parse(h *keyset.Handle) (*loaded, error) {
	ks := &loaded{byKeyID: make(map[string]version, h.Len())}
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, fmt.Errorf("%w: keyset entry %d: %v", keystore.ErrConfig, i, err)
		}
		v := version{tinkID: e.KeyID(), status: e.KeyStatus()}
		k, ok := e.Key().(*aesgcm.Key)
		if !ok {
			return nil, fmt.Errorf("%w: keyset entry %d is not an AES-GCM key", keystore.ErrConfig, i)
		}
		if k.KeyBytes().Len() != 32 {
			return nil, fmt.Errorf("%w: keyset entry %d is not AES-256", keystore.ErrConfig, i)
		}
		if _, prefixed := k.IDRequirement(); !prefixed {
			return nil, fmt.Errorf("%w: keyset entry %d has no Tink output prefix (use the AES256_GCM template)", keystore.ErrConfig, i)
		}
		if p, ok := k.Parameters().(*aesgcm.Parameters); !ok || p.IVSizeInBytes() != tinkIVSize || p.TagSizeInBytes() != tinkTagSize {
			return nil, fmt.Errorf("%w: keyset entry %d is not AES-GCM with a %d-byte IV and a %d-byte tag", keystore.ErrConfig, i, tinkIVSize, tinkTagSize)
		}
		v.prefix = k.OutputPrefix()
		if len(v.prefix) != tinkPrefixLen {
			return nil, fmt.Errorf("%w: keyset entry %d has a %d-byte output prefix, want %d", keystore.ErrConfig, i, len(v.prefix), tinkPrefixLen)
		}
		if v.status == keyset.Enabled {
			a, err := newAEAD(k)
			if err != nil {
				return nil, fmt.Errorf("%w: keyset entry %d: %v", keystore.ErrConfig, i, err)
			}
			v.aead = a
		}
		v.keyID = keyIDFor(e.KeyID(), k)
		ks.versions = append(ks.versions, v)
		ks.byKeyID[v.keyID] = v
		if e.IsPrimary() {
			ks.primary = v.keyID
		}
	}
	if ks.primary == "" {
		return nil, fmt.Errorf("%w: keyset has no primary version", keystore.ErrConfig)
	}
	if ks.byKeyID[ks.primary].aead == nil {
		return nil, fmt.Errorf("%w: keyset's primary version is not enabled", keystore.ErrConfig)
	}
	return ks, nil
}

// newAEAD is AES-GCM over k's key bytes, whose Seal makes the IV and
// prepends it and whose Open reads it from there: after the output prefix,
// byte for byte Tink's AES-GCM ciphertext.
func newAEAD(k *aesgcm.Key) (cipher.AEAD, error) {
	block, err := aes.NewCipher(k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(block)
}

// keyIDFor names a version by its Tink ID and a fingerprint of its key: an
// HMAC keyed by the key itself over a fixed label. The fingerprint reveals
// nothing about the key, and makes the name unique across keysets, so a
// re-created keyset whose random Tink ID happens to repeat an old one can
// never be mistaken for it.
func keyIDFor(tinkID uint32, k *aesgcm.Key) string {
	m := hmac.New(sha256.New, k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
	m.Write([]byte("keywarden root key id v1"))
	return "tink:" + strconv.FormatUint(uint64(tinkID), 10) + ":" + hex.EncodeToString(m.Sum(nil)[:8])
}

// short keeps error messages bounded when a caller sends a huge key_id.
func short(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// pathErr strips the operation from a *fs.PathError, keeping path and cause.
func pathErr(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Path + ": " + pe.Err.Error()
	}
	return err.Error()
}

func write(path string, h *keyset.Handle) error {
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return fmt.Errorf("encode keyset: %w", err)
	}
	if err := atomicfile.Write(path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write keyset %s: %w", path, err)
	}
	return nil
}

// Package recovery is keywarden's offline recovery key: a Tink hybrid
// (HPKE) keyset whose public half goes to every node and whose private
// half is kept offline.
//
// A node seals every new local KEK to the public key, next to its copies
// under the root keystores (one more copy in the version-2 annotation,
// see kms/envelope). Nothing on a node can open that copy: only the holder
// of the private keyset can, with `kmsctl recover`, when every root
// keystore is lost. It is an escrow; docs/security.md says who should hold
// it and when not to make one.
//
// Two file formats, never confused:
//
//   - the public keyset: a Tink JSON keyset with no secret key material.
//     ParsePublic refuses anything with a secret in it.
//   - the private keyset: a JSON document of type PrivateType holding the
//     Tink keyset, in clear or encrypted under a key derived from a
//     passphrase (argon2id, then AES-256-GCM; parameters in the file).
//     ParsePrivate refuses a bare keyset, public or private, and the file
//     keystore and ParsePublic refuse it.
//
// None of it is FIPS 140-3 approved (X25519, argon2id, and Tink's AES-GCM
// with nonces it passes in), so under GODEBUG=fips140=only every way to
// make or read a recovery key fails with ErrFIPSOnly (docs/fips.md).
package recovery

import (
	"bytes"
	"context"
	"crypto/fips140"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/tink-crypto/tink-go/v2/aead/subtle"
	"github.com/tink-crypto/tink-go/v2/hybrid"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
	"golang.org/x/crypto/argon2"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/secretfile"
)

// Name is the recovery key's backend name in the version-2 annotation. No
// root backend has it, so no root ever tries to unwrap the recovery copy.
const Name = "recovery"

// PrivateType marks a private recovery keyset file.
const PrivateType = "keywarden.io/recovery-private-keyset/v1"

const (
	keyIDPrefix = "recovery:"
	// contextLabel prefixes the HPKE context info (with the root AAD):
	// a recovery ciphertext is of no use as any other HPKE ciphertext.
	contextLabel = "keywarden.io/recovery/v1\x00"
	kdfArgon2id  = "argon2id"
	// maxFile bounds the key files read: a keyset of one key is < 1 KiB.
	maxFile = 64 << 10
)

// ErrFIPSOnly is what New, ParsePublic and ParsePrivate (and so OpenPublic
// and OpenPrivate) return under GODEBUG=fips140=only: the recovery key is
// HPKE over X25519, which Go's FIPS 140-3 module does not approve and that
// mode refuses. It is a keystore.ErrConfig.
var ErrFIPSOnly = fmt.Errorf("%w: a recovery key cannot be used in FIPS 140-only mode (GODEBUG=fips140=only): it is HPKE over X25519, which the FIPS 140-3 module does not approve; see docs/fips.md", keystore.ErrConfig)

func checkFIPS() error {
	if fips140.Enforced() {
		return ErrFIPSOnly
	}
	return nil
}

// KDF is the passphrase key derivation of a sealed private keyset:
// argon2id (RFC 9106) to a 32-byte AES-256-GCM key.
type KDF struct {
	Name      string `json:"name"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memoryKiB"`
	Threads   uint8  `json:"threads"`
	Salt      []byte `json:"salt"`
}

// DefaultKDF is RFC 9106's second recommended argon2id setting: 3 passes
// over 64 MiB with 4 lanes (about a quarter of a second on a laptop core),
// with a fresh 16-byte salt for each file.
func DefaultKDF() KDF {
	return KDF{Name: kdfArgon2id, Time: 3, MemoryKiB: 64 << 10, Threads: 4}
}

// check bounds the parameters read from a file, so a hostile file cannot
// ask for unbounded memory or time.
func (k KDF) check() error {
	switch {
	case k.Name != kdfArgon2id:
		return fmt.Errorf("%w: passphrase KDF %q, want %q", keystore.ErrConfig, k.Name, kdfArgon2id)
	case k.Time < 1 || k.Time > 64, k.MemoryKiB < 8 || k.MemoryKiB > 4<<20, k.Threads < 1, len(k.Salt) < 16 || len(k.Salt) > 64:
		return fmt.Errorf("%w: passphrase KDF parameters out of bounds", keystore.ErrConfig)
	}
	return nil
}

func (k KDF) aead(passphrase []byte) (tink.AEAD, error) {
	key := argon2.IDKey(passphrase, k.Salt, k.Time, k.MemoryKiB, k.Threads, 32)
	defer clear(key)
	return subtle.NewAESGCM(key)
}

// privateFile is the private keyset file.
type privateFile struct {
	Type  string `json:"type"`
	KeyID string `json:"keyID"`
	// KDF is set when Keyset is a Tink EncryptedKeyset sealed under a
	// passphrase, with associated data PrivateType ‖ 0 ‖ KeyID.
	KDF    *KDF            `json:"kdf,omitempty"`
	Keyset json.RawMessage `json:"keyset"`
}

// Template is the HPKE key of a recovery keyset: DHKEM(X25519,
// HKDF-SHA256), HKDF-SHA256, AES-256-GCM, with no Tink output prefix.
var Template = hybrid.DHKEM_X25519_HKDF_SHA256_HKDF_SHA256_AES_256_GCM_Raw_Key_Template

// PrivateKey is the private recovery keyset, held offline.
type PrivateKey struct {
	h     *keyset.Handle
	dec   tink.HybridDecrypt
	keyID string
}

// PublicKey is the public recovery keyset a node seals its local KEKs to.
// It implements keystore.Sealer.
type PublicKey struct {
	enc   tink.HybridEncrypt
	keyID string
}

var _ keystore.Sealer = (*PublicKey)(nil)

// New makes a new recovery keyset.
func New() (*PrivateKey, error) {
	if err := checkFIPS(); err != nil {
		return nil, err
	}
	h, err := keyset.NewHandle(Template())
	if err != nil {
		return nil, fmt.Errorf("recovery: new keyset: %w", err)
	}
	return privateFrom(h)
}

func privateFrom(h *keyset.Handle) (*PrivateKey, error) {
	dec, err := hybrid.NewHybridDecrypt(h)
	if err != nil {
		return nil, fmt.Errorf("%w: not a hybrid private keyset: %v", keystore.ErrConfig, err)
	}
	pub, err := h.Public()
	if err != nil {
		return nil, fmt.Errorf("%w: not a hybrid private keyset: %v", keystore.ErrConfig, err)
	}
	id, err := keyIDOf(pub)
	if err != nil {
		return nil, err
	}
	return &PrivateKey{h: h, dec: dec, keyID: id}, nil
}

// keyIDOf is "recovery:" and the hex SHA-256 of the public keyset's
// binary serialisation (a keyset has no map fields, so it is
// deterministic): it names the public key, so a new recovery key changes
// every node's key_id and mints a new local KEK.
func keyIDOf(pub *keyset.Handle) (string, error) {
	var buf bytes.Buffer
	if err := pub.WriteWithNoSecrets(keyset.NewBinaryWriter(&buf)); err != nil {
		return "", fmt.Errorf("%w: serialise public keyset: %v", keystore.ErrConfig, err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return keyIDPrefix + hex.EncodeToString(sum[:]), nil
}

// KeyID names the public half.
func (k *PrivateKey) KeyID() string { return k.keyID }

// Public returns the public half.
func (k *PrivateKey) Public() (*PublicKey, error) {
	pub, err := k.h.Public()
	if err != nil {
		return nil, fmt.Errorf("recovery: public keyset: %w", err)
	}
	return publicFrom(pub)
}

// Unwrap opens a copy sealed by PublicKey.Wrap under the same aad.
func (k *PrivateKey) Unwrap(w keystore.Wrapped, aad []byte) ([]byte, error) {
	if w.KeyID != k.keyID {
		return nil, fmt.Errorf("%w: copy sealed to recovery key %q, this is %q", keystore.ErrKeyNotFound, w.KeyID, k.keyID)
	}
	pt, err := k.dec.Decrypt(w.Ciphertext, contextInfo(aad))
	if err != nil {
		return nil, fmt.Errorf("%w: recovery copy does not open", keystore.ErrInvalid)
	}
	return pt, nil
}

// Marshal writes the private keyset file: sealed under passphrase with
// kdf (a fresh salt is drawn), or in clear when passphrase is empty.
func (k *PrivateKey) Marshal(passphrase []byte, kdf KDF) ([]byte, error) {
	f := privateFile{Type: PrivateType, KeyID: k.keyID}
	var buf bytes.Buffer
	if len(passphrase) == 0 {
		if err := insecurecleartextkeyset.Write(k.h, keyset.NewJSONWriter(&buf)); err != nil {
			return nil, fmt.Errorf("recovery: write keyset: %w", err)
		}
	} else {
		kdf.Salt = make([]byte, 16)
		if _, err := rand.Read(kdf.Salt); err != nil {
			return nil, fmt.Errorf("recovery: salt: %w", err)
		}
		if err := kdf.check(); err != nil {
			return nil, err
		}
		a, err := kdf.aead(passphrase)
		if err != nil {
			return nil, fmt.Errorf("recovery: passphrase key: %w", err)
		}
		if err := k.h.WriteWithAssociatedData(keyset.NewJSONWriter(&buf), a, privateAD(k.keyID)); err != nil {
			return nil, fmt.Errorf("recovery: seal keyset: %w", err)
		}
		f.KDF = &kdf
	}
	f.Keyset = buf.Bytes()
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("recovery: %w", err)
	}
	return append(out, '\n'), nil
}

func privateAD(keyID string) []byte { return []byte(PrivateType + "\x00" + keyID) }

// Sealed reports whether a private keyset file is sealed under a
// passphrase.
func Sealed(b []byte) bool {
	var f privateFile
	return json.Unmarshal(b, &f) == nil && f.Type == PrivateType && f.KDF != nil
}

var errNotPrivate = fmt.Errorf("%w: not a private recovery keyset (a file made by `kmsctl recovery init --private-out`)", keystore.ErrConfig)

// ParsePrivate reads a private keyset file. passphrase is needed when the
// file is sealed. It refuses a bare Tink keyset, public or private.
func ParsePrivate(b, passphrase []byte) (*PrivateKey, error) {
	if err := checkFIPS(); err != nil {
		return nil, err
	}
	var f privateFile
	if err := json.Unmarshal(b, &f); err != nil || f.Type != PrivateType || len(f.Keyset) == 0 {
		return nil, errNotPrivate
	}
	var h *keyset.Handle
	var err error
	if f.KDF == nil {
		h, err = insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(f.Keyset)))
	} else {
		if len(passphrase) == 0 {
			return nil, fmt.Errorf("%w: the private recovery keyset is sealed under a passphrase", keystore.ErrPermission)
		}
		if err := f.KDF.check(); err != nil {
			return nil, err
		}
		a, aerr := f.KDF.aead(passphrase)
		if aerr != nil {
			return nil, fmt.Errorf("recovery: passphrase key: %w", aerr)
		}
		h, err = keyset.ReadWithAssociatedData(keyset.NewJSONReader(bytes.NewReader(f.Keyset)), a, privateAD(f.KeyID))
		if err != nil {
			return nil, fmt.Errorf("%w: wrong passphrase or damaged private recovery keyset", keystore.ErrPermission)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: private recovery keyset: %v", keystore.ErrConfig, err)
	}
	k, err := privateFrom(h)
	if err != nil {
		return nil, err
	}
	if k.keyID != f.KeyID {
		return nil, fmt.Errorf("%w: private recovery keyset names %q but holds %q", keystore.ErrConfig, f.KeyID, k.keyID)
	}
	return k, nil
}

// MarshalPublic writes the public half of k as a Tink JSON keyset.
func (k *PrivateKey) MarshalPublic() ([]byte, error) {
	pub, err := k.h.Public()
	if err != nil {
		return nil, fmt.Errorf("recovery: public keyset: %w", err)
	}
	var buf bytes.Buffer
	if err := pub.WriteWithNoSecrets(keyset.NewJSONWriter(&buf)); err != nil {
		return nil, fmt.Errorf("recovery: write public keyset: %w", err)
	}
	return append(buf.Bytes(), '\n'), nil
}

func publicFrom(h *keyset.Handle) (*PublicKey, error) {
	enc, err := hybrid.NewHybridEncrypt(h)
	if err != nil {
		return nil, fmt.Errorf("%w: not a hybrid public keyset: %v", keystore.ErrConfig, err)
	}
	id, err := keyIDOf(h)
	if err != nil {
		return nil, err
	}
	return &PublicKey{enc: enc, keyID: id}, nil
}

// ParsePublic reads a public keyset. It refuses a private keyset, bare or
// in its file: a node must never hold the recovery private key.
func ParsePublic(b []byte) (*PublicKey, error) {
	if err := checkFIPS(); err != nil {
		return nil, err
	}
	var f privateFile
	if json.Unmarshal(b, &f) == nil && f.Type == PrivateType {
		return nil, fmt.Errorf("%w: this is the PRIVATE recovery keyset; a node takes only the public one (`kmsctl recovery init --public-out`)", keystore.ErrConfig)
	}
	h, err := keyset.ReadWithNoSecrets(keyset.NewJSONReader(bytes.NewReader(b)))
	if err != nil {
		return nil, fmt.Errorf("%w: not a public recovery keyset (a private keyset is refused here): %v", keystore.ErrConfig, err)
	}
	return publicFrom(h)
}

// OpenPublic reads the public keyset at path (a local path or a file://
// URI). The file may be world-readable, but not writable by anyone but
// its owner: who can replace it gets every new local KEK.
func OpenPublic(path string) (*PublicKey, error) {
	b, err := readPublic(path)
	if err != nil {
		return nil, err
	}
	return ParsePublic(b)
}

// OpenPrivate reads the private keyset file at path (a local path or a
// file:// URI) under keywarden's rule for secret files: a regular file,
// 0600 or stricter, owned by the process's user or root.
func OpenPrivate(path string, passphrase []byte) (*PrivateKey, error) {
	b, err := secretfile.Read("private recovery keyset", strings.TrimPrefix(path, "file://"), maxFile)
	if err != nil {
		return nil, err
	}
	return ParsePrivate(b, passphrase)
}

// readPublic reads the public keyset file: a regular file no one but its
// owner may write.
func readPublic(path string) ([]byte, error) {
	const forbidden = 0o022
	path = strings.TrimPrefix(path, "file://")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: recovery keyset: %v", keystore.ErrConfig, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: recovery keyset: %v", keystore.ErrConfig, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: recovery keyset %s is not a regular file", keystore.ErrConfig, path)
	}
	if st.Mode().Perm()&forbidden != 0 {
		return nil, fmt.Errorf("%w: recovery keyset %s has mode %04o, want none of %04o", keystore.ErrConfig, path, st.Mode().Perm(), forbidden)
	}
	if st.Size() > maxFile {
		return nil, fmt.Errorf("%w: recovery keyset %s is %d bytes, max %d", keystore.ErrConfig, path, st.Size(), maxFile)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("%w: recovery keyset: %v", keystore.ErrConfig, err)
	}
	return buf.Bytes(), nil
}

func contextInfo(aad []byte) []byte {
	return append([]byte(contextLabel), aad...)
}

// Wrap implements keystore.Sealer: an HPKE seal to the public key, with
// aad in the context info. It makes no remote call.
func (p *PublicKey) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Wrapped{}, err
	}
	ct, err := p.enc.Encrypt(pt, contextInfo(aad))
	if err != nil {
		return keystore.Wrapped{}, fmt.Errorf("recovery: seal: %w", err)
	}
	return keystore.Wrapped{KeyID: p.keyID, Ciphertext: ct}, nil
}

// KeyID implements keystore.Sealer.
func (p *PublicKey) KeyID(context.Context) (string, error) { return p.keyID, nil }

// Name implements keystore.Sealer.
func (p *PublicKey) Name() string { return Name }

// IsKeyID reports whether id names a recovery key.
func IsKeyID(id string) bool { return strings.HasPrefix(id, keyIDPrefix) }

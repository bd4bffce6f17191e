// Package keystore defines the contract between keywarden and whatever holds
// its root key: a Tink keyset on disk, an HSM, or a cloud KMS.
//
// A Backend wraps and unwraps short secrets (keywarden's local KEKs). It never
// sees the apiserver's DEK seeds. Implementations return the sentinel errors
// below wrapped with %w; package kms alone maps them to gRPC status codes.
package keystore

import (
	"context"
	"errors"
	"strings"
	"time"
)

// MaxKeyIDLen bounds every key_id a backend may return. kube-apiserver refuses
// key IDs longer than 1 kB; we stay well inside it.
const MaxKeyIDLen = 512

// Backend holds the root key. Implementations must be safe for concurrent use.
type Backend interface {
	// Wrap encrypts pt under the current primary root key version, binding aad.
	Wrap(ctx context.Context, pt, aad []byte) (Wrapped, error)
	// Unwrap decrypts with the version w.KeyID names. It fails with ErrInvalid
	// if aad or the ciphertext differ from what Wrap produced, ErrKeyNotFound
	// if the version is unknown, ErrKeyDisabled if it is disabled or destroyed.
	Unwrap(ctx context.Context, w Wrapped, aad []byte) ([]byte, error)
	// KeyID names the current primary version: non-empty, at most MaxKeyIDLen
	// bytes, non-secret, stable, and it changes exactly when the root key
	// rotates. It never names a different key with an earlier value.
	KeyID(ctx context.Context) (string, error)
	// Name is a short, fixed, low-cardinality backend name for metrics and
	// logs ("file", "pkcs11", "awskms", ...).
	Name() string
	Close() error
}

// Sealer is a key that can wrap but never unwrap: keywarden's offline
// recovery key (package keystore/recovery), whose private half is not on
// any node. Every new local KEK is also wrapped under it, so that the
// holder of the private half can recover the cluster's data without any
// root keystore. It is never asked to unwrap.
type Sealer interface {
	// Wrap encrypts pt under the public key, binding aad.
	Wrap(ctx context.Context, pt, aad []byte) (Wrapped, error)
	// KeyID names the public key, as Backend.KeyID names a root version.
	KeyID(ctx context.Context) (string, error)
	// Name is fixed and no Backend's Name.
	Name() string
}

// SameVersion reports whether key_ids a and b name the same root key
// version. A backend may end its key_ids with an identity tag, '#' and a
// token, that tells its key apart from an earlier one it would otherwise
// name alike (Vault: a Transit key deleted and re-created under the same
// name restarts at v1). A key_id without the tag names the same version as
// a tagged one with the same rest: it was written before the backend tagged
// its key_ids, or listed for a version whose identity the backend can no
// longer read. Two different tags name different keys. No backend's key_id
// holds '#' otherwise. Counting objects by key_id (kmsctl audit, and
// before disable or destroy) must use this, not ==.
func SameVersion(a, b string) bool {
	if a == b {
		return true
	}
	ra, _, taggedA := strings.Cut(a, "#")
	rb, _, taggedB := strings.Cut(b, "#")
	return ra == rb && taggedA != taggedB
}

// Wrapped is a root-key ciphertext and the version that made it.
type Wrapped struct {
	KeyID      string
	Ciphertext []byte
}

// KeyState is the lifecycle state of one root key version.
type KeyState string

// The states a root key version can be in.
const (
	KeyEnabled   KeyState = "enabled"
	KeyDisabled  KeyState = "disabled"
	KeyDestroyed KeyState = "destroyed"
)

// KeyVersion describes one root key version for operators.
type KeyVersion struct {
	KeyID   string    `json:"keyID"`
	State   KeyState  `json:"state"`
	Primary bool      `json:"primary"`
	Created time.Time `json:"created,omitzero"`
}

// Manager is the optional ability to manage root key versions, used by
// kmsctl. Backends whose keys live in a provider's console do not implement
// it.
type Manager interface {
	// List returns every version, primary included.
	List(ctx context.Context) ([]KeyVersion, error)
	// Add creates a new enabled version that is not primary.
	Add(ctx context.Context) (KeyVersion, error)
	// Promote makes an enabled version primary.
	Promote(ctx context.Context, keyID string) error
	// Disable makes a non-primary version unusable for Unwrap, reversibly.
	Disable(ctx context.Context, keyID string) error
	// Enable reverses Disable.
	Enable(ctx context.Context, keyID string) error
	// Destroy irreversibly deletes a non-primary, disabled version's material.
	Destroy(ctx context.Context, keyID string) error
}

// Importer is the optional ability to copy a root key version, key
// material and all, from another keystore into this one, enabled and not
// primary: how an HA rotation puts the version one control-plane node
// added into every other node's keystore, so that each can decrypt what
// any writes once it is promoted. The copy keeps its key_id. Importing a
// version the keystore already holds changes nothing. The material never
// crosses this interface: the implementation reads it from src itself, so
// it can copy only from a keystore of its own kind; any other src is
// refused with an error wrapping errors.ErrUnsupported. Backends whose
// material cannot leave the provider (an HSM token, a cloud KMS) do not
// implement it: they replicate versions by the provider's own means.
type Importer interface {
	Import(ctx context.Context, src Backend, keyID string) (KeyVersion, error)
}

// Sentinel errors. Backends wrap them with %w and add context that holds no
// key material and no plaintext.
var (
	// ErrInvalid: malformed, truncated or tampered ciphertext, or AAD mismatch.
	ErrInvalid = errors.New("invalid ciphertext or associated data")
	// ErrKeyNotFound: the key version named does not exist in this keystore.
	ErrKeyNotFound = errors.New("key version not found")
	// ErrKeyDisabled: the key version exists but is disabled or destroyed.
	ErrKeyDisabled = errors.New("key version disabled or destroyed")
	// ErrPermission: the keystore refused our credentials.
	ErrPermission = errors.New("keystore permission denied")
	// ErrThrottled: the keystore rate-limited us.
	ErrThrottled = errors.New("keystore throttled the request")
	// ErrUnavailable: the keystore could not be reached or failed transiently.
	ErrUnavailable = errors.New("keystore unavailable")
	// ErrConfig: the keystore URI or its configuration is wrong.
	ErrConfig = errors.New("keystore misconfigured")
)

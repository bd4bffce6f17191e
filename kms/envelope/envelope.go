// Package envelope is keywarden's versioned wire format: the ciphertext it
// returns to kube-apiserver and the wrapped local KEK it returns as an
// annotation. Every length is bounded and checked before anything is parsed
// or any key is touched.
//
// Ciphertext, version 1 (at most MaxCiphertext bytes):
//
//	0x01 | nonce (12) | AES-256-GCM(local KEK, seed, aad) (len(seed)+16)
//
// Wrapped KEK annotation, version 1 (at most MaxAnnotation bytes):
//
//	0x01 | u16 len | root key_id | u16 len | root keystore ciphertext
//
// Wrapped KEK annotation, version 2, for a local KEK wrapped under several
// roots (multi.go; at most MaxAnnotation2 bytes):
//
//	0x02 | u8 n | n × (u8 len | backend name | u16 len | root key_id | u16 len | root ciphertext)
//
// whose key_id is RootsKeyID of the n root key_ids. The ciphertext is
// version 1 with either annotation.
//
// The AAD binds the key_id and the whole annotation (version 2: its
// SHA-256), so neither can be swapped between objects without the seal
// failing.
package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Version1 is the ciphertext's only version and the annotation's version
// for a local KEK wrapped under one root.
const Version1 byte = 1

// Bounds. kube-apiserver rejects ciphertexts over 1 kB and key IDs over
// 1 kB; annotations must total under 32 kB.
const (
	NonceSize      = 12
	TagSize        = 16
	KEKSize        = 32
	MaxPlaintext   = 512
	MaxCiphertext  = 1 + NonceSize + MaxPlaintext + TagSize
	MinCiphertext  = 1 + NonceSize + 1 + TagSize
	MaxKeyID       = 1024
	MaxRootCT      = 16 << 10
	MaxAnnotation  = 1 + 2 + MaxKeyID + 2 + MaxRootCT
	AnnotationKey  = "kek.keywarden.io"
	aadLabel       = "keywarden.io/envelope/v1"
	aadLabel2      = "keywarden.io/envelope/v2"
	rootAADLabel   = "keywarden.io/local-kek/v1"
	annotationHead = 1
)

// Errors. Every one of them means the caller sent something we did not make
// (or that was altered since): kms maps them all to InvalidArgument.
var (
	ErrMalformed   = errors.New("malformed envelope")
	ErrVersion     = errors.New("unknown envelope version")
	ErrAuthFailed  = errors.New("ciphertext authentication failed")
	ErrTooLarge    = errors.New("input exceeds size bound")
	ErrBadKEKBytes = errors.New("local KEK has wrong size")
)

// RootAAD is the associated data the root keystore binds to every wrapped
// local KEK, so that its ciphertexts cannot be confused with any other use
// of the same root key.
func RootAAD() []byte { return []byte(rootAADLabel) }

// NewAEAD makes the AES-256-GCM AEAD for a local KEK. It makes its own
// random nonce on every Seal and reads it from the front of what it opens
// (crypto/cipher.NewGCMWithRandomNonce: nonce | ciphertext | tag, exactly
// the bytes after the version byte), which is the only AES-GCM that Go's
// FIPS 140-3 module approves for encryption and the only one it allows at
// all under GODEBUG=fips140=only. Seal and Open take only AEADs made here.
func NewAEAD(kek []byte) (cipher.AEAD, error) {
	if len(kek) != KEKSize {
		return nil, ErrBadKEKBytes
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, ErrBadKEKBytes
	}
	return cipher.NewGCMWithRandomNonce(block)
}

// AAD is the associated data for a ciphertext made under the key_id and
// wrapped KEK annotation given. It is fixed per local KEK, so callers compute
// it once and reuse it.
//
// With a version-2 annotation it binds the annotation's SHA-256 rather than
// the annotation: the annotation grows with every root (and a cloud KMS
// ciphertext is hundreds of bytes), and AES-GCM hashes the whole AAD on
// every Seal and Open, so the warm path would grow with it.
//
//	version 1: "keywarden.io/envelope/v1" | 0x01 | u16 len | key_id | u32 len | annotation
//	version 2: "keywarden.io/envelope/v2" | 0x02 | u16 len | key_id | SHA-256(annotation)
func AAD(keyID string, annotation []byte) []byte {
	if len(annotation) > 0 && annotation[0] == Version2 {
		sum := sha256.Sum256(annotation)
		b := make([]byte, 0, len(aadLabel2)+1+2+len(keyID)+sha256.Size)
		b = append(b, aadLabel2...)
		b = append(b, Version2)
		b = binary.BigEndian.AppendUint16(b, uint16(len(keyID)))
		b = append(b, keyID...)
		return append(b, sum[:]...)
	}
	b := make([]byte, 0, len(aadLabel)+1+2+len(keyID)+4+len(annotation))
	b = append(b, aadLabel...)
	b = append(b, Version1)
	b = binary.BigEndian.AppendUint16(b, uint16(len(keyID)))
	b = append(b, keyID...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(annotation)))
	return append(b, annotation...)
}

// Seal encrypts pt under aead, an AEAD from NewAEAD, which draws the
// nonce itself (from crypto/rand's generator, inside the FIPS module).
func Seal(aead cipher.AEAD, pt, aad []byte) ([]byte, error) {
	if len(pt) == 0 || len(pt) > MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext is %d bytes, want 1..%d", ErrTooLarge, len(pt), MaxPlaintext)
	}
	out := make([]byte, 1, 1+NonceSize+len(pt)+TagSize)
	out[0] = Version1
	return aead.Seal(out, nil, pt, aad), nil
}

// Check validates a ciphertext's version and length without any key.
func Check(ct []byte) error {
	if len(ct) == 0 {
		return fmt.Errorf("%w: empty ciphertext", ErrMalformed)
	}
	if ct[0] != Version1 {
		return fmt.Errorf("%w: ciphertext version %d", ErrVersion, ct[0])
	}
	if len(ct) > MaxCiphertext {
		return fmt.Errorf("%w: ciphertext is %d bytes, max %d", ErrTooLarge, len(ct), MaxCiphertext)
	}
	if len(ct) < MinCiphertext {
		return fmt.Errorf("%w: ciphertext is %d bytes, min %d", ErrMalformed, len(ct), MinCiphertext)
	}
	return nil
}

// Ciphertext is a ciphertext whose version and length Parse checked; nothing
// in it is authenticated until Open.
type Ciphertext struct {
	sealed []byte // nonce | ciphertext | tag
}

// Parse checks ct as Check does and keeps it for Open, so that a caller who
// must check before any keystore call does not check again to decrypt.
func Parse(ct []byte) (Ciphertext, error) {
	if err := Check(ct); err != nil {
		return Ciphertext{}, err
	}
	return Ciphertext{sealed: ct[1:]}, nil
}

// Open decrypts c with aead, an AEAD from NewAEAD. The zero Ciphertext
// (not from Parse) never opens.
func (c Ciphertext) Open(aead cipher.AEAD, aad []byte) ([]byte, error) {
	if len(c.sealed) < MinCiphertext-1 {
		return nil, fmt.Errorf("%w: ciphertext was not parsed", ErrMalformed)
	}
	pt, err := aead.Open(nil, nil, c.sealed, aad)
	if err != nil {
		return nil, ErrAuthFailed
	}
	return pt, nil
}

// Open checks and decrypts ct.
func Open(aead cipher.AEAD, ct, aad []byte) ([]byte, error) {
	c, err := Parse(ct)
	if err != nil {
		return nil, err
	}
	return c.Open(aead, aad)
}

// EncodeKEK encodes a wrapped local KEK for the annotation.
func EncodeKEK(rootKeyID string, rootCT []byte) ([]byte, error) {
	if len(rootKeyID) == 0 || len(rootKeyID) > MaxKeyID {
		return nil, fmt.Errorf("%w: root key_id is %d bytes, want 1..%d", ErrTooLarge, len(rootKeyID), MaxKeyID)
	}
	if len(rootCT) == 0 || len(rootCT) > MaxRootCT {
		return nil, fmt.Errorf("%w: root ciphertext is %d bytes, want 1..%d", ErrTooLarge, len(rootCT), MaxRootCT)
	}
	b := make([]byte, 0, 1+2+len(rootKeyID)+2+len(rootCT))
	b = append(b, Version1)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rootKeyID)))
	b = append(b, rootKeyID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rootCT)))
	return append(b, rootCT...), nil
}

// DecodeKEK decodes a wrapped local KEK annotation. The returned slice
// aliases b.
func DecodeKEK(b []byte) (rootKeyID string, rootCT []byte, err error) {
	if len(b) == 0 {
		return "", nil, fmt.Errorf("%w: empty KEK annotation", ErrMalformed)
	}
	if b[0] != Version1 {
		return "", nil, fmt.Errorf("%w: KEK annotation version %d", ErrVersion, b[0])
	}
	if len(b) > MaxAnnotation {
		return "", nil, fmt.Errorf("%w: KEK annotation is %d bytes, max %d", ErrTooLarge, len(b), MaxAnnotation)
	}
	rest := b[annotationHead:]
	id, rest, ok := field(rest, MaxKeyID)
	if !ok {
		return "", nil, fmt.Errorf("%w: KEK annotation key_id field", ErrMalformed)
	}
	ct, rest, ok := field(rest, MaxRootCT)
	if !ok {
		return "", nil, fmt.Errorf("%w: KEK annotation ciphertext field", ErrMalformed)
	}
	if len(rest) != 0 {
		return "", nil, fmt.Errorf("%w: %d trailing bytes in KEK annotation", ErrMalformed, len(rest))
	}
	return string(id), ct, nil
}

// field reads a u16-length-prefixed, non-empty field of at most max bytes.
func field(b []byte, max int) (val, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if n == 0 || n > max || n > len(b) {
		return nil, nil, false
	}
	return b[:n], b[n:], true
}

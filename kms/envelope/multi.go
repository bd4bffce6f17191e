package envelope

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
)

// Version2 is the wrapped KEK annotation of a local KEK wrapped under
// several roots (keywarden run with --keystore repeated). The ciphertext
// keeps version 1: only the annotation, and through it the AAD, changes.
//
//	0x02 | u8 n (2..MaxRoots) | n × copy
//	copy = u8 len | backend name | u16 len | root key_id | u16 len | root ciphertext
//
// Copy i is the local KEK wrapped by root i (in --keystore order at the
// time the KEK was made), with the same root AAD as version 1: every copy
// wraps the same KEK. The key_id of the whole is RootsKeyID of the copies'
// key_ids, in order; it is not stored, it is recomputed. The last copy may
// be the offline recovery key's (backend "recovery", keystore/recovery),
// which no node can open; it counts against MaxRoots like a root's.
const Version2 byte = 2

// Bounds of version 2. With MaxRoots copies at their largest the annotation
// is 20,630 bytes, under the apiserver's 32 KiB for all annotations.
const (
	MaxRoots       = 4
	MaxBackendName = 32
	// MaxRootCT2 bounds one copy's root ciphertext. The largest any of our
	// backends makes is Azure's RSA-4096 wrap, 512 bytes plus a header.
	MaxRootCT2     = 4 << 10
	MaxAnnotation2 = 2 + MaxRoots*(1+MaxBackendName+2+MaxKeyID+2+MaxRootCT2)
	// MaxAnnotationAny is the larger of the two annotation bounds: what a
	// caller checks before knowing the version.
	MaxAnnotationAny = max(MaxAnnotation, MaxAnnotation2)

	rootsKeyIDPrefix = "roots:"
	rootsKeyIDLabel  = "keywarden.io/key-id/roots/v1"
)

// Copy is one root's wrapped copy of a local KEK.
type Copy struct {
	// Backend is the root's backend name ("file", "awskms", ...); empty
	// in a version-1 annotation, which does not record it.
	Backend string
	KeyID   string
	RootCT  []byte
}

// Annotation is a decoded wrapped KEK annotation of either version.
type Annotation struct {
	Version byte
	// KeyID is the key_id the annotation's ciphertexts were made under:
	// the one root key_id (version 1) or RootsKeyID of the copies
	// (version 2).
	KeyID  string
	Copies []Copy
}

// RootsKeyID is the key_id of a local KEK wrapped under several roots:
//
//	"roots:" n ":" hex(SHA-256(label | u8 n | n × (u16 len | root key_id)))
//
// It is deterministic in the ordered list of root key_ids, changes when any
// of them does, and is never the key_id of a single root: no backend's
// key_id has this form (Tink "tink:", PKCS#11 "pkcs11:", AWS "arn:", GCP
// "projects/", Azure "https://", Vault "<mount>/keys/..."; none is "roots:"
// followed by a digit, a colon and 64 hex digits without a '/'). Root
// key_ids are public; so is this. At 73 bytes it is far under 1 KiB.
func RootsKeyID(ids []string) (string, error) {
	if len(ids) < 2 || len(ids) > MaxRoots {
		return "", fmt.Errorf("%w: %d roots, want 2..%d", ErrTooLarge, len(ids), MaxRoots)
	}
	h := sha256.New()
	h.Write([]byte(rootsKeyIDLabel))
	h.Write([]byte{byte(len(ids))})
	for _, id := range ids {
		if len(id) == 0 || len(id) > MaxKeyID {
			return "", fmt.Errorf("%w: root key_id is %d bytes, want 1..%d", ErrTooLarge, len(id), MaxKeyID)
		}
		var n [2]byte
		binary.BigEndian.PutUint16(n[:], uint16(len(id)))
		h.Write(n[:])
		h.Write([]byte(id))
	}
	return rootsKeyIDPrefix + strconv.Itoa(len(ids)) + ":" + hex.EncodeToString(h.Sum(nil)), nil
}

// EncodeKEK2 encodes a local KEK wrapped under several roots, in root order.
func EncodeKEK2(copies []Copy) ([]byte, error) {
	if len(copies) < 2 || len(copies) > MaxRoots {
		return nil, fmt.Errorf("%w: %d roots, want 2..%d", ErrTooLarge, len(copies), MaxRoots)
	}
	n := 2
	for _, c := range copies {
		switch {
		case len(c.Backend) == 0 || len(c.Backend) > MaxBackendName:
			return nil, fmt.Errorf("%w: backend name is %d bytes, want 1..%d", ErrTooLarge, len(c.Backend), MaxBackendName)
		case len(c.KeyID) == 0 || len(c.KeyID) > MaxKeyID:
			return nil, fmt.Errorf("%w: root key_id is %d bytes, want 1..%d", ErrTooLarge, len(c.KeyID), MaxKeyID)
		case len(c.RootCT) == 0 || len(c.RootCT) > MaxRootCT2:
			return nil, fmt.Errorf("%w: root ciphertext is %d bytes, want 1..%d", ErrTooLarge, len(c.RootCT), MaxRootCT2)
		}
		n += 1 + len(c.Backend) + 2 + len(c.KeyID) + 2 + len(c.RootCT)
	}
	b := make([]byte, 0, n)
	b = append(b, Version2, byte(len(copies)))
	for _, c := range copies {
		b = append(b, byte(len(c.Backend)))
		b = append(b, c.Backend...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(c.KeyID)))
		b = append(b, c.KeyID...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(c.RootCT)))
		b = append(b, c.RootCT...)
	}
	return b, nil
}

// DecodeKEK2 decodes a version-2 annotation. The returned slices alias b.
func DecodeKEK2(b []byte) ([]Copy, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty KEK annotation", ErrMalformed)
	}
	if b[0] != Version2 {
		return nil, fmt.Errorf("%w: KEK annotation version %d", ErrVersion, b[0])
	}
	if len(b) > MaxAnnotation2 {
		return nil, fmt.Errorf("%w: KEK annotation is %d bytes, max %d", ErrTooLarge, len(b), MaxAnnotation2)
	}
	if len(b) < 2 {
		return nil, fmt.Errorf("%w: KEK annotation root count", ErrMalformed)
	}
	n := int(b[1])
	if n < 2 || n > MaxRoots {
		return nil, fmt.Errorf("%w: KEK annotation has %d roots, want 2..%d", ErrMalformed, n, MaxRoots)
	}
	rest := b[2:]
	copies := make([]Copy, 0, n)
	for i := range n {
		if len(rest) < 1 {
			return nil, fmt.Errorf("%w: KEK annotation copy %d backend field", ErrMalformed, i)
		}
		l := int(rest[0])
		if l == 0 || l > MaxBackendName || l > len(rest)-1 {
			return nil, fmt.Errorf("%w: KEK annotation copy %d backend field", ErrMalformed, i)
		}
		name := rest[1 : 1+l]
		rest = rest[1+l:]
		id, r, ok := field(rest, MaxKeyID)
		if !ok {
			return nil, fmt.Errorf("%w: KEK annotation copy %d key_id field", ErrMalformed, i)
		}
		ct, r, ok := field(r, MaxRootCT2)
		if !ok {
			return nil, fmt.Errorf("%w: KEK annotation copy %d ciphertext field", ErrMalformed, i)
		}
		rest = r
		copies = append(copies, Copy{Backend: string(name), KeyID: string(id), RootCT: ct})
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes in KEK annotation", ErrMalformed, len(rest))
	}
	return copies, nil
}

// DecodeAnnotation decodes a wrapped KEK annotation of either version and
// computes the key_id its ciphertexts were made under. The returned slices
// alias b.
func DecodeAnnotation(b []byte) (Annotation, error) {
	if len(b) > 0 && b[0] == Version2 {
		copies, err := DecodeKEK2(b)
		if err != nil {
			return Annotation{}, err
		}
		ids := make([]string, len(copies))
		for i, c := range copies {
			ids[i] = c.KeyID
		}
		kid, err := RootsKeyID(ids)
		if err != nil {
			return Annotation{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return Annotation{Version: Version2, KeyID: kid, Copies: copies}, nil
	}
	id, ct, err := DecodeKEK(b)
	if err != nil {
		return Annotation{}, err
	}
	return Annotation{Version: Version1, KeyID: id, Copies: []Copy{{KeyID: id, RootCT: ct}}}, nil
}

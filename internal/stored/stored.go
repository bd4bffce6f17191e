// Package stored classifies the raw values kube-apiserver writes to etcd and
// decodes the KMS v2 EncryptedObject, without importing k8s.io/apiserver.
//
// A value is either encrypted, k8s:enc:<type>:<version>:<name>:<payload>, or
// plaintext (the identity provider): protobuf with the k8s\x00 magic, JSON, or
// CBOR. For KMS v2 the payload is the protobuf EncryptedObject of
// k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto:
//
//	bytes encryptedData = 1; string keyID = 2; bytes encryptedDEKSource = 3;
//	map<string, bytes> annotations = 4; EncryptedDEKSourceType encryptedDEKSourceType = 5;
//
// Parse reads nothing secret and returns nothing secret: no payload bytes
// leave this package except the (public) key_id and annotation digests.
package stored

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/keywarden/keywarden/kms/envelope"
)

// Class is what kind of value a stored object is.
type Class string

// The classes of stored values.
const (
	// KMSv2 is the KMS v2 provider: the value carries an EncryptedObject.
	KMSv2 Class = "kms:v2"
	// KMSv1 is the deprecated KMS v1 provider.
	KMSv1 Class = "kms:v1"
	// AESCBC, AESGCM and Secretbox are the local-key providers.
	AESCBC    Class = "aescbc:v1"
	AESGCM    Class = "aesgcm:v1"
	Secretbox Class = "secretbox:v1"
	// OtherEncrypted is a k8s:enc: prefix of a type this package does not
	// know (a future provider).
	OtherEncrypted Class = "other"
	// Plaintext is the identity provider: the object in clear.
	Plaintext Class = "identity"
	// Unrecognized is neither encrypted nor a known plaintext encoding.
	Unrecognized Class = "unrecognized"
	// Malformed is an encrypted prefix whose payload or prefix is broken:
	// kube-apiserver cannot read it either.
	Malformed Class = "malformed"
)

// Bounds kube-apiserver enforces on an EncryptedObject (kmsv2.ValidateEncryptedObject).
const (
	MaxKeyID              = 1 << 10
	MaxEncryptedDEKSource = 1 << 10
	MaxAnnotations        = 32 << 10
	// maxProviderName bounds the name in a prefix. Provider names are
	// short; a longer one means we are not looking at a prefix.
	maxProviderName = 253
)

// DEK source types (EncryptedDEKSourceType; proto3 omits the zero value).
const (
	AESGCMKey         = 0
	HKDFSHA256XNonce  = 1
	encPrefix         = "k8s:enc:"
	protobufMagic     = "k8s\x00"
	cborSelfDescribed = "\xd9\xd9\xf7"
)

// ErrMalformed is returned for a value kube-apiserver could not decode.
var ErrMalformed = errors.New("malformed stored value")

// Value is what Parse learns of one stored value.
type Value struct {
	Class Class
	// Provider is the provider name in the prefix (the key name for aescbc,
	// aesgcm, secretbox); empty for plaintext.
	Provider string
	// Object is set for KMS v2 values that decode.
	Object *EncryptedObject
	// Err says why a value is Malformed.
	Err error
}

// Label names the provider as "<type>:<version>:<name>", or the class for
// values without a provider.
func (v Value) Label() string {
	if v.Provider == "" || v.Class == Malformed {
		return string(v.Class)
	}
	return string(v.Class) + ":" + v.Provider
}

// EncryptedObject is the KMS v2 storage envelope, minus the encrypted data.
type EncryptedObject struct {
	// KeyID is the plugin's key_id (for keywarden, the root key version).
	KeyID string
	// DEKSourceType is AESGCMKey (0) or HKDFSHA256XNonce (1, what
	// kube-apiserver 1.29+ writes).
	DEKSourceType int32
	// EncryptedDataLen and EncryptedDEKSourceLen are sizes only.
	EncryptedDataLen      int
	EncryptedDEKSourceLen int
	// Annotations are the plugin's annotations (public by contract).
	Annotations map[string][]byte
}

// LocalKEK identifies the keywarden local KEK an object's seed is sealed
// under: a digest of the kek.keywarden.io annotation (the wrapped KEK, which
// is public), and the root key version that wrapped it.
type LocalKEK struct {
	// ID is the first 16 hex digits of SHA-256 of the annotation.
	ID string
	// RootKeyID is the root key version that must unwrap it; for a KEK
	// wrapped under several roots, the key_id that names them all
	// (envelope.RootsKeyID), which the object's key_id must equal too.
	RootKeyID string
	// Roots are the root key versions that each hold a copy of it: one,
	// RootKeyID itself, or one per root.
	Roots []string
}

// KeywardenKEK decodes keywarden's annotation. ok is false if the object has
// none (another plugin wrote it); err is set if it has one that is broken.
func (o *EncryptedObject) KeywardenKEK() (k LocalKEK, ok bool, err error) {
	ann, ok := o.Annotations[envelope.AnnotationKey]
	if !ok {
		return LocalKEK{}, false, nil
	}
	a, err := envelope.DecodeAnnotation(ann)
	if err != nil {
		return LocalKEK{}, true, err
	}
	roots := make([]string, len(a.Copies))
	for i, c := range a.Copies {
		roots[i] = c.KeyID
	}
	return LocalKEK{ID: Digest(ann), RootKeyID: a.KeyID, Roots: roots}, true, nil
}

// Digest is a short, stable, non-reversible name for public bytes.
func Digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// Parse classifies one stored value. It never fails: a broken value is
// Class Malformed with Err set.
func Parse(v []byte) Value {
	if !bytes.HasPrefix(v, []byte(encPrefix)) {
		switch {
		case bytes.HasPrefix(v, []byte(protobufMagic)),
			bytes.HasPrefix(v, []byte(cborSelfDescribed)),
			len(v) > 0 && v[0] == '{':
			return Value{Class: Plaintext}
		}
		return Value{Class: Unrecognized}
	}
	rest := v[len(encPrefix):]
	var parts [3]string
	for i := range parts {
		j := bytes.IndexByte(rest, ':')
		if j < 0 || j > maxProviderName {
			return Value{Class: Malformed, Err: fmt.Errorf("%w: truncated k8s:enc: prefix", ErrMalformed)}
		}
		parts[i], rest = string(rest[:j]), rest[j+1:]
	}
	typ, name := parts[0]+":"+parts[1], printable(parts[2])
	if name == "" {
		return Value{Class: Malformed, Err: fmt.Errorf("%w: empty provider name", ErrMalformed)}
	}
	switch Class(typ) {
	case KMSv2:
		o, err := DecodeEncryptedObject(rest)
		if err != nil {
			return Value{Class: Malformed, Provider: name, Err: err}
		}
		return Value{Class: KMSv2, Provider: name, Object: o}
	case KMSv1, AESCBC, AESGCM, Secretbox:
		return Value{Class: Class(typ), Provider: name}
	}
	return Value{Class: OtherEncrypted, Provider: printable(typ) + ":" + name}
}

// printable keeps labels made of stored bytes safe to print. Every byte
// outside printable ASCII becomes '?'.
func printable(s string) string {
	if len(s) > maxProviderName {
		s = s[:maxProviderName]
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

// DecodeEncryptedObject decodes and validates an EncryptedObject as
// kube-apiserver does: unknown fields are skipped, the last of a repeated
// scalar wins, and the result must pass the apiserver's validation (known
// DEK source type, non-empty data, key_id and DEK source within bounds,
// annotation keys fully qualified and under 32 kB in all).
func DecodeEncryptedObject(b []byte) (*EncryptedObject, error) {
	o := &EncryptedObject{}
	var annSize int
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: EncryptedObject tag: %w", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			var v []byte
			v, n = protowire.ConsumeBytes(b)
			o.EncryptedDataLen = len(v)
		case num == 2 && typ == protowire.BytesType:
			var v []byte
			v, n = protowire.ConsumeBytes(b)
			if n >= 0 && len(v) > MaxKeyID {
				return nil, fmt.Errorf("%w: keyID is %d bytes, max %d", ErrMalformed, len(v), MaxKeyID)
			}
			o.KeyID = string(v)
		case num == 3 && typ == protowire.BytesType:
			var v []byte
			v, n = protowire.ConsumeBytes(b)
			o.EncryptedDEKSourceLen = len(v)
		case num == 4 && typ == protowire.BytesType:
			var entry []byte
			entry, n = protowire.ConsumeBytes(b)
			if n < 0 {
				break
			}
			k, v, err := decodeMapEntry(entry)
			if err != nil {
				return nil, err
			}
			if old, dup := o.Annotations[k]; dup {
				annSize -= len(k) + len(old) // a repeated map key replaces the entry
			}
			annSize += len(k) + len(v)
			if annSize > MaxAnnotations {
				return nil, fmt.Errorf("%w: annotations exceed %d bytes", ErrMalformed, MaxAnnotations)
			}
			if o.Annotations == nil {
				o.Annotations = map[string][]byte{}
			}
			o.Annotations[k] = bytes.Clone(v)
		case num == 5 && typ == protowire.VarintType:
			var x uint64
			x, n = protowire.ConsumeVarint(b)
			o.DEKSourceType = int32(x) //nolint:gosec // protobuf enum semantics: truncate to int32
		case num >= 1 && num <= 5:
			return nil, fmt.Errorf("%w: EncryptedObject field %d has wire type %d", ErrMalformed, num, typ)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, fmt.Errorf("%w: EncryptedObject field %d: %w", ErrMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return o, o.validate()
}

func (o *EncryptedObject) validate() error {
	switch {
	case o.DEKSourceType != AESGCMKey && o.DEKSourceType != HKDFSHA256XNonce:
		return fmt.Errorf("%w: unknown encryptedDEKSourceType %d", ErrMalformed, o.DEKSourceType)
	case o.EncryptedDataLen == 0:
		return fmt.Errorf("%w: encryptedData is empty", ErrMalformed)
	case o.EncryptedDEKSourceLen == 0 || o.EncryptedDEKSourceLen > MaxEncryptedDEKSource:
		return fmt.Errorf("%w: encryptedDEKSource is %d bytes, want 1..%d", ErrMalformed, o.EncryptedDEKSourceLen, MaxEncryptedDEKSource)
	case o.KeyID == "":
		return fmt.Errorf("%w: keyID is empty", ErrMalformed)
	}
	for k := range o.Annotations {
		if errs := validation.IsFullyQualifiedDomainName(field.NewPath("annotations"), k); len(errs) > 0 {
			return fmt.Errorf("%w: annotation key %q is not a fully qualified domain name", ErrMalformed, printable(k))
		}
	}
	return nil
}

// decodeMapEntry decodes a map<string, bytes> entry (key = 1, value = 2).
func decodeMapEntry(b []byte) (string, []byte, error) {
	var key string
	var val []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", nil, fmt.Errorf("%w: annotation tag: %w", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			var s []byte
			s, n = protowire.ConsumeBytes(b)
			key = string(s)
		case num == 2 && typ == protowire.BytesType:
			val, n = protowire.ConsumeBytes(b)
		case num == 1 || num == 2:
			return "", nil, fmt.Errorf("%w: annotation field %d has wire type %d", ErrMalformed, num, typ)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return "", nil, fmt.Errorf("%w: annotation field %d: %w", ErrMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return key, val, nil
}

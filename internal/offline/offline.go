// Package offline reads a cluster's KMS v2 values with the private
// recovery key alone, when every root keystore is lost (kmsctl recover).
//
// The values are opened by kube-apiserver's own KMS v2 envelope
// transformer (k8s.io/apiserver/.../envelope/kmsv2), so the seed's KDF, the
// data nonce and the AAD (the etcd key) are exactly the apiserver's; only
// the KMS service behind it is ours: Decrypter, which unwraps each local KEK
// from its recovery copy and opens keywarden's ciphertext under it, as a
// keywarden node would after unwrapping the KEK from a root.
package offline

import (
	"bytes"
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/apiserver/pkg/storage/value"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/recovery"
	"github.com/keywarden/keywarden/kms/envelope"
)

// ErrNoRecoveryCopy: the value's local KEK was made before the recovery
// key was configured (or by another plugin): it has no copy sealed to the
// recovery key. Rewriting it (kmsctl migrate) while a root still works is
// the cure.
var ErrNoRecoveryCopy = errors.New("local KEK has no copy sealed to this recovery key")

// Decrypter is a KMS v2 service that decrypts with the private recovery
// key. It never encrypts.
type Decrypter struct {
	key  *recovery.PrivateKey
	mu   sync.Mutex
	keks map[string]cipher.AEAD // by annotation bytes
}

var _ service.Service = (*Decrypter)(nil)

// NewDecrypter makes a Decrypter over key.
func NewDecrypter(key *recovery.PrivateKey) *Decrypter {
	return &Decrypter{key: key, keks: map[string]cipher.AEAD{}}
}

// Decrypt implements service.Service: the local KEK from the annotation's
// recovery copy, then the seed, with the AAD a node uses.
func (d *Decrypter) Decrypt(_ context.Context, _ string, req *service.DecryptRequest) ([]byte, error) {
	ann := req.Annotations[envelope.AnnotationKey]
	if len(ann) == 0 {
		return nil, fmt.Errorf("%w: no %s annotation (not written by keywarden)", ErrNoRecoveryCopy, envelope.AnnotationKey)
	}
	aead, err := d.kek(ann, req.KeyID)
	if err != nil {
		return nil, err
	}
	return envelope.Open(aead, req.Ciphertext, envelope.AAD(req.KeyID, ann))
}

func (d *Decrypter) kek(ann []byte, keyID string) (cipher.AEAD, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.keks[string(ann)]; ok {
		return a, nil
	}
	a, err := envelope.DecodeAnnotation(ann)
	if err != nil {
		return nil, err
	}
	if a.KeyID != keyID {
		return nil, fmt.Errorf("%w: key_id does not match the annotation", envelope.ErrMalformed)
	}
	var c *envelope.Copy
	for i := range a.Copies {
		if a.Copies[i].Backend == recovery.Name && a.Copies[i].KeyID == d.key.KeyID() {
			c = &a.Copies[i]
		}
	}
	if c == nil {
		return nil, ErrNoRecoveryCopy
	}
	key, err := d.key.Unwrap(keystore.Wrapped{KeyID: c.KeyID, Ciphertext: c.RootCT}, envelope.RootAAD())
	if err != nil {
		return nil, err
	}
	aead, err := envelope.NewAEAD(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	d.keks[string(ann)] = aead
	return aead, nil
}

// KEKs is how many distinct local KEKs were unwrapped.
func (d *Decrypter) KEKs() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.keks)
}

var errNoEncrypt = errors.New("offline recovery never encrypts")

// Encrypt implements service.Service; it always fails.
func (d *Decrypter) Encrypt(context.Context, string, []byte) (*service.EncryptResponse, error) {
	return nil, errNoEncrypt
}

// Status implements service.Service.
func (d *Decrypter) Status(context.Context) (*service.StatusResponse, error) {
	return &service.StatusResponse{Version: "v2", Healthz: "ok", KeyID: d.key.KeyID()}, nil
}

// Reader opens stored values through the apiserver's KMS v2 transformer.
type Reader struct {
	d  *Decrypter
	mu sync.Mutex
	ts map[string]value.Transformer // by provider name
}

// NewReader makes a Reader over key.
func NewReader(key *recovery.PrivateKey) *Reader {
	return &Reader{d: NewDecrypter(key), ts: map[string]value.Transformer{}}
}

// Decrypter returns the Reader's Decrypter.
func (r *Reader) Decrypter() *Decrypter { return r.d }

// noState is the transformer's write state: recovery never writes, and a
// read only compares the key_id with it to report staleness.
func noState() (kmsv2.State, error) { return kmsv2.State{}, nil }

func (r *Reader) transformer(provider string) value.Transformer {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.ts[provider]
	if !ok {
		t = kmsv2.NewEnvelopeTransformer(r.d, provider, noState, "kmsctl-recover")
		r.ts[provider] = t
	}
	return t
}

// ErrNotKMSv2 is returned by Open for a value that is not KMS v2.
var ErrNotKMSv2 = errors.New("not a KMS v2 value")

// Open decrypts one stored KMS v2 value read at etcd key key (the AAD, as
// the apiserver binds it). v is what stored.Parse made of raw.
func (r *Reader) Open(ctx context.Context, key string, raw []byte, v stored.Value) ([]byte, error) {
	if v.Class != stored.KMSv2 {
		return nil, fmt.Errorf("%w: %s", ErrNotKMSv2, v.Label())
	}
	prefix := []byte("k8s:enc:kms:v2:" + v.Provider + ":")
	if !bytes.HasPrefix(raw, prefix) {
		return nil, fmt.Errorf("%w: provider name not printable", stored.ErrMalformed)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pt, _, err := r.transformer(v.Provider).TransformFromStorage(ctx, raw[len(prefix):], value.DefaultContext(key))
	return pt, err
}

package lab

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore"
)

// PerCall is a BENCHMARK-ONLY KMS v2 service that calls its keystore on
// every request: Encrypt wraps the apiserver's seed with the root key,
// Decrypt unwraps it. It is how a plugin without a local KEK works, and it
// exists so that the benchmark can show what keywarden's local KEK, LRU and
// singleflight save when the keystore is slow. It validates little and maps
// errors crudely; never ship it.
type PerCall struct {
	Backend keystore.Backend
}

var _ service.Service = (*PerCall)(nil)

// perCallAAD binds PerCall's ciphertexts to their purpose.
var perCallAAD = []byte("keywarden-bench-percall")

// Status implements service.Service. Like keywarden's, it answers from
// memory: the comparison is about Encrypt and Decrypt.
func (p *PerCall) Status(context.Context) (*service.StatusResponse, error) {
	return &service.StatusResponse{Version: "v2", Healthz: "ok", KeyID: "percall"}, nil
}

// Encrypt implements service.Service: one keystore Wrap per call.
func (p *PerCall) Encrypt(ctx context.Context, _ string, pt []byte) (*service.EncryptResponse, error) {
	w, err := p.Backend.Wrap(ctx, pt, perCallAAD)
	if err != nil {
		return nil, perCallStatus(err)
	}
	ann, err := encodePerCall(w)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &service.EncryptResponse{Ciphertext: ann, KeyID: "percall"}, nil
}

// Decrypt implements service.Service: one keystore Unwrap per call.
func (p *PerCall) Decrypt(ctx context.Context, _ string, req *service.DecryptRequest) ([]byte, error) {
	w, err := decodePerCall(req.Ciphertext)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	pt, err := p.Backend.Unwrap(ctx, w, perCallAAD)
	if err != nil {
		return nil, perCallStatus(err)
	}
	return pt, nil
}

// The ciphertext is the root key_id's length (one byte), the key_id and the
// keystore's ciphertext: enough to find the version again.
func encodePerCall(w keystore.Wrapped) ([]byte, error) {
	if len(w.KeyID) == 0 || len(w.KeyID) > 255 {
		return nil, fmt.Errorf("key_id of %d bytes", len(w.KeyID))
	}
	out := make([]byte, 0, 1+len(w.KeyID)+len(w.Ciphertext))
	out = append(out, byte(len(w.KeyID)))
	out = append(out, w.KeyID...)
	return append(out, w.Ciphertext...), nil
}

func decodePerCall(b []byte) (keystore.Wrapped, error) {
	if len(b) < 2 || int(b[0]) == 0 || len(b) < 1+int(b[0]) {
		return keystore.Wrapped{}, errors.New("malformed per-call ciphertext")
	}
	n := int(b[0])
	return keystore.Wrapped{KeyID: string(b[1 : 1+n]), Ciphertext: b[1+n:]}, nil
}

func perCallStatus(err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, keystore.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	default:
		return status.Error(codes.Unavailable, err.Error())
	}
}

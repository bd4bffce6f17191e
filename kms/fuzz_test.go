package kms

import (
	"bytes"
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/kms/envelope"
)

// FuzzDecrypt: no input panics, every failure carries a real status code,
// and nothing but the exact ciphertext we made decrypts.
func FuzzDecrypt(f *testing.F) {
	e := newEnv(f)
	s, err := New(context.Background(), Config{Backend: e.spy})
	if err != nil {
		f.Fatal(err)
	}
	pt := bytes.Repeat([]byte{7}, 32)
	r, err := s.Encrypt(context.Background(), "fuzz", pt)
	if err != nil {
		f.Fatal(err)
	}
	ann := r.Annotations[envelope.AnnotationKey]
	f.Add(r.Ciphertext, r.KeyID, ann)
	f.Add([]byte{}, "", []byte{})
	f.Add(r.Ciphertext[:20], r.KeyID, ann[:10])
	f.Add(append([]byte{2}, r.Ciphertext[1:]...), r.KeyID+"x", ann)
	f.Fuzz(func(t *testing.T, ct []byte, keyID string, a []byte) {
		got, err := s.Decrypt(context.Background(), "fuzz", &service.DecryptRequest{
			Ciphertext: ct, KeyID: keyID, Annotations: map[string][]byte{envelope.AnnotationKey: a},
		})
		if err == nil {
			if !bytes.Equal(ct, r.Ciphertext) || keyID != r.KeyID || !bytes.Equal(a, ann) || !bytes.Equal(got, pt) {
				t.Fatalf("forged request decrypted")
			}
			return
		}
		switch codeOf(err) {
		case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition:
		default:
			t.Fatalf("hostile input got %v", err)
		}
	})
}

// FuzzDecryptRoots: FuzzDecrypt's properties with two roots, whose
// annotations are of version 2.
func FuzzDecryptRoots(f *testing.F) {
	rs := newRoots(f, "file", "awskms")
	s := rs.service(f, nil)
	pt := bytes.Repeat([]byte{7}, 32)
	r, err := s.Encrypt(context.Background(), "fuzz", pt)
	if err != nil {
		f.Fatal(err)
	}
	ann := r.Annotations[envelope.AnnotationKey]
	f.Add(r.Ciphertext, r.KeyID, ann)
	f.Add(r.Ciphertext, r.KeyID, ann[:len(ann)-1])
	f.Add(r.Ciphertext, r.KeyID, append([]byte{1}, ann[1:]...))
	swapped := bytes.Clone(ann)
	swapped[len(swapped)-1] ^= 1
	f.Add(r.Ciphertext, r.KeyID, swapped)
	f.Add(r.Ciphertext[:20], "roots:2:", []byte{2, 2})
	f.Fuzz(func(t *testing.T, ct []byte, keyID string, a []byte) {
		got, err := s.Decrypt(context.Background(), "fuzz", &service.DecryptRequest{
			Ciphertext: ct, KeyID: keyID, Annotations: map[string][]byte{envelope.AnnotationKey: a},
		})
		if err == nil {
			if !bytes.Equal(ct, r.Ciphertext) || keyID != r.KeyID || !bytes.Equal(a, ann) || !bytes.Equal(got, pt) {
				t.Fatalf("forged request decrypted")
			}
			return
		}
		switch codeOf(err) {
		case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition:
		default:
			t.Fatalf("hostile input got %v", err)
		}
	})
}

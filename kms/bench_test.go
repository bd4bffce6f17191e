package kms

import (
	"context"
	"testing"
)

// In-process cost of the hot path with a warm local KEK: no keystore call,
// no gRPC. The socket-level figures, against a no-op floor, live in bench/.
func BenchmarkEncrypt(b *testing.B) {
	s := newEnv(b).service(nil)
	pt := seed(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Encrypt(ctx, "bench", pt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	s := newEnv(b).service(nil)
	q := req(encrypt(b, s, seed(b)))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Decrypt(ctx, "bench", q); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecryptParallel(b *testing.B) {
	s := newEnv(b).service(nil)
	q := req(encrypt(b, s, seed(b)))
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Decrypt(ctx, "bench", q); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

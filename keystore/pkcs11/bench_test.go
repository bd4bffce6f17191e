//go:build !nopkcs11

package pkcs11

import (
	"context"
	"testing"
)

// Raw HSM latency: one Wrap or Unwrap is C_EncryptInit/C_DecryptInit plus
// C_Encrypt/C_Decrypt of a 32-byte KEK on a pooled, logged-in session.
// keywarden's local KEK cache keeps these off the request path; these
// numbers are what a cache miss (or a plugin without the cache) pays.

func BenchmarkWrap(b *testing.B) {
	be, _ := newBackend(b)
	ctx := context.Background()
	aad := []byte("keywarden bench aad")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.Wrap(ctx, kek, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrap(b *testing.B) {
	be, _ := newBackend(b)
	ctx := context.Background()
	aad := []byte("keywarden bench aad")
	w, err := be.Wrap(ctx, kek, aad)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.Unwrap(ctx, w, aad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnwrapParallel is the cold-start storm: many Decrypts at once,
// queued over the session pool.
func BenchmarkUnwrapParallel(b *testing.B) {
	be, _ := newBackend(b)
	ctx := context.Background()
	aad := []byte("keywarden bench aad")
	w, err := be.Wrap(ctx, kek, aad)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(8) // 8×GOMAXPROCS goroutines over the pool
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := be.Unwrap(ctx, w, aad); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkKeyID(b *testing.B) {
	be, _ := newBackend(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.KeyID(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

package kms

import (
	"context"
	"fmt"
	"testing"

	"github.com/keywarden/keywarden/keystore"
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

// benchRoots is a Service over n file-keyset roots.
func benchRoots(b *testing.B, n int) (*rootSet, *Service) {
	rs := newRoots(b, rootNames(n)...)
	return rs, rs.service(b, nil)
}

// rootNames names n roots as different backends (each a file keyset).
func rootNames(n int) []string { return []string{"file", "awskms", "vault"}[:n] }

// The cost of a second root and of the recovery seal at KEK mint: one more
// keystore Wrap per local KEK for a root, one HPKE seal for the recovery
// key (never per request). Reported per mint: ns and wraps.
func BenchmarkMint(b *testing.B) {
	for _, c := range []struct {
		name     string
		n        int
		recovery bool
	}{{"roots=1", 1, false}, {"roots=2", 2, false}, {"roots=1+recovery", 1, true}, {"roots=2+recovery", 2, true}} {
		b.Run(c.name, func(b *testing.B) {
			rs := newRoots(b, rootNames(c.n)...)
			var mod func(*Config)
			if c.recovery {
				_, pub := newRecovery(b)
				mod = func(cfg *Config) { cfg.Recovery = pub }
			}
			s := rs.service(b, mod)
			before := rs.wraps()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				s.mintMu.Lock()
				_, err := s.newLocalKEK(ctx, "bench")
				s.mintMu.Unlock()
				if err != nil {
					b.Fatal(err)
				}
			}
			var wraps int64
			for i, w := range rs.wraps() {
				wraps += w - before[i]
			}
			b.ReportMetric(float64(wraps)/float64(b.N), "wraps/op")
		})
	}
}

// The cold path: a Decrypt whose local KEK is not in memory. With every
// root up the primary serves it, one keystore call whatever the number of
// roots; with the primary down the first such Decrypt asks it once, and
// later ones skip it until a check reaches it. Reported per Decrypt: ns
// and keystore unwraps.
func BenchmarkColdDecrypt(b *testing.B) {
	for _, c := range []struct {
		name        string
		n           int
		primaryDown bool
	}{{"roots=1", 1, false}, {"roots=2", 2, false}, {"roots=2/primary-down", 2, true}} {
		b.Run(c.name, func(b *testing.B) {
			rs, s := benchRoots(b, c.n)
			q := req(encrypt(b, rs.service(b, nil), seed(b)))
			if c.primaryDown {
				rs.envs[0].spy.SetErr(keystore.ErrUnavailable)
			}
			before := rs.unwraps()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				s.cache.Purge()
				if _, err := s.Decrypt(ctx, "bench", q); err != nil {
					b.Fatal(err)
				}
			}
			var unwraps int64
			for i, u := range rs.unwraps() {
				unwraps += u - before[i]
			}
			b.ReportMetric(float64(unwraps)/float64(b.N), "unwraps/op")
		})
	}
}

// The warm path must not change with a second root: a Decrypt of the
// current KEK's ciphertext is the same in-memory work.
func BenchmarkDecryptRoots(b *testing.B) {
	for _, n := range []int{1, 2} {
		b.Run(fmt.Sprintf("roots=%d", n), func(b *testing.B) {
			_, s := benchRoots(b, n)
			q := req(encrypt(b, s, seed(b)))
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Decrypt(ctx, "bench", q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

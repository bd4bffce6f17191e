// Package keystoretest is the conformance suite every keystore.Backend runs.
//
// A backend's test calls Run with a function that opens a fresh backend (with
// its own root key) for each subtest. The suite checks the contract written on
// keystore.Backend: round trip, AAD binding, tampering and truncation, key_id
// stability and rotation, concurrency (run it under -race) and cancellation.
package keystoretest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/keystore"
)

// Fixture is one freshly opened backend and the hooks the suite needs.
type Fixture struct {
	// Backend under test. The suite closes it.
	Backend keystore.Backend
	// Rotate adds a new root key version and makes it primary, through the
	// backend's own management path. Nil skips the rotation checks (say why
	// in the backend's docs).
	Rotate func(ctx context.Context) error
	// MaxFlips bounds the single-bit-flip sweep for backends whose every
	// Unwrap is slow (an RSA HSM, a remote emulator). Zero flips every bit.
	MaxFlips int
}

// Opener opens a new Fixture with a root key of its own. It registers its own
// cleanup with t.
type Opener func(t *testing.T) Fixture

// KEKSize is the size of the secrets keywarden wraps (AES-256 local KEKs).
const KEKSize = 32

// Run runs the whole suite.
func Run(t *testing.T, open Opener) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, open Opener)
	}{
		{"RoundTrip", testRoundTrip},
		{"KeyIDStable", testKeyIDStable},
		{"AADBound", testAADBound},
		{"Tampered", testTampered},
		{"Truncated", testTruncated},
		{"UnknownKeyID", testUnknownKeyID},
		{"ForeignCiphertext", testForeign},
		{"Rotation", testRotation},
		{"Concurrent", testConcurrent},
		{"Cancelled", testCancelled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

func openFixture(t *testing.T, open Opener) Fixture {
	t.Helper()
	f := open(t)
	if f.Backend == nil {
		t.Fatal("opener returned no backend")
	}
	t.Cleanup(func() {
		if err := f.Backend.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

func secret(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, KEKSize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func wrap(t *testing.T, b keystore.Backend, pt, aad []byte) keystore.Wrapped {
	t.Helper()
	w, err := b.Wrap(context.Background(), pt, aad)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	return w
}

func testRoundTrip(t *testing.T, open Opener) {
	f := openFixture(t, open)
	ctx := context.Background()
	kid, err := f.Backend.KeyID(ctx)
	if err != nil {
		t.Fatalf("KeyID: %v", err)
	}
	if kid == "" || len(kid) > keystore.MaxKeyIDLen {
		t.Fatalf("KeyID %q: want non-empty and at most %d bytes", kid, keystore.MaxKeyIDLen)
	}
	if f.Backend.Name() == "" {
		t.Fatal("Name() is empty")
	}
	for _, aad := range [][]byte{nil, []byte("keywarden test aad")} {
		pt := secret(t)
		w := wrap(t, f.Backend, pt, aad)
		if w.KeyID != kid {
			t.Fatalf("Wrapped.KeyID = %q, want primary %q", w.KeyID, kid)
		}
		if bytes.Contains(w.Ciphertext, pt) {
			t.Fatal("ciphertext contains the plaintext")
		}
		got, err := f.Backend.Unwrap(ctx, w, aad)
		if err != nil {
			t.Fatalf("Unwrap: %v", err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatal("Unwrap returned different bytes")
		}
		// Two wraps of the same secret must differ (randomised encryption).
		w2 := wrap(t, f.Backend, pt, aad)
		if bytes.Equal(w.Ciphertext, w2.Ciphertext) {
			t.Fatal("two wraps of the same secret gave the same ciphertext")
		}
	}
}

func testKeyIDStable(t *testing.T, open Opener) {
	f := openFixture(t, open)
	ctx := context.Background()
	first, err := f.Backend.KeyID(ctx)
	if err != nil {
		t.Fatalf("KeyID: %v", err)
	}
	for range 5 {
		wrap(t, f.Backend, secret(t), nil)
		kid, err := f.Backend.KeyID(ctx)
		if err != nil {
			t.Fatalf("KeyID: %v", err)
		}
		if kid != first {
			t.Fatalf("KeyID changed without rotation: %q then %q", first, kid)
		}
	}
}

func testAADBound(t *testing.T, open Opener) {
	f := openFixture(t, open)
	ctx := context.Background()
	w := wrap(t, f.Backend, secret(t), []byte("aad-one"))
	for _, aad := range [][]byte{nil, []byte("aad-two"), []byte("aad-one\x00")} {
		_, err := f.Backend.Unwrap(ctx, w, aad)
		if !errors.Is(err, keystore.ErrInvalid) {
			t.Fatalf("Unwrap with aad %q: got %v, want ErrInvalid", aad, err)
		}
	}
}

func testTampered(t *testing.T, open Opener) {
	f := openFixture(t, open)
	ctx := context.Background()
	aad := []byte("aad")
	w := wrap(t, f.Backend, secret(t), aad)
	bits := len(w.Ciphertext) * 8
	step := 1
	if f.MaxFlips > 0 && bits > f.MaxFlips {
		step = bits / f.MaxFlips
	}
	for i := 0; i < bits; i += step {
		ct := bytes.Clone(w.Ciphertext)
		ct[i/8] ^= 1 << (i % 8)
		_, err := f.Backend.Unwrap(ctx, keystore.Wrapped{KeyID: w.KeyID, Ciphertext: ct}, aad)
		if !errors.Is(err, keystore.ErrInvalid) {
			t.Fatalf("bit %d flipped: got %v, want ErrInvalid", i, err)
		}
	}
}

func testTruncated(t *testing.T, open Opener) {
	f := openFixture(t, open)
	ctx := context.Background()
	w := wrap(t, f.Backend, secret(t), nil)
	cases := []int{}
	for n := 0; n < len(w.Ciphertext); n++ {
		cases = append(cases, n)
	}
	if f.MaxFlips > 0 && len(cases) > f.MaxFlips {
		cases = []int{0, 1, len(w.Ciphertext) / 2, len(w.Ciphertext) - 1}
	}
	for _, n := range cases {
		_, err := f.Backend.Unwrap(ctx, keystore.Wrapped{KeyID: w.KeyID, Ciphertext: w.Ciphertext[:n]}, nil)
		if !errors.Is(err, keystore.ErrInvalid) {
			t.Fatalf("truncated to %d bytes: got %v, want ErrInvalid", n, err)
		}
	}
	long := append(bytes.Clone(w.Ciphertext), 0)
	if _, err := f.Backend.Unwrap(ctx, keystore.Wrapped{KeyID: w.KeyID, Ciphertext: long}, nil); !errors.Is(err, keystore.ErrInvalid) {
		t.Fatalf("extended by one byte: got %v, want ErrInvalid", err)
	}
}

func testUnknownKeyID(t *testing.T, open Opener) {
	f := openFixture(t, open)
	ctx := context.Background()
	w := wrap(t, f.Backend, secret(t), nil)
	for _, kid := range []string{w.KeyID + "x", "keywarden-no-such-key"} {
		_, err := f.Backend.Unwrap(ctx, keystore.Wrapped{KeyID: kid, Ciphertext: w.Ciphertext}, nil)
		if !errors.Is(err, keystore.ErrKeyNotFound) && !errors.Is(err, keystore.ErrInvalid) {
			t.Fatalf("Unwrap with key_id %q: got %v, want ErrKeyNotFound or ErrInvalid", kid, err)
		}
	}
	if _, err := f.Backend.Unwrap(ctx, keystore.Wrapped{Ciphertext: w.Ciphertext}, nil); err == nil {
		t.Fatal("Unwrap with empty key_id succeeded")
	}
}

// A ciphertext made by another root key (another fixture) must not unwrap,
// even when presented under this backend's own key_id.
func testForeign(t *testing.T, open Opener) {
	a := openFixture(t, open)
	b := openFixture(t, open)
	ctx := context.Background()
	wa := wrap(t, a.Backend, secret(t), nil)
	wb := wrap(t, b.Backend, secret(t), nil)
	if wa.KeyID == wb.KeyID {
		t.Fatalf("two independent root keys share key_id %q", wa.KeyID)
	}
	if _, err := a.Backend.Unwrap(ctx, wb, nil); err == nil {
		t.Fatal("foreign ciphertext unwrapped under its own key_id")
	}
	if _, err := a.Backend.Unwrap(ctx, keystore.Wrapped{KeyID: wa.KeyID, Ciphertext: wb.Ciphertext}, nil); err == nil {
		t.Fatal("foreign ciphertext unwrapped under our key_id")
	}
}

func testRotation(t *testing.T, open Opener) {
	f := openFixture(t, open)
	if f.Rotate == nil {
		t.Skip("backend has no rotation hook")
	}
	ctx := context.Background()
	old, err := f.Backend.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pt := secret(t)
	wOld := wrap(t, f.Backend, pt, []byte("r"))
	if err := f.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	cur, err := f.Backend.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cur == old {
		t.Fatalf("KeyID unchanged after rotation: %q", cur)
	}
	wNew := wrap(t, f.Backend, pt, []byte("r"))
	if wNew.KeyID != cur {
		t.Fatalf("Wrap after rotation used %q, want %q", wNew.KeyID, cur)
	}
	for _, w := range []keystore.Wrapped{wOld, wNew} {
		got, err := f.Backend.Unwrap(ctx, w, []byte("r"))
		if err != nil {
			t.Fatalf("Unwrap %s after rotation: %v", w.KeyID, err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatal("Unwrap after rotation returned different bytes")
		}
	}
	// Presenting the old ciphertext under the new key_id must not work.
	if _, err := f.Backend.Unwrap(ctx, keystore.Wrapped{KeyID: cur, Ciphertext: wOld.Ciphertext}, []byte("r")); err == nil {
		t.Fatal("old ciphertext unwrapped under the new key_id")
	}
	// A second rotation never returns to an earlier key_id.
	if err := f.Rotate(ctx); err != nil {
		t.Fatalf("second Rotate: %v", err)
	}
	third, err := f.Backend.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if third == old || third == cur {
		t.Fatalf("key_id %q reused after second rotation", third)
	}
}

func testConcurrent(t *testing.T, open Opener) {
	f := openFixture(t, open)
	ctx := context.Background()
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := range workers {
		wg.Go(func() {
			for i := range each {
				pt := []byte(fmt.Sprintf("%032d", g*each+i))
				aad := []byte{byte(g)}
				w, err := f.Backend.Wrap(ctx, pt, aad)
				if err != nil {
					errs <- fmt.Errorf("Wrap: %w", err)
					return
				}
				got, err := f.Backend.Unwrap(ctx, w, aad)
				if err != nil {
					errs <- fmt.Errorf("Unwrap: %w", err)
					return
				}
				if !bytes.Equal(got, pt) {
					errs <- errors.New("concurrent round trip returned different bytes")
					return
				}
				if _, err := f.Backend.KeyID(ctx); err != nil {
					errs <- fmt.Errorf("KeyID: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func testCancelled(t *testing.T, open Opener) {
	f := openFixture(t, open)
	w := wrap(t, f.Backend, secret(t), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.Backend.Wrap(ctx, secret(t), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wrap with cancelled context: got %v, want context.Canceled", err)
	}
	if _, err := f.Backend.Unwrap(ctx, w, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Unwrap with cancelled context: got %v, want context.Canceled", err)
	}
}

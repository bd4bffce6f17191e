package awskms

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// faultProxy sits between the backend and local-kms on 127.0.0.1 and answers
// Encrypt with an AWS error, or not at all, on demand.
type faultProxy struct {
	fail atomic.Int64 // answer this many Encrypts with code
	code atomic.Value // string
	hang atomic.Bool
	seen atomic.Int64
}

func newFaultProxy(t *testing.T) (*faultProxy, string) {
	t.Helper()
	target, _ := url.Parse(lk.endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	fp := &faultProxy{}
	fp.code.Store("ThrottlingException")
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Target") == "TrentService.Encrypt" {
			fp.seen.Add(1)
			if fp.hang.Load() {
				// The server notices the client hang up only once the
				// body is read.
				_, _ = io.Copy(io.Discard, r.Body)
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
				return
			}
			if fp.fail.Add(-1) >= 0 {
				code := fp.code.Load().(string)
				status := http.StatusBadRequest
				if code == "KMSInternalException" {
					status = http.StatusInternalServerError
				}
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				w.WriteHeader(status)
				_, _ = w.Write([]byte(`{"__type":"` + code + `","message":"injected"}`))
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	return fp, ts.URL
}

func TestErrorClassesAndRetries(t *testing.T) {
	ctx := context.Background()
	fp, endpoint := newFaultProxy(t)
	alias := newAlias(t)
	b := openURI(t, Scheme+"://"+alias+"?endpoint="+endpoint+"&timeout=300ms")
	tests := []struct {
		name  string
		code  string
		fail  int64
		want  error
		calls int64
	}{
		{"throttled twice then ok", "ThrottlingException", 2, nil, 3},
		{"throttled throughout", "ThrottlingException", 10, keystore.ErrThrottled, 3},
		{"internal error retried", "KMSInternalException", 10, keystore.ErrUnavailable, 3},
		{"access denied not retried", "AccessDeniedException", 10, keystore.ErrPermission, 1},
		{"disabled not retried", "DisabledException", 10, keystore.ErrKeyDisabled, 1},
		{"not found", "NotFoundException", 10, keystore.ErrKeyNotFound, 1},
		{"unknown code", "SomethingNewException", 10, nil, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fp.code.Store(tc.code)
			fp.fail.Store(tc.fail)
			fp.seen.Store(0)
			defer fp.fail.Store(0)
			_, err := b.Wrap(ctx, []byte("x"), nil)
			switch {
			case tc.code == "SomethingNewException":
				if err == nil || errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, keystore.ErrInvalid) {
					t.Fatalf("Wrap: %v, want an unclassified error", err)
				}
			case tc.want == nil && err != nil:
				t.Fatalf("Wrap: %v", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("Wrap: %v, want %v", err, tc.want)
			}
			if n := fp.seen.Load(); n != tc.calls {
				t.Fatalf("%d Encrypt requests, want %d", n, tc.calls)
			}
		})
	}
	t.Run("per-call timeout", func(t *testing.T) {
		keystoretest.PerCallTimeout(t, "Wrap", func() func() {
			fp.hang.Store(true)
			return func() { fp.hang.Store(false) }
		}, func(ctx context.Context) error { _, err := b.Wrap(ctx, []byte("x"), nil); return err })
	})
}

func BenchmarkWrap(b *testing.B) {
	be := openURI(b, uri(newAlias(b)))
	ctx := context.Background()
	kek := make([]byte, 32)
	aad := []byte("keywarden bench aad")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.Wrap(ctx, kek, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrap(b *testing.B) {
	be := openURI(b, uri(newAlias(b)))
	ctx := context.Background()
	aad := []byte("keywarden bench aad")
	w, err := be.Wrap(ctx, make([]byte, 32), aad)
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

func BenchmarkKeyID(b *testing.B) {
	be := openURI(b, uri(newAlias(b)))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.KeyID(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// Package remotetest holds test checks shared by the remote keystores'
// tests (awskms, gcpkms, azurekv, vault).
package remotetest

import (
	"errors"
	"testing"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote"
)

// ParseResult checks what a backend's URI parser made of one (fuzzed)
// input: a refusal must wrap keystore.ErrConfig, and an acceptance must
// carry a positive per-attempt timeout and a non-negative key-ID TTL. It
// reports whether uri was accepted, so the caller goes on to check its own
// fields only then.
func ParseResult(t testing.TB, uri string, o remote.Options, err error) bool {
	t.Helper()
	if err != nil {
		if !errors.Is(err, keystore.ErrConfig) {
			t.Fatalf("%q: refusal %v is not ErrConfig", uri, err)
		}
		return false
	}
	if o.Timeout <= 0 || o.KeyIDTTL < 0 {
		t.Fatalf("%q: timeout %s, key-id-ttl %s", uri, o.Timeout, o.KeyIDTTL)
	}
	return true
}

package gcpkms

import (
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore/internal/remote/remotetest"
)

// FuzzParseURI: no URI panics, every refusal is ErrConfig, and an accepted
// one names a CryptoKey (not a version), with a usable timeout and an
// endpoint that is a bare host:port.
func FuzzParseURI(f *testing.F) {
	const key = "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k"
	for _, s := range []string{
		"gcp-kms://projects/my-project/locations/europe-west1/keyRings/k8s/cryptoKeys/keywarden",
		"gcp-kms://" + key,
		"gcp-kms://" + key + "?endpoint=private-kms.example:443&timeout=2s&key-id-ttl=10s",
		"gcp-kms://" + key + "?key-id-ttl=0s",
		"gcp-kms://" + key + "?timeout=1s&timeout=2s",
		"gcp-kms://" + key + "?",
		"gcp-kms://" + key + "?&",
		"gcp-kms://" + key + "?timeout",
		"gcp-kms://" + key + "?timeout=1ms",
		"gcp-kms://" + key + "/cryptoKeyVersions/1",
		"gcp-kms://projects/p/locations/l/keyRings/r",
		"gcpkms://" + key,
		"gcp-kms://" + key + "?project=x",
		"gcp-kms://" + key + "?key-id-ttl=soon",
		"gcp-kms://" + key + "?endpoint=https://x/y",
		"gcp-kms://" + key + "?endpoint=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseURI(s)
		if !remotetest.ParseResult(t, s, c.Options, err) {
			return
		}
		if parts := strings.Split(c.key, "/"); len(parts) != 8 || !keyNameRE.MatchString(c.key) {
			t.Fatalf("%q: key %q", s, c.key)
		}
		if strings.Contains(c.endpoint, "/") {
			t.Fatalf("%q: endpoint %q", s, c.endpoint)
		}
	})
}

package azurekv

import (
	"bytes"
	"errors"
	"net/url"
	"testing"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote/remotetest"
)

// FuzzParseEnvelope: the envelope comes back from etcd through the
// apiserver. No input panics, every refusal is ErrInvalid, and what parses
// is exactly what appendEnvelopeHead and the GCM output would have made.
func FuzzParseEnvelope(f *testing.F) {
	wdk := bytes.Repeat([]byte{0xa5}, 256)
	sealed := append(bytes.Repeat([]byte{0x5a}, nonceSize), bytes.Repeat([]byte{0x33}, 32+tagSize)...)
	f.Add(append(appendEnvelopeHead(nil, algRSAOAEP, wdk), sealed...))
	f.Add(append(appendEnvelopeHead(nil, algA256KW, wdk[:40]), sealed[:nonceSize+tagSize]...))
	f.Add(append(appendEnvelopeHead(nil, algA256KW, wdk[:40]), sealed[:nonceSize+tagSize-1]...))
	f.Add(append(appendEnvelopeHead(nil, algRSAOAEP, bytes.Repeat([]byte{1}, maxWrapped+1)), sealed...))
	for _, ct := range [][]byte{nil, {1}, {2, 1, 0, 1, 0}, {1, 9, 0, 1}, {1, 1, 0, 0}, {1, 1, 0xff, 0xff}} {
		f.Add(ct)
	}
	f.Fuzz(func(t *testing.T, ct []byte) {
		alg, wdk, sealed, err := parseEnvelope(ct)
		if err != nil {
			if !errors.Is(err, keystore.ErrInvalid) {
				t.Fatalf("refusal %v is not ErrInvalid", err)
			}
			return
		}
		if alg != algRSAOAEP && alg != algA256KW {
			t.Fatalf("accepted algorithm %d", alg)
		}
		if len(wdk) == 0 || len(wdk) > maxWrapped || len(sealed) < nonceSize+tagSize {
			t.Fatalf("accepted field lengths %d/%d", len(wdk), len(sealed))
		}
		if again := append(appendEnvelopeHead(nil, alg, wdk), sealed...); !bytes.Equal(again, ct) {
			t.Fatalf("envelope %x re-encodes as %x", ct, again)
		}
	})
}

// FuzzParseURI: no URI panics, every refusal is ErrConfig, and an accepted
// one names a key (and maybe a version) of a vault reached over HTTPS with a
// usable timeout.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"azure-kv://myvault.vault.azure.net/keys/keywarden",
		"azure-kv://MyVault.vault.azure.net/keys/keywarden",
		"azure-kv://myhsm.managedhsm.azure.net/keys/keywarden/0123456789abcdef0123456789abcdef",
		"azure-kv://hsm.managedhsm.azure.net/keys/kw/0123456789abcdef0123456789abcdef?timeout=2s",
		"azure-kv://v.vault.azure.net/keys/kw?timeout=2s&key-id-ttl=30s",
		"azure-kv://v.vault.azure.net/keys/kw?key-id-ttl=0s",
		"azure-kv://v.vault.azure.net/keys/kw?timeout=1ms",
		"azure-kv://v.vault.azure.net/keys/kw?timeout=1s&timeout=2s",
		"azure-kv://v.vault.azure.net/secrets/kw",
		"azure-kv://v.vault.azure.net/keys/",
		"azure-kv://v.vault.azure.net/keys/kw/v1/x",
		"azure-kv://v.vault.azure.net/keys/k_w",
		"azure-kv://v.vault.azure.net/keys/k%2Fw",
		"azure-kv://user@v.vault.azure.net/keys/kw",
		"azure-kv://v.vault.azure.net/keys/kw#frag",
		"azure-kv:///keys/kw",
		"azure-kv://:443/keys/kw",
		"azure-kv://::/keys/kw",
		"https://v.vault.azure.net/keys/kw",
		"azure-kv://v.vault.azure.net/keys/kw?tenant=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseURI(s)
		if !remotetest.ParseResult(t, s, c.Options, err) {
			return
		}
		if !nameRE.MatchString(c.name) || (c.version != "" && !versionRE.MatchString(c.version)) {
			t.Fatalf("%q: key %q version %q", s, c.name, c.version)
		}
		u, err := url.Parse(c.vault)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.Path != "" || u.User != nil {
			t.Fatalf("%q: vault URL %q (%v)", s, c.vault, err)
		}
	})
}

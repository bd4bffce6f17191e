// Package byuri opens a keystore.Backend from its URI. It is the one switch
// from URI scheme to backend; each backend parses its own typed config.
package byuri

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
)

// The cloud backends' URI schemes (each backend package's Scheme; a test
// checks they agree). They are named here so that a build without a
// backend (-tags noaws, nogcp, noazure, novault) still knows them and says
// why it cannot open one.
const (
	schemeAwskms  = "aws-kms"
	schemeGcpkms  = "gcp-kms"
	schemeAzurekv = "azure-kv"
	schemeVault   = "hcvault"
)

// URIForms names every scheme Open accepts with the shape of its URI, for
// flag help texts (docs/configuration.md has each one in full).
var URIForms = strings.Join([]string{
	"file:///<path>",
	"pkcs11:token=<label>;object=<label>?module-path=<so>&pin-source=file:<path>",
	schemeAwskms + "://arn:aws:kms:<region>:<account>:key/<id>|alias/<name>",
	schemeGcpkms + "://projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>",
	schemeAzurekv + "://<vault>.vault.azure.net/keys/<name>",
	schemeVault + "://<host>:<port>/<mount>/keys/<name>",
}, ", ")

// A scheme is one URI scheme Open accepts: how to open a backend from such
// a URI, and how to check the URI's form without opening anything.
type scheme struct {
	open  func(context.Context, string) (keystore.Backend, error)
	check func(string) error
	// name is the backend's Name(), known without opening it.
	name string
}

// schemes is the switch from URI scheme to backend. Every scheme is here
// whether or not this build has its backend: a left-out one opens with an
// error naming the build tag.
var schemes = map[string]scheme{
	"file": {
		open: func(_ context.Context, uri string) (keystore.Backend, error) {
			p, err := FilePath(uri)
			if err != nil {
				return nil, err
			}
			return file.Open(p)
		},
		check: func(uri string) error { _, err := FilePath(uri); return err },
		name:  file.Name,
	},
	"pkcs11":      {openPKCS11, checkPKCS11, "pkcs11"},
	schemeAwskms:  {openAWS, checkAWS, "awskms"},
	schemeGcpkms:  {openGCP, checkGCP, "gcpkms"},
	schemeAzurekv: {openAzure, checkAzure, "azurekv"},
	schemeVault:   {openVault, checkVault, "vault"},
}

// Schemes returns every URI scheme Open accepts, sorted, including those
// of backends this build leaves out.
func Schemes() []string {
	out := make([]string, 0, len(schemes))
	for s := range schemes {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func lookup(uri string) (scheme, error) {
	name, _, ok := strings.Cut(uri, ":")
	if !ok {
		return scheme{}, fmt.Errorf("%w: keystore URI %q has no scheme (want file://, pkcs11:, ...)", keystore.ErrConfig, Redact(uri))
	}
	s, ok := schemes[name]
	if !ok {
		return scheme{}, fmt.Errorf("%w: unknown keystore scheme %q", keystore.ErrConfig, name)
	}
	return s, nil
}

// Open opens the backend that uri names, e.g. file:///etc/keywarden/keyset.json.
func Open(ctx context.Context, uri string) (keystore.Backend, error) {
	s, err := lookup(uri)
	if err != nil {
		return nil, err
	}
	return s.open(ctx, uri)
}

// CheckURI checks uri the way Open parses it, but opens nothing: no keyset
// is read, no PKCS#11 module loaded, no client made, no credential looked
// up, no network call. What the parsers themselves look at is still looked
// at: a pkcs11 URI's module-path must name a file, and a Vault URI's TLS
// files must load. A URI of a backend this build leaves out fails as Open
// does, naming the build tag.
func CheckURI(uri string) error {
	s, err := lookup(uri)
	if err != nil {
		return err
	}
	return s.check(uri)
}

// Init creates a new keystore with one primary root key version, for
// kmsctl keys init. It refuses to overwrite an existing one.
func Init(ctx context.Context, uri string) (keystore.KeyVersion, error) {
	scheme, _, _ := strings.Cut(uri, ":")
	switch scheme {
	case "file":
		p, err := FilePath(uri)
		if err != nil {
			return keystore.KeyVersion{}, err
		}
		return file.Init(p)
	case "pkcs11":
		return initPKCS11(ctx, uri)
	default:
		return keystore.KeyVersion{}, fmt.Errorf("%w: keystore scheme %q has no init: create the key in the provider and point --keystore at it", keystore.ErrConfig, scheme)
	}
}

// FilePath returns the keyset path of a file:// URI.
func FilePath(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "file" {
		return "", fmt.Errorf("%w: bad file keystore URI %q (want file:///absolute/path)", keystore.ErrConfig, Redact(uri))
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("%w: file keystore URI %q names host %q; use file:///absolute/path", keystore.ErrConfig, Redact(uri), u.Host)
	}
	if u.Path == "" || u.Path[0] != '/' {
		return "", fmt.Errorf("%w: file keystore URI %q needs an absolute path", keystore.ErrConfig, Redact(uri))
	}
	return u.Path, nil
}

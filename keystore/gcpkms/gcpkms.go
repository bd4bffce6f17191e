// Package gcpkms is the keystore whose root key is a Google Cloud KMS
// CryptoKey (purpose ENCRYPT_DECRYPT, symmetric). Wrap and Unwrap are Cloud
// KMS Encrypt and Decrypt; the key never leaves Cloud KMS.
//
// The backend is addressed by the CryptoKey's resource name:
//
//	gcp-kms://projects/p/locations/europe-west1/keyRings/r/cryptoKeys/keywarden
//
// Credentials come from Application Default Credentials.
//
// key_id is the full name of the primary CryptoKeyVersion
// (".../cryptoKeys/keywarden/cryptoKeyVersions/3"), read with GetCryptoKey at
// most once per key-id-ttl (default 1m) together with an Encrypt+Decrypt
// probe. Wrap encrypts with that version explicitly. Cloud KMS's Decrypt picks
// the version from the ciphertext and does not say which it used, so the
// version named by key_id is bound into the additional authenticated data:
// a ciphertext presented under another version's key_id fails to decrypt.
// Request and response CRC32C checksums are sent and verified.
// docs/keystores/gcp.md is the operator's guide.
package gcpkms

import (
	"context"
	"fmt"
	"hash/crc32"
	"regexp"
	"strings"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote"
)

// Name is the backend name used in metrics and logs.
const Name = "gcpkms"

// Scheme is the URI scheme of this backend (Tink's prefix for Cloud KMS).
const Scheme = "gcp-kms"

// Cloud KMS limits: 64 KiB of plaintext and of AAD; ciphertexts a little
// longer.
const (
	maxCiphertext = 64<<10 + 1024
	aadDomain     = "keywarden.io/gcpkms/v1"
)

var (
	keyNameRE     = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$`)
	versionSuffix = regexp.MustCompile(`^/cryptoKeyVersions/[1-9][0-9]{0,18}$`)
	crcTable      = crc32.MakeTable(crc32.Castagnoli)
)

// kmsAPI is the part of the Cloud KMS client we use.
type kmsAPI interface {
	Encrypt(ctx context.Context, req *kmspb.EncryptRequest, opts ...gax.CallOption) (*kmspb.EncryptResponse, error)
	Decrypt(ctx context.Context, req *kmspb.DecryptRequest, opts ...gax.CallOption) (*kmspb.DecryptResponse, error)
	GetCryptoKey(ctx context.Context, req *kmspb.GetCryptoKeyRequest, opts ...gax.CallOption) (*kmspb.CryptoKey, error)
	ListCryptoKeyVersions(ctx context.Context, req *kmspb.ListCryptoKeyVersionsRequest, opts ...gax.CallOption) *kms.CryptoKeyVersionIterator
	CreateCryptoKeyVersion(ctx context.Context, req *kmspb.CreateCryptoKeyVersionRequest, opts ...gax.CallOption) (*kmspb.CryptoKeyVersion, error)
	UpdateCryptoKeyPrimaryVersion(ctx context.Context, req *kmspb.UpdateCryptoKeyPrimaryVersionRequest, opts ...gax.CallOption) (*kmspb.CryptoKey, error)
	UpdateCryptoKeyVersion(ctx context.Context, req *kmspb.UpdateCryptoKeyVersionRequest, opts ...gax.CallOption) (*kmspb.CryptoKeyVersion, error)
	DestroyCryptoKeyVersion(ctx context.Context, req *kmspb.DestroyCryptoKeyVersionRequest, opts ...gax.CallOption) (*kmspb.CryptoKeyVersion, error)
	Close() error
}

// config is the typed form of a gcp-kms:// URI.
type config struct {
	key      string // projects/…/cryptoKeys/<k>
	endpoint string // optional, e.g. a Private Service Connect endpoint
	remote.Options
}

func parseURI(s string) (config, error) {
	bad := func(format string, args ...any) (config, error) {
		return config{}, remote.URIError(Scheme, format, args...)
	}
	rest, ok := strings.CutPrefix(s, Scheme+"://")
	if !ok {
		return bad("want %s://projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>", Scheme)
	}
	key, query, _ := strings.Cut(rest, "?")
	if !keyNameRE.MatchString(key) {
		return bad("%q is not a CryptoKey name (projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>; no version)", key)
	}
	c := config{key: key, Options: remote.DefaultOptions()}
	if query == "" {
		return c, nil
	}
	for _, kv := range strings.Split(query, "&") {
		k, v, _ := strings.Cut(kv, "=")
		switch known, err := c.Set(k, v); {
		case err != nil:
			return bad("%v", err)
		case known:
		case k == "endpoint":
			if v == "" || strings.Contains(v, "/") {
				return bad("endpoint=%q: want host:port", v)
			}
			c.endpoint = v
		default:
			return bad("unknown parameter %q", k)
		}
	}
	return c, nil
}

// Backend is a keystore.Backend over one Cloud KMS CryptoKey.
type Backend struct {
	cfg     config
	kms     kmsAPI
	retry   remote.Retry
	primary *remote.Cache[string] // the primary CryptoKeyVersion name
}

var (
	_ keystore.Backend = (*Backend)(nil)
	_ keystore.Manager = (*Backend)(nil)
)

// Open opens the CryptoKey the gcp-kms:// URI names, with Application
// Default Credentials. A key that does not exist, is not ENCRYPT_DECRYPT, or
// that our credentials may not read fails Open; a Cloud KMS that does not
// answer yet does not.
func Open(ctx context.Context, uri string) (*Backend, error) {
	cfg, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	var opts []option.ClientOption
	if cfg.endpoint != "" {
		opts = append(opts, option.WithEndpoint(cfg.endpoint))
	}
	return open(ctx, cfg, opts...)
}

func open(ctx context.Context, cfg config, opts ...option.ClientOption) (*Backend, error) {
	c, err := kms.NewKeyManagementClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: cloud kms client: %v", keystore.ErrConfig, err)
	}
	// We retry by error class in remote.Retry, only idempotent calls, with
	// our own per-call timeout; the library's defaults would retry again
	// underneath with their own.
	*c.CallOptions = kms.KeyManagementCallOptions{}
	b, err := newBackend(ctx, cfg, c, time.Now)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return b, nil
}

func newBackend(ctx context.Context, cfg config, c kmsAPI, now func() time.Time) (*Backend, error) {
	b := &Backend{cfg: cfg, kms: c, retry: remote.DefaultRetry(cfg.Timeout), primary: remote.NewCache[string](cfg.KeyIDTTL, remote.DefaultRetry(cfg.Timeout).FetchTimeout(), now)}
	if err := b.primary.Prime(ctx, b.getPrimary); err != nil {
		return nil, err
	}
	return b, nil
}

// Name implements keystore.Backend.
func (b *Backend) Name() string { return Name }

// Close implements keystore.Backend.
func (b *Backend) Close() error { return b.kms.Close() }

// KeyID implements keystore.Backend: the primary version's name, read with
// GetCryptoKey and checked with an Encrypt+Decrypt probe at most once per
// key-id-ttl.
func (b *Backend) KeyID(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return b.primary.Get(ctx, b.getPrimaryAndProbe)
}

// Wrap implements keystore.Backend: Encrypt with the primary version named
// explicitly, and the version name bound into the AAD.
func (b *Backend) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Wrapped{}, err
	}
	kid, err := b.primary.Last(ctx, b.getPrimary)
	if err != nil {
		return keystore.Wrapped{}, err
	}
	return b.encrypt(ctx, kid, pt, aad)
}

func (b *Backend) encrypt(ctx context.Context, kid string, pt, aad []byte) (keystore.Wrapped, error) {
	full := remote.BoundAAD(aadDomain, kid, aad)
	req := &kmspb.EncryptRequest{
		Name:                              kid,
		Plaintext:                         pt,
		PlaintextCrc32C:                   crc(pt),
		AdditionalAuthenticatedData:       full,
		AdditionalAuthenticatedDataCrc32C: crc(full),
	}
	var resp *kmspb.EncryptResponse
	err := b.call(ctx, true, "encrypt", func(ctx context.Context) (err error) {
		resp, err = b.kms.Encrypt(ctx, req)
		if err != nil {
			return err
		}
		// Integrity of the request and the response in transit; a mismatch
		// is corruption on the way, worth a retry.
		if !resp.GetVerifiedPlaintextCrc32C() || !resp.GetVerifiedAdditionalAuthenticatedDataCrc32C() ||
			resp.GetCiphertextCrc32C().GetValue() != crc(resp.GetCiphertext()).GetValue() {
			return fmt.Errorf("%w: encrypt CRC32C checks failed in transit", keystore.ErrUnavailable)
		}
		return nil
	})
	if err != nil {
		return keystore.Wrapped{}, err
	}
	if resp.GetName() != kid {
		return keystore.Wrapped{}, fmt.Errorf("cloud kms encrypt: answered with version %q, asked %q", resp.GetName(), kid)
	}
	return keystore.Wrapped{KeyID: kid, Ciphertext: resp.GetCiphertext()}, nil
}

// Unwrap implements keystore.Backend: Decrypt with the CryptoKey (Cloud KMS
// reads the version from the ciphertext) and the AAD bound to w.KeyID.
func (b *Backend) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	suffix, ok := strings.CutPrefix(w.KeyID, b.cfg.key)
	if !ok || !versionSuffix.MatchString(suffix) {
		return nil, fmt.Errorf("%w: key_id %q is not a version of %s", keystore.ErrKeyNotFound, w.KeyID, b.cfg.key)
	}
	if n := len(w.Ciphertext); n == 0 || n > maxCiphertext {
		return nil, fmt.Errorf("%w: cloud kms ciphertext is %d bytes, want 1..%d", keystore.ErrInvalid, n, maxCiphertext)
	}
	full := remote.BoundAAD(aadDomain, w.KeyID, aad)
	req := &kmspb.DecryptRequest{
		Name:                              b.cfg.key,
		Ciphertext:                        w.Ciphertext,
		CiphertextCrc32C:                  crc(w.Ciphertext),
		AdditionalAuthenticatedData:       full,
		AdditionalAuthenticatedDataCrc32C: crc(full),
	}
	var resp *kmspb.DecryptResponse
	err := b.call(ctx, true, "decrypt", func(ctx context.Context) (err error) {
		resp, err = b.kms.Decrypt(ctx, req)
		if err != nil {
			return err
		}
		if resp.GetPlaintextCrc32C().GetValue() != crc(resp.GetPlaintext()).GetValue() {
			return fmt.Errorf("%w: decrypt CRC32C check failed in transit", keystore.ErrUnavailable)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp.GetPlaintext(), nil
}

func crc(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, crcTable)))
}

func (b *Backend) getPrimary(ctx context.Context) (string, error) {
	var k *kmspb.CryptoKey
	err := b.call(ctx, true, "get key", func(ctx context.Context) (err error) {
		k, err = b.kms.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: b.cfg.key})
		return err
	})
	if err != nil {
		return "", err
	}
	if k.GetPurpose() != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return "", fmt.Errorf("%w: cloud kms key %s has purpose %s; keywarden needs ENCRYPT_DECRYPT", keystore.ErrConfig, b.cfg.key, k.GetPurpose())
	}
	p := k.GetPrimary()
	if p == nil {
		return "", fmt.Errorf("%w: cloud kms key %s has no primary version", keystore.ErrKeyDisabled, b.cfg.key)
	}
	suffix, ok := strings.CutPrefix(p.GetName(), b.cfg.key)
	if !ok || !versionSuffix.MatchString(suffix) {
		return "", fmt.Errorf("cloud kms key %s: primary %q is not one of its versions", b.cfg.key, p.GetName())
	}
	if p.GetState() != kmspb.CryptoKeyVersion_ENABLED {
		return "", fmt.Errorf("%w: cloud kms primary version %s is %s", keystore.ErrKeyDisabled, p.GetName(), p.GetState())
	}
	return p.GetName(), nil
}

func (b *Backend) getPrimaryAndProbe(ctx context.Context) (string, error) {
	kid, err := b.getPrimary(ctx)
	if err != nil {
		return "", err
	}
	wrap := func(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
		return b.encrypt(ctx, kid, pt, aad)
	}
	if err := remote.Probe(ctx, wrap, b.Unwrap); err != nil {
		return "", err
	}
	return kid, nil
}

// call runs one Cloud KMS call with a per-attempt timeout and, when
// idempotent, retries by error class.
func (b *Backend) call(ctx context.Context, idempotent bool, op string, f func(ctx context.Context) error) error {
	if err := b.retry.Call(ctx, idempotent, classify, f); err != nil {
		return fmt.Errorf("cloud kms %s: %w", op, err)
	}
	return nil
}

// classify sorts a Cloud KMS (gRPC) error into keystore's classes. Errors
// of our own (the CRC32C checks) keep their class: remote.Retry.Call does
// not pass them here.
func classify(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%w: %v", keystore.ErrUnavailable, err)
	}
	var class error
	switch st.Code() {
	case codes.InvalidArgument, codes.OutOfRange:
		class = keystore.ErrInvalid
	case codes.NotFound:
		class = keystore.ErrKeyNotFound
	case codes.FailedPrecondition:
		class = keystore.ErrKeyDisabled
	case codes.PermissionDenied, codes.Unauthenticated:
		class = keystore.ErrPermission
	case codes.ResourceExhausted:
		class = keystore.ErrThrottled
	case codes.Unavailable, codes.Internal, codes.Aborted, codes.DeadlineExceeded, codes.Unknown:
		class = keystore.ErrUnavailable
	case codes.Canceled:
		return context.Canceled
	default:
		class = fmt.Errorf("unexpected gRPC code %s", st.Code())
	}
	return remote.Classed(class, st.Code().String(), st.Message())
}

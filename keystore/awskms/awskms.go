// Package awskms is the keystore whose root key is an AWS KMS symmetric key
// (SYMMETRIC_DEFAULT, AES-256-GCM inside KMS). Wrap and Unwrap are KMS
// Encrypt and Decrypt; the key never leaves KMS.
//
// The backend is addressed by the key's ARN or, so that it can rotate, by an
// alias ARN:
//
//	aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/keywarden
//	aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
//
// Credentials come from the AWS SDK's default chain (environment, shared
// config and credentials files, web identity, ECS, EC2 instance profile).
//
// key_id is the ARN of the key the alias points to, read with DescribeKey at
// most once per key-id-ttl (default 1m) together with an Encrypt+Decrypt
// probe; Wrap uses that key ARN explicitly, so Wrap and KeyID always agree.
// Moving the alias to a new key is a rotation; AWS's own automatic rotation
// keeps the key ARN and is invisible to keywarden (KMS keeps every backing
// key and decrypts old ciphertexts by itself). docs/keystores/aws.md is the
// operator's guide.
package awskms

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote"
)

// Name is the backend name used in metrics and logs.
const Name = "awskms"

// Scheme is the URI scheme of this backend (Tink's prefix for AWS KMS).
const Scheme = "aws-kms"

// Encryption context keys. The context is logged in clear by CloudTrail, so
// it holds a keystore name and a hash of the AAD, nothing secret.
const (
	contextKeystore = "keywarden.io/keystore"
	contextAAD      = "keywarden.io/aad-sha256"
	// DefaultContextName is the keystore name bound into every ciphertext.
	DefaultContextName = "keywarden"
)

// KMS ciphertext blobs are at most 6144 bytes.
const maxCiphertext = 6144

// kmsAPI is the part of the KMS client we use.
type kmsAPI interface {
	Encrypt(ctx context.Context, in *kms.EncryptInput, opts ...func(*kms.Options)) (*kms.EncryptOutput, error)
	Decrypt(ctx context.Context, in *kms.DecryptInput, opts ...func(*kms.Options)) (*kms.DecryptOutput, error)
	DescribeKey(ctx context.Context, in *kms.DescribeKeyInput, opts ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
}

// config is the typed form of an aws-kms:// URI.
type config struct {
	ref      arn.ARN // the key or alias the URI names
	isAlias  bool
	endpoint string // optional KMS endpoint (VPC endpoint, FIPS, or a local emulator)
	profile  string // optional shared-config profile
	context  string // keystore name bound into the encryption context
	remote.Options
}

func parseURI(s string) (config, error) {
	bad := func(format string, args ...any) (config, error) {
		return config{}, remote.URIError(Scheme, format, args...)
	}
	rest, ok := strings.CutPrefix(s, Scheme+"://")
	if !ok {
		return bad("want %s://arn:aws:kms:<region>:<account>:key/<id> or ...:alias/<name>", Scheme)
	}
	ref, query, _ := strings.Cut(rest, "?")
	a, err := arn.Parse(ref)
	if err != nil || a.Service != "kms" || a.Region == "" || a.AccountID == "" {
		return bad("%q is not a KMS key or alias ARN", ref)
	}
	c := config{ref: a, context: DefaultContextName, Options: remote.DefaultOptions()}
	switch {
	case strings.HasPrefix(a.Resource, "key/") && len(a.Resource) > len("key/"):
	case strings.HasPrefix(a.Resource, "alias/") && len(a.Resource) > len("alias/"):
		c.isAlias = true
	default:
		return bad("ARN resource %q: want key/<id> or alias/<name>", a.Resource)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return bad("query: %v", err)
	}
	err = c.ParseQuery(Scheme, q, func(k, v string) (bool, error) {
		switch k {
		case "endpoint":
			u, err := url.Parse(v)
			if err != nil || u.Hostname() == "" || (u.Scheme != "https" && u.Scheme != "http") {
				return true, fmt.Errorf("endpoint %q: want https://host[:port]", v)
			}
			// Plain HTTP only to this host: signatures protect integrity, not
			// the plaintext keys in Encrypt requests.
			if ip := net.ParseIP(u.Hostname()); u.Scheme == "http" && (ip == nil || !ip.IsLoopback()) {
				return true, fmt.Errorf("endpoint %q: http is allowed only for a loopback IP (a local emulator)", v)
			}
			c.endpoint = v
		case "profile":
			c.profile = v
		case "context-name":
			if v == "" || len(v) > 128 {
				return true, errors.New("context-name must be 1..128 bytes")
			}
			c.context = v
		default:
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return config{}, err
	}
	return c, nil
}

// Backend is a keystore.Backend over one AWS KMS key or alias.
type Backend struct {
	cfg   config
	kms   kmsAPI
	retry remote.Retry
	cur   *remote.Cache[string] // the key ARN the URI resolves to
}

var _ keystore.Backend = (*Backend)(nil)

// Open opens the key the aws-kms:// URI names, with credentials from the
// SDK's default chain. A key that does not exist, is not a symmetric
// encryption key, or that our credentials may not describe fails Open; a KMS
// that does not answer yet does not.
func Open(ctx context.Context, uri string) (*Backend, error) {
	cfg, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(cfg.ref.Region)}
	if cfg.profile != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(cfg.profile))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: aws config: %v", keystore.ErrConfig, err)
	}
	return open(ctx, cfg, awsCfg)
}

func open(ctx context.Context, cfg config, awsCfg aws.Config) (*Backend, error) {
	awsCfg = awsCfg.Copy()
	awsCfg.Region = cfg.ref.Region
	// We retry by error class in remote.Retry, only idempotent calls.
	awsCfg.Retryer = func() aws.Retryer { return aws.NopRetryer{} }
	awsCfg.HTTPClient = &http.Client{Transport: remote.Transport()}
	client := kms.NewFromConfig(awsCfg, func(o *kms.Options) {
		if cfg.endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.endpoint)
		}
	})
	return newBackend(ctx, cfg, client, time.Now)
}

func newBackend(ctx context.Context, cfg config, c kmsAPI, now func() time.Time) (*Backend, error) {
	b := &Backend{cfg: cfg, kms: c, retry: remote.DefaultRetry(cfg.Timeout), cur: remote.NewCache[string](cfg.KeyIDTTL, remote.DefaultRetry(cfg.Timeout).FetchTimeout(), now)}
	if err := b.cur.Prime(ctx, b.describe); err != nil {
		return nil, err
	}
	return b, nil
}

// Name implements keystore.Backend.
func (b *Backend) Name() string { return Name }

// Close implements keystore.Backend.
func (b *Backend) Close() error { return nil }

// KeyID implements keystore.Backend: the key ARN the URI resolves to, read
// with DescribeKey and checked with an Encrypt+Decrypt probe at most once per
// key-id-ttl.
func (b *Backend) KeyID(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return b.cur.Get(ctx, b.describeAndProbe)
}

// Wrap implements keystore.Backend: KMS Encrypt under the current key ARN
// with aad (hashed) and the keystore name as encryption context.
func (b *Backend) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Wrapped{}, err
	}
	kid, err := b.cur.Last(ctx, b.describe)
	if err != nil {
		return keystore.Wrapped{}, err
	}
	return b.encrypt(ctx, kid, pt, aad)
}

func (b *Backend) encrypt(ctx context.Context, kid string, pt, aad []byte) (keystore.Wrapped, error) {
	var out *kms.EncryptOutput
	err := b.call(ctx, "encrypt", func(ctx context.Context) (err error) {
		out, err = b.kms.Encrypt(ctx, &kms.EncryptInput{
			KeyId:             aws.String(kid),
			Plaintext:         pt,
			EncryptionContext: b.encryptionContext(aad),
		})
		return err
	})
	if err != nil {
		return keystore.Wrapped{}, err
	}
	if out.KeyId == nil || *out.KeyId != kid || len(out.CiphertextBlob) == 0 {
		return keystore.Wrapped{}, fmt.Errorf("aws kms encrypt: answered for key %q, asked %q", aws.ToString(out.KeyId), kid)
	}
	return keystore.Wrapped{KeyID: kid, Ciphertext: out.CiphertextBlob}, nil
}

// Unwrap implements keystore.Backend: KMS Decrypt naming the key ARN of
// w.KeyID, so KMS refuses a ciphertext made under any other key.
func (b *Backend) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := b.checkKeyID(w.KeyID); err != nil {
		return nil, err
	}
	if n := len(w.Ciphertext); n == 0 || n > maxCiphertext {
		return nil, fmt.Errorf("%w: aws kms ciphertext is %d bytes, want 1..%d", keystore.ErrInvalid, n, maxCiphertext)
	}
	var out *kms.DecryptOutput
	err := b.call(ctx, "decrypt", func(ctx context.Context) (err error) {
		out, err = b.kms.Decrypt(ctx, &kms.DecryptInput{
			KeyId:             aws.String(w.KeyID),
			CiphertextBlob:    w.Ciphertext,
			EncryptionContext: b.encryptionContext(aad),
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	if aws.ToString(out.KeyId) != w.KeyID {
		return nil, fmt.Errorf("%w: aws kms decrypted with key %q, want %q", keystore.ErrInvalid, aws.ToString(out.KeyId), w.KeyID)
	}
	return out.Plaintext, nil
}

// checkKeyID accepts only key ARNs this keystore can own: the key the URI
// names, or, for an alias, a key in the alias's partition, region and
// account (the alias's past and future targets).
func (b *Backend) checkKeyID(kid string) error {
	a, err := arn.Parse(kid)
	if err != nil || a.Service != "kms" || !strings.HasPrefix(a.Resource, "key/") || len(a.Resource) == len("key/") {
		return fmt.Errorf("%w: key_id %q is not a KMS key ARN", keystore.ErrKeyNotFound, kid)
	}
	if !b.cfg.isAlias {
		if kid != b.cfg.ref.String() {
			return fmt.Errorf("%w: key_id %q is not the configured key %s", keystore.ErrKeyNotFound, kid, b.cfg.ref)
		}
		return nil
	}
	r := b.cfg.ref
	if a.Partition != r.Partition || a.Region != r.Region || a.AccountID != r.AccountID {
		return fmt.Errorf("%w: key_id %q is outside %s's account and region", keystore.ErrKeyNotFound, kid, r)
	}
	return nil
}

func (b *Backend) encryptionContext(aad []byte) map[string]string {
	ec := map[string]string{contextKeystore: b.cfg.context}
	if len(aad) > 0 {
		h := sha256.Sum256(aad)
		ec[contextAAD] = hex.EncodeToString(h[:])
	}
	return ec
}

// describe resolves the URI to a key ARN and checks the key can wrap.
func (b *Backend) describe(ctx context.Context) (string, error) {
	var out *kms.DescribeKeyOutput
	err := b.call(ctx, "describe key", func(ctx context.Context) (err error) {
		out, err = b.kms.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(b.cfg.ref.String())})
		return err
	})
	if err != nil {
		return "", err
	}
	m := out.KeyMetadata
	if m == nil || m.Arn == nil {
		return "", fmt.Errorf("aws kms describe key %s: no key metadata", b.cfg.ref)
	}
	kid := *m.Arn
	if err := b.checkKeyID(kid); err != nil {
		return "", fmt.Errorf("%w: %s resolves to %s, outside its account and region", keystore.ErrConfig, b.cfg.ref, kid)
	}
	if m.KeyUsage != types.KeyUsageTypeEncryptDecrypt || (m.KeySpec != "" && m.KeySpec != types.KeySpecSymmetricDefault) {
		return "", fmt.Errorf("%w: %s is a %s %s key; keywarden needs SYMMETRIC_DEFAULT ENCRYPT_DECRYPT", keystore.ErrConfig, kid, m.KeySpec, m.KeyUsage)
	}
	switch m.KeyState {
	case types.KeyStateEnabled, "":
	case types.KeyStateDisabled, types.KeyStatePendingDeletion, types.KeyStatePendingReplicaDeletion:
		return "", fmt.Errorf("%w: aws kms key %s is %s", keystore.ErrKeyDisabled, kid, m.KeyState)
	case types.KeyStateUnavailable:
		return "", fmt.Errorf("%w: aws kms key %s is Unavailable (its custom key store is disconnected)", keystore.ErrUnavailable, kid)
	default:
		return "", fmt.Errorf("%w: aws kms key %s is %s", keystore.ErrKeyDisabled, kid, m.KeyState)
	}
	return kid, nil
}

func (b *Backend) describeAndProbe(ctx context.Context) (string, error) {
	kid, err := b.describe(ctx)
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

// call runs one idempotent KMS call (all of ours are) with a per-attempt
// timeout and retries by error class.
func (b *Backend) call(ctx context.Context, op string, f func(ctx context.Context) error) error {
	if err := b.retry.Call(ctx, true, classify, f); err != nil {
		return fmt.Errorf("aws kms %s: %w", op, err)
	}
	return nil
}

// classify sorts an AWS SDK error into keystore's classes.
func classify(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		var class error
		switch ae.ErrorCode() {
		case "InvalidCiphertextException", "IncorrectKeyException", "ValidationException", "SerializationException":
			class = keystore.ErrInvalid
		case "NotFoundException":
			class = keystore.ErrKeyNotFound
		case "DisabledException", "KMSInvalidStateException":
			class = keystore.ErrKeyDisabled
		case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
			"IncompleteSignature", "MissingAuthenticationToken", "ExpiredTokenException", "InvalidClientTokenId":
			class = keystore.ErrPermission
		case "ThrottlingException", "Throttling", "RequestLimitExceeded", "LimitExceededException", "TooManyRequestsException":
			class = keystore.ErrThrottled
		case "KMSInternalException", "DependencyTimeoutException", "InternalFailure", "ServiceUnavailable",
			"ServiceUnavailableException", "KeyUnavailableException", "CustomKeyStoreInvalidStateException":
			class = keystore.ErrUnavailable
		case "InvalidKeyUsageException", "UnsupportedOperationException", "InvalidArnException":
			class = keystore.ErrConfig
		default:
			if class = statusClass(err); class == nil {
				class = errors.New("unexpected AWS KMS error")
			}
		}
		return remote.Classed(class, ae.ErrorCode(), ae.ErrorMessage())
	}
	var ip *smithy.InvalidParamsError
	if errors.As(err, &ip) {
		return fmt.Errorf("%w: %v", keystore.ErrInvalid, err)
	}
	if c := statusClass(err); c != nil {
		return fmt.Errorf("%w: %v", c, err)
	}
	// No answer at all: refused, reset, DNS, or no credentials to sign with
	// (the instance metadata service did not answer).
	return fmt.Errorf("%w: %v", keystore.ErrUnavailable, err)
}

// statusClass classifies by HTTP status when the error has no known code.
func statusClass(err error) error {
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) {
		return nil
	}
	return remote.StatusClass(re.HTTPStatusCode())
}

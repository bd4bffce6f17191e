// Package azurekv is the keystore whose root key is an Azure Key Vault (or
// Managed HSM) key. The key never leaves Key Vault: it wraps and unwraps a
// fresh random 256-bit data key per Wrap (RSA-OAEP-256 for RSA keys, A256KW
// for oct-HSM keys on Managed HSM), and keywarden seals the secret under that
// data key with AES-256-GCM.
//
// Key Vault's wrap algorithms bind no associated data (and A256KW is
// deterministic), so keywarden binds the AAD and the key_id inside its own
// envelope instead:
//
//	0x01 ‖ alg (1) ‖ len(wrapped DK) (2) ‖ wrapped DK ‖ nonce (12) ‖ AES-256-GCM(DK, secret, AAD*)
//
// where AAD* length-prefixes a domain string, the key_id and the caller's
// AAD. One Unwrap is one Key Vault unwrapKey call, as it would be without the
// envelope.
//
// The backend is addressed by the key's URL, optionally pinned to a version:
//
//	azure-kv://myvault.vault.azure.net/keys/keywarden
//	azure-kv://myhsm.managedhsm.azure.net/keys/keywarden/0123456789abcdef0123456789abcdef
//
// Credentials come from azidentity's DefaultAzureCredential chain.
//
// key_id is the full key identifier of the version in use
// ("https://myvault.vault.azure.net/keys/keywarden/<version>"): the newest
// enabled version, or the pinned one, read at most once per key-id-ttl
// (default 1m) together with a wrap+unwrap probe. docs/keystores/azure.md is
// the operator's guide.
package azurekv

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote"
)

// Name is the backend name used in metrics and logs.
const Name = "azurekv"

// Scheme is the URI scheme of this backend.
const Scheme = "azure-kv"

const (
	envelopeV1 = 0x01
	algRSAOAEP = 0x01 // RSA-OAEP-256
	algA256KW  = 0x02 // A256KW (Managed HSM oct-HSM keys)
	dkSize     = 32
	nonceSize  = 12
	tagSize    = 16
	maxWrapped = 1024 // RSA-8192 is 1024 bytes
	aadDomain  = "keywarden.io/azurekv/v1"
)

var (
	versionRE = regexp.MustCompile(`^[0-9A-Za-z]{1,64}$`)
	nameRE    = regexp.MustCompile(`^[0-9A-Za-z-]{1,127}$`)
)

// keysAPI is the part of the Key Vault keys client we use.
type keysAPI interface {
	GetKey(ctx context.Context, name, version string, o *azkeys.GetKeyOptions) (azkeys.GetKeyResponse, error)
	WrapKey(ctx context.Context, name, version string, p azkeys.KeyOperationParameters, o *azkeys.WrapKeyOptions) (azkeys.WrapKeyResponse, error)
	UnwrapKey(ctx context.Context, name, version string, p azkeys.KeyOperationParameters, o *azkeys.UnwrapKeyOptions) (azkeys.UnwrapKeyResponse, error)
	NewListKeyPropertiesVersionsPager(name string, o *azkeys.ListKeyPropertiesVersionsOptions) *runtime.Pager[azkeys.ListKeyPropertiesVersionsResponse]
	CreateKey(ctx context.Context, name string, p azkeys.CreateKeyParameters, o *azkeys.CreateKeyOptions) (azkeys.CreateKeyResponse, error)
	UpdateKey(ctx context.Context, name, version string, p azkeys.UpdateKeyParameters, o *azkeys.UpdateKeyOptions) (azkeys.UpdateKeyResponse, error)
}

// config is the typed form of an azure-kv:// URI.
type config struct {
	vault   string // https://myvault.vault.azure.net
	name    string
	version string // pinned version, or ""
	remote.Options
}

func parseURI(s string) (config, error) {
	bad := func(format string, args ...any) (config, error) {
		return config{}, remote.URIError(Scheme, format, args...)
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != Scheme || u.Hostname() == "" || u.User != nil || u.Fragment != "" {
		return bad("want %s://<vault>.vault.azure.net/keys/<name>[/<version>]", Scheme)
	}
	// url.Parse takes some hosts ("::") that it refuses in the https://
	// URL the client is given.
	if _, err := url.Parse("https://" + u.Host); err != nil {
		return bad("host %q", u.Host)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if (len(parts) != 2 && len(parts) != 3) || parts[0] != "keys" || !nameRE.MatchString(parts[1]) {
		return bad("path %q: want /keys/<name>[/<version>]", u.Path)
	}
	c := config{vault: "https://" + strings.ToLower(u.Host), name: parts[1], Options: remote.DefaultOptions()}
	if len(parts) == 3 {
		if !versionRE.MatchString(parts[2]) {
			return bad("version %q", parts[2])
		}
		c.version = parts[2]
	}
	if err := c.ParseQuery(Scheme, u.Query(), nil); err != nil {
		return config{}, err
	}
	return c, nil
}

// current is the key version Wrap uses, and how to wrap with it.
type current struct {
	kid     string // full key identifier with version
	alg     byte
	kty     azkeys.KeyType
	rsaBits int32
}

// Backend is a keystore.Backend over one Key Vault key.
type Backend struct {
	cfg   config
	kv    keysAPI
	retry remote.Retry
	cur   *remote.Cache[current]
}

var (
	_ keystore.Backend = (*Backend)(nil)
	_ keystore.Manager = (*Backend)(nil)
)

// Open opens the key the azure-kv:// URI names, with DefaultAzureCredential.
// A key that does not exist, cannot wrap, or that our credentials may not
// read fails Open; a Key Vault that does not answer yet does not.
func Open(ctx context.Context, uri string) (*Backend, error) {
	cfg, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, fmt.Errorf("%w: azure credentials: %v", keystore.ErrConfig, err)
	}
	return open(ctx, cfg, cred, nil)
}

func open(ctx context.Context, cfg config, cred azcore.TokenCredential, transport policy.Transporter) (*Backend, error) {
	opts := &azkeys.ClientOptions{}
	// We retry by error class in remote.Retry; the SDK's retries would
	// stack under ours with their own timing.
	opts.Retry.MaxRetries = -1
	if transport != nil {
		opts.Transport = transport
	}
	c, err := azkeys.NewClient(cfg.vault, cred, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: key vault client: %v", keystore.ErrConfig, err)
	}
	return newBackend(ctx, cfg, c, time.Now)
}

func newBackend(ctx context.Context, cfg config, c keysAPI, now func() time.Time) (*Backend, error) {
	b := &Backend{cfg: cfg, kv: c, retry: remote.DefaultRetry(cfg.Timeout), cur: remote.NewCache[current](cfg.KeyIDTTL, remote.DefaultRetry(cfg.Timeout).FetchTimeout(), now)}
	if err := b.cur.Prime(ctx, b.resolve); err != nil {
		return nil, err
	}
	return b, nil
}

// Name implements keystore.Backend.
func (b *Backend) Name() string { return Name }

// Close implements keystore.Backend.
func (b *Backend) Close() error { return nil }

// KeyID implements keystore.Backend: the identifier of the newest enabled
// version (or the pinned one), checked with a wrap+unwrap probe, at most once
// per key-id-ttl.
func (b *Backend) KeyID(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	c, err := b.cur.Get(ctx, b.resolveAndProbe)
	if err != nil {
		return "", err
	}
	return c.kid, nil
}

// Wrap implements keystore.Backend.
func (b *Backend) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Wrapped{}, err
	}
	c, err := b.cur.Last(ctx, b.resolve)
	if err != nil {
		return keystore.Wrapped{}, err
	}
	return b.wrap(ctx, c, pt, aad)
}

func (b *Backend) wrap(ctx context.Context, c current, pt, aad []byte) (keystore.Wrapped, error) {
	dk := make([]byte, dkSize)
	defer clear(dk)
	if _, err := rand.Read(dk); err != nil {
		return keystore.Wrapped{}, fmt.Errorf("data key: %w", err)
	}
	version := (&c).version()
	var res azkeys.WrapKeyResponse
	err := b.call(ctx, true, "wrapKey", func(ctx context.Context) (err error) {
		res, err = b.kv.WrapKey(ctx, b.cfg.name, version, azkeys.KeyOperationParameters{Algorithm: algorithm(c.alg), Value: dk}, nil)
		return err
	})
	if err != nil {
		return keystore.Wrapped{}, err
	}
	if res.KID == nil || string(*res.KID) != c.kid {
		return keystore.Wrapped{}, fmt.Errorf("key vault wrapKey: answered for %q, asked %q", kidString(res.KID), c.kid)
	}
	wdk := res.Result
	if len(wdk) == 0 || len(wdk) > maxWrapped {
		return keystore.Wrapped{}, fmt.Errorf("key vault wrapKey: wrapped key is %d bytes", len(wdk))
	}
	gcm, err := newGCM(dk)
	if err != nil {
		return keystore.Wrapped{}, err
	}
	out := appendEnvelopeHead(make([]byte, 0, 4+len(wdk)+nonceSize+len(pt)+tagSize), c.alg, wdk)
	out = gcm.Seal(out, nil, pt, remote.BoundAAD(aadDomain, c.kid, aad))
	return keystore.Wrapped{KeyID: c.kid, Ciphertext: out}, nil
}

// Unwrap implements keystore.Backend: Key Vault unwraps the data key with
// the version w.KeyID names, then the envelope opens only with the same
// key_id and AAD.
func (b *Backend) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	version, err := b.versionOf(w.KeyID)
	if err != nil {
		return nil, err
	}
	alg, wdk, sealed, err := parseEnvelope(w.Ciphertext)
	if err != nil {
		return nil, err
	}
	var res azkeys.UnwrapKeyResponse
	err = b.call(ctx, true, "unwrapKey", func(ctx context.Context) (err error) {
		res, err = b.kv.UnwrapKey(ctx, b.cfg.name, version, azkeys.KeyOperationParameters{Algorithm: algorithm(alg), Value: wdk}, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	dk := res.Result
	defer clear(dk)
	if len(dk) != dkSize {
		return nil, fmt.Errorf("%w: unwrapped data key is %d bytes", keystore.ErrInvalid, len(dk))
	}
	gcm, err := newGCM(dk)
	if err != nil {
		return nil, err
	}
	pt, err := gcm.Open(nil, nil, sealed, remote.BoundAAD(aadDomain, w.KeyID, aad))
	if err != nil {
		return nil, fmt.Errorf("%w: envelope authentication failed", keystore.ErrInvalid)
	}
	return pt, nil
}

// appendEnvelopeHead appends everything of the envelope that precedes the
// AES-GCM output (nonce, ciphertext, tag); parseEnvelope is its inverse.
func appendEnvelopeHead(out []byte, alg byte, wdk []byte) []byte {
	out = append(out, envelopeV1, alg)
	out = binary.BigEndian.AppendUint16(out, uint16(len(wdk)))
	return append(out, wdk...)
}

// parseEnvelope splits ct into its head and the AES-GCM output, sealed:
// nonce | ciphertext | tag.
func parseEnvelope(ct []byte) (alg byte, wdk, sealed []byte, err error) {
	invalid := func(why string) (byte, []byte, []byte, error) {
		return 0, nil, nil, fmt.Errorf("%w: key vault envelope: %s", keystore.ErrInvalid, why)
	}
	if len(ct) < 4 {
		return invalid("too short")
	}
	if ct[0] != envelopeV1 {
		return invalid(fmt.Sprintf("unknown version %d", ct[0]))
	}
	alg = ct[1]
	if alg != algRSAOAEP && alg != algA256KW {
		return invalid(fmt.Sprintf("unknown algorithm %d", alg))
	}
	n := int(binary.BigEndian.Uint16(ct[2:4]))
	if n == 0 || n > maxWrapped || len(ct) < 4+n+nonceSize+tagSize {
		return invalid("bad length")
	}
	return alg, ct[4 : 4+n], ct[4+n:], nil
}

// newGCM is AES-GCM that makes its own random nonce and writes it first
// (the envelope's layout): the AES-GCM encryption Go's FIPS 140-3 module
// approves, and the only one GODEBUG=fips140=only allows.
func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	return cipher.NewGCMWithRandomNonce(block)
}

func algorithm(alg byte) *azkeys.EncryptionAlgorithm {
	a := azkeys.EncryptionAlgorithmRSAOAEP256
	if alg == algA256KW {
		a = azkeys.EncryptionAlgorithmA256KW
	}
	return &a
}

func kidString(id *azkeys.ID) string {
	if id == nil {
		return ""
	}
	return string(*id)
}

func (c *current) version() string {
	id := azkeys.ID(c.kid)
	return id.Version()
}

// versionOf checks that kid names a version of our key, and returns it.
func (b *Backend) versionOf(kid string) (string, error) {
	prefix := b.cfg.vault + "/keys/" + b.cfg.name + "/"
	v, ok := strings.CutPrefix(kid, prefix)
	if !ok || !versionRE.MatchString(v) {
		return "", fmt.Errorf("%w: key_id %q is not a version of %skeys/%s", keystore.ErrKeyNotFound, kid, b.cfg.vault+"/", b.cfg.name)
	}
	if b.cfg.version != "" && v != b.cfg.version {
		return "", fmt.Errorf("%w: key_id %q is not the pinned version %s", keystore.ErrKeyNotFound, kid, b.cfg.version)
	}
	return v, nil
}

// resolve finds the version Wrap should use: the pinned one, else the
// newest enabled one.
func (b *Backend) resolve(ctx context.Context) (current, error) {
	k, err := b.getKey(ctx, b.cfg.version)
	if err != nil {
		return current{}, err
	}
	if b.cfg.version == "" && !usable(k.Attributes, time.Now()) {
		// The latest version is disabled or outside its validity: fall
		// back to the newest one that is not.
		v, err := b.newestUsable(ctx)
		if err != nil {
			return current{}, err
		}
		if k, err = b.getKey(ctx, v); err != nil {
			return current{}, err
		}
	}
	if !usable(k.Attributes, time.Now()) {
		return current{}, fmt.Errorf("%w: key vault key %s is disabled, expired or not yet valid", keystore.ErrKeyDisabled, kidString(k.Key.KID))
	}
	return describe(k)
}

func (b *Backend) getKey(ctx context.Context, version string) (azkeys.KeyBundle, error) {
	var res azkeys.GetKeyResponse
	err := b.call(ctx, true, "getKey", func(ctx context.Context) (err error) {
		res, err = b.kv.GetKey(ctx, b.cfg.name, version, nil)
		return err
	})
	if err != nil {
		return azkeys.KeyBundle{}, err
	}
	if res.Key == nil || res.Key.KID == nil {
		return azkeys.KeyBundle{}, fmt.Errorf("key vault getKey %s: no key in the answer", b.cfg.name)
	}
	return res.KeyBundle, nil
}

func describe(k azkeys.KeyBundle) (current, error) {
	c := current{kid: string(*k.Key.KID)}
	if k.Key.Kty != nil {
		c.kty = *k.Key.Kty
	}
	switch c.kty {
	case azkeys.KeyTypeRSA, azkeys.KeyTypeRSAHSM:
		c.alg = algRSAOAEP
		c.rsaBits = int32(len(k.Key.N) * 8)
	case azkeys.KeyTypeOctHSM:
		c.alg = algA256KW
	default:
		return current{}, fmt.Errorf("%w: key vault key %s is of type %q; keywarden needs RSA, RSA-HSM or oct-HSM", keystore.ErrConfig, c.kid, c.kty)
	}
	var wrap, unwrap bool
	for _, op := range k.Key.KeyOps {
		if op != nil {
			wrap = wrap || *op == azkeys.KeyOperationWrapKey
			unwrap = unwrap || *op == azkeys.KeyOperationUnwrapKey
		}
	}
	if !wrap || !unwrap {
		return current{}, fmt.Errorf("%w: key vault key %s does not allow wrapKey and unwrapKey", keystore.ErrConfig, c.kid)
	}
	return c, nil
}

func usable(a *azkeys.KeyAttributes, now time.Time) bool {
	if a == nil {
		return true
	}
	if a.Enabled != nil && !*a.Enabled {
		return false
	}
	if a.NotBefore != nil && now.Before(*a.NotBefore) {
		return false
	}
	return a.Expires == nil || now.Before(*a.Expires)
}

// versions lists every version of the key, in one idempotent call.
func (b *Backend) versions(ctx context.Context) ([]*azkeys.KeyProperties, error) {
	var out []*azkeys.KeyProperties
	err := b.call(ctx, true, "list versions", func(ctx context.Context) error {
		out = out[:0]
		p := b.kv.NewListKeyPropertiesVersionsPager(b.cfg.name, nil)
		for p.More() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return err
			}
			for _, kp := range page.Value {
				if kp != nil && kp.KID != nil {
					out = append(out, kp)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (b *Backend) newestUsable(ctx context.Context) (string, error) {
	all, err := b.versions(ctx)
	if err != nil {
		return "", err
	}
	var best string
	var bestAt time.Time
	for _, kp := range all {
		if !usable(kp.Attributes, time.Now()) {
			continue
		}
		var at time.Time
		if kp.Attributes != nil && kp.Attributes.Created != nil {
			at = *kp.Attributes.Created
		}
		if best == "" || at.After(bestAt) {
			best, bestAt = kp.KID.Version(), at
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: key vault key %s has no enabled version", keystore.ErrKeyDisabled, b.cfg.name)
	}
	return best, nil
}

func (b *Backend) resolveAndProbe(ctx context.Context) (current, error) {
	c, err := b.resolve(ctx)
	if err != nil {
		return current{}, err
	}
	wrap := func(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) { return b.wrap(ctx, c, pt, aad) }
	if err := remote.Probe(ctx, wrap, b.Unwrap); err != nil {
		return current{}, err
	}
	return c, nil
}

// call runs one Key Vault call with a per-attempt timeout and, when
// idempotent, retries by error class.
func (b *Backend) call(ctx context.Context, idempotent bool, op string, f func(ctx context.Context) error) error {
	if err := b.retry.Call(ctx, idempotent, classify, f); err != nil {
		return fmt.Errorf("key vault %s %s: %w", op, b.cfg.name, err)
	}
	return nil
}

// errorDetail reads Key Vault's error body: {"error": {"code", "message",
// "innererror": {"code"}}}. A disabled or expired key is a 403 whose inner
// code says so (KeyDisabled, KeyExpired, KeyNotYetValid).
func errorDetail(re *azcore.ResponseError) (inner, msg string) {
	if re.RawResponse == nil {
		return "", ""
	}
	body, err := runtime.Payload(re.RawResponse)
	if err != nil {
		return "", ""
	}
	var e struct {
		Error struct {
			Message    string `json:"message"`
			InnerError *struct {
				Code string `json:"code"`
			} `json:"innererror"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return "", ""
	}
	if e.Error.InnerError != nil {
		inner = e.Error.InnerError.Code
	}
	return inner, e.Error.Message
}

// classify sorts an Azure SDK error into keystore's classes.
func classify(err error) error {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		var class error
		code := re.ErrorCode
		inner, msg := errorDetail(re)
		switch s := re.StatusCode; {
		case inner == "KeyDisabled" || inner == "KeyExpired" || inner == "KeyNotYetValid",
			code == "KeyDisabled", s == http.StatusForbidden && strings.Contains(msg, "disabled key"):
			class = keystore.ErrKeyDisabled
		case s == http.StatusBadRequest:
			// For unwrapKey: a wrapped data key Key Vault cannot unwrap,
			// tampered or made by another key or version.
			class = keystore.ErrInvalid
		case s == http.StatusNotFound:
			class = keystore.ErrKeyNotFound
		case s == http.StatusRequestTimeout:
			class = keystore.ErrUnavailable
		default:
			if class = remote.StatusClass(s); class == nil {
				class = fmt.Errorf("unexpected HTTP %d", s)
			}
		}
		if inner != "" {
			code += "/" + inner
		}
		return fmt.Errorf("%w: HTTP %d %s", class, re.StatusCode, code)
	}
	var af *azidentity.AuthenticationFailedError
	if errors.As(err, &af) {
		return fmt.Errorf("%w: %v", keystore.ErrPermission, err)
	}
	// No answer (refused, reset, DNS), or no credential to get a token with.
	return fmt.Errorf("%w: %v", keystore.ErrUnavailable, err)
}

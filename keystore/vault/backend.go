package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote"
)

// Name is the backend name used in metrics and logs.
const Name = "vault"

// Transit key types that are AEADs, so associated_data is bound.
var aeadTypes = map[string]bool{"aes256-gcm96": true, "aes128-gcm96": true, "chacha20-poly1305": true}

// Transit AEAD ciphertexts are a 12-byte nonce and a 16-byte tag around the
// plaintext; anything shorter is refused without a call.
const (
	minCiphertext = 12 + 16
	maxCiphertext = 16 << 10
)

// vaultAPI is the part of the Vault client we use.
type vaultAPI interface {
	Read(ctx context.Context, path string) (*api.Secret, error)
	Write(ctx context.Context, path string, data map[string]any) (*api.Secret, error)
	// Login writes with no token at all (auth/<mount>/login).
	Login(ctx context.Context, path string, data map[string]any) (*api.Secret, error)
	SetToken(token string)
}

type apiClient struct{ c, anon *api.Client }

func (a apiClient) Read(ctx context.Context, path string) (*api.Secret, error) {
	return a.c.Logical().ReadWithContext(ctx, path)
}

func (a apiClient) Write(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	return a.c.Logical().WriteWithContext(ctx, path, data)
}

func (a apiClient) Login(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	return a.anon.Logical().WriteWithContext(ctx, path, data)
}

func (a apiClient) SetToken(t string) { a.c.SetToken(t) }

// Backend is a keystore.Backend over one Vault Transit key.
type Backend struct {
	cfg    config
	api    vaultAPI
	tok    *tokens
	retry  remote.Retry
	meta   *remote.Cache[*keyMeta]
	prefix string // "<mount>/keys/<name>:", the fixed part of every key_id

	seenMu sync.Mutex
	seen   map[int]int64 // version → creation time, as first read
}

var (
	_ keystore.Backend = (*Backend)(nil)
	_ keystore.Manager = (*Backend)(nil)
)

// keyMeta is what a read of transit/keys/<name> tells us.
type keyMeta struct {
	typ      string
	latest   int
	minDec   int
	minAvail int
	minEnc   int
	created  map[int]int64 // version → creation unix time (Transit lists only versions ≥ min_decryption_version)
}

// Open opens the Transit key the hcvault:// URI names. It reads the key once:
// a key that does not exist, is not an AEAD, or that our credentials may not
// read fails Open; a Vault that does not answer yet does not (keywarden
// starts unhealthy and its health loop keeps trying).
func Open(ctx context.Context, uri string) (*Backend, error) {
	cfg, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	c, err := newAPIClient(cfg)
	if err != nil {
		return nil, err
	}
	b := newBackend(cfg, c, time.Now)
	if err := b.meta.Prime(ctx, b.fetch); err != nil {
		return nil, err
	}
	return b, nil
}

func newAPIClient(cfg config) (apiClient, error) {
	mk := func() (*api.Client, error) {
		tr := remote.Transport()
		tr.TLSClientConfig = cfg.tls.Clone()
		tr.ForceAttemptHTTP2 = cfg.tls != nil
		c, err := api.NewClient(&api.Config{
			Address:    cfg.addr,
			HttpClient: &http.Client{Transport: tr},
			MaxRetries: 0, // we retry, by error class, in remote.Retry
			Timeout:    0, // bounded per call by our context
		})
		if err != nil {
			return nil, fmt.Errorf("%w: vault client: %v", keystore.ErrConfig, err)
		}
		// NewClient reads VAULT_TOKEN, VAULT_NAMESPACE and VAULT_HEADERS
		// from the environment; keywarden takes its configuration from the
		// URI alone.
		c.ClearToken()
		c.SetHeaders(http.Header{api.RequestHeaderName: []string{"true"}})
		c.ClearNamespace()
		if cfg.namespace != "" {
			c.SetNamespace(cfg.namespace)
		}
		return c, nil
	}
	c, err := mk()
	if err != nil {
		return apiClient{}, err
	}
	anon, err := mk()
	if err != nil {
		return apiClient{}, err
	}
	return apiClient{c: c, anon: anon}, nil
}

func newBackend(cfg config, c vaultAPI, now func() time.Time) *Backend {
	b := &Backend{
		cfg:    cfg,
		api:    c,
		retry:  remote.DefaultRetry(cfg.Timeout),
		meta:   remote.NewCache[*keyMeta](cfg.KeyIDTTL, remote.DefaultRetry(cfg.Timeout).FetchTimeout(), now),
		prefix: cfg.mount + "/keys/" + cfg.name + ":",
		seen:   map[int]int64{},
	}
	b.tok = &tokens{cfg: &b.cfg, api: c, now: now}
	return b
}

// Name implements keystore.Backend.
func (b *Backend) Name() string { return Name }

// Close gives back a token keywarden logged in for.
func (b *Backend) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b.tok.revoke(ctx)
	return nil
}

// KeyID implements keystore.Backend. It serves the key's latest version from
// a cache refreshed at most once per key-id-ttl; a refresh reads the key and
// probes encrypt and decrypt, so an expired token or a narrowed policy shows
// up in health within one TTL.
func (b *Backend) KeyID(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m, err := b.meta.Get(ctx, b.fetchAndProbe)
	if err != nil {
		return "", err
	}
	return b.keyID(m, m.latest), nil
}

// A key_id names a Transit key version and, by the version's creation time
// (which Transit lists for every version from min_decryption_version on),
// that version of this key and no other: a key deleted and re-created
// under the same name restarts at v1, and its v1 has another time. The
// form is "<mount>/keys/<name>:v<n>#<creation time, Unix seconds>".
// Earlier keywarden versions wrote "<mount>/keys/<name>:v<n>", which
// existing clusters' etcd holds; Unwrap and the Manager calls still take
// that form (keystore.SameVersion: both name the same version).

// keyID is the key_id of version v. A version Transit lists without a
// creation time (disabled: below min_decryption_version) gets the untagged
// form; Wrap and KeyID only ever name the latest version, which Transit
// always lists.
func (b *Backend) keyID(m *keyMeta, v int) string {
	kid := b.prefix + "v" + strconv.Itoa(v)
	if t, ok := m.created[v]; ok {
		kid += "#" + strconv.FormatInt(t, 10)
	}
	return kid
}

// parseKeyID returns the version a key_id of this key names and, when the
// key_id carries one, the creation time it names. A key_id of another key is
// ErrKeyNotFound.
func (b *Backend) parseKeyID(kid string) (v int, created int64, tagged bool, err error) {
	rest, ok := strings.CutPrefix(kid, b.prefix+"v")
	if !ok {
		return 0, 0, false, fmt.Errorf("%w: key_id %q does not name vault key %sv<n>", keystore.ErrKeyNotFound, short(kid), b.prefix)
	}
	vs, ts, tagged := strings.Cut(rest, "#")
	v, err = strconv.Atoi(vs)
	if err != nil || v < 1 || vs != strconv.Itoa(v) {
		return 0, 0, false, fmt.Errorf("%w: malformed vault key_id %q", keystore.ErrKeyNotFound, short(kid))
	}
	if tagged {
		created, err = strconv.ParseInt(ts, 10, 64)
		if err != nil || created < 1 || ts != strconv.FormatInt(created, 10) {
			return 0, 0, false, fmt.Errorf("%w: malformed vault key_id %q", keystore.ErrKeyNotFound, short(kid))
		}
	}
	return v, created, tagged, nil
}

// checkCreated refuses a key_id whose version m lists with another
// creation time: it names a version of a key deleted since. A version m
// does not list (disabled, or newer than m) is left to Vault.
func (b *Backend) checkCreated(m *keyMeta, kid string, v int, created int64, tagged bool) error {
	if !tagged || m == nil {
		return nil
	}
	if t, ok := m.created[v]; ok && t != created {
		return fmt.Errorf("%w: key_id %q names version %d created at %d, but vault key %s's version %d was created at %d: the key was deleted and re-created since", keystore.ErrKeyNotFound, short(kid), v, created, b.cfg.name, v, t)
	}
	return nil
}

// short keeps error messages bounded when a caller sends a huge key_id.
func short(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// Wrap implements keystore.Backend: Transit encrypt with aad as
// associated_data. Vault picks the latest version; its number comes back in
// the ciphertext and names the key_id.
func (b *Backend) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Wrapped{}, err
	}
	v, raw, err := b.encrypt(ctx, pt, aad)
	if err != nil {
		return keystore.Wrapped{}, err
	}
	// A version newer than the cached metadata (someone rotated), or one
	// it has no creation time for: read the key now, so that KeyID follows
	// what Wrap used and the key_id names the version's creation time.
	m, ok := b.meta.Peek()
	if !ok || v > m.latest || m.created[v] == 0 {
		if m, err = b.refreshMeta(ctx); err != nil {
			return keystore.Wrapped{}, err
		}
	}
	if _, listed := m.created[v]; !listed {
		return keystore.Wrapped{}, fmt.Errorf("%w: vault encrypted with version %d of key %s, which its key read does not list", keystore.ErrUnavailable, v, b.cfg.name)
	}
	return keystore.Wrapped{KeyID: b.keyID(m, v), Ciphertext: raw}, nil
}

// Unwrap implements keystore.Backend: Transit decrypt of the version the
// key_id names (never the version a ciphertext claims), with aad.
func (b *Backend) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	v, created, tagged, err := b.parseKeyID(w.KeyID)
	if err != nil {
		return nil, err
	}
	if n := len(w.Ciphertext); n < minCiphertext || n > maxCiphertext {
		return nil, fmt.Errorf("%w: vault ciphertext is %d bytes, want %d..%d", keystore.ErrInvalid, n, minCiphertext, maxCiphertext)
	}
	// A version of a key deleted since is refused from the cached
	// metadata, without a call. Vault itself refuses a version that is too
	// new (NotFound), below min_decryption_version or trimmed (disabled).
	m, _ := b.meta.Peek()
	if err := b.checkCreated(m, w.KeyID, v, created, tagged); err != nil {
		return nil, err
	}
	return b.decrypt(ctx, v, w.Ciphertext, aad)
}

func (b *Backend) encrypt(ctx context.Context, pt, aad []byte) (int, []byte, error) {
	data := map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)}
	if len(aad) > 0 {
		data["associated_data"] = base64.StdEncoding.EncodeToString(aad)
	}
	var s *api.Secret
	err := b.call(ctx, true, "encrypt", func(ctx context.Context) (err error) {
		s, err = b.api.Write(ctx, b.cfg.mount+"/encrypt/"+b.cfg.name, data)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	if s == nil {
		return 0, nil, fmt.Errorf("%w: vault encrypt returned no data", keystore.ErrUnavailable)
	}
	ct, _ := s.Data["ciphertext"].(string)
	v, raw, err := parseCiphertext(ct)
	if err != nil {
		return 0, nil, err
	}
	return v, raw, nil
}

func (b *Backend) decrypt(ctx context.Context, v int, raw, aad []byte) ([]byte, error) {
	data := map[string]any{"ciphertext": formatCiphertext(v, raw)}
	if len(aad) > 0 {
		data["associated_data"] = base64.StdEncoding.EncodeToString(aad)
	}
	var s *api.Secret
	err := b.call(ctx, true, "decrypt", func(ctx context.Context) (err error) {
		s, err = b.api.Write(ctx, b.cfg.mount+"/decrypt/"+b.cfg.name, data)
		return err
	})
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, fmt.Errorf("%w: vault decrypt returned no data", keystore.ErrUnavailable)
	}
	p64, _ := s.Data["plaintext"].(string)
	pt, err := base64.StdEncoding.DecodeString(p64)
	if err != nil {
		return nil, fmt.Errorf("%w: vault decrypt returned malformed plaintext encoding", keystore.ErrUnavailable)
	}
	return pt, nil
}

// formatCiphertext is Transit's "vault:v<n>:<base64>" form of raw.
func formatCiphertext(v int, raw []byte) string {
	return "vault:v" + strconv.Itoa(v) + ":" + base64.StdEncoding.EncodeToString(raw)
}

// parseCiphertext splits Transit's "vault:v<n>:<base64>". It reads Vault's
// answer to encrypt, so a malformed one is the keystore failing, as an
// encrypt that returns no data is: ErrUnavailable.
func parseCiphertext(s string) (int, []byte, error) {
	rest, ok := strings.CutPrefix(s, "vault:v")
	vs, b64, ok2 := strings.Cut(rest, ":")
	v, err := strconv.Atoi(vs)
	// Only the one form Vault writes (and formatCiphertext writes back):
	// no "v01" or "v+1", no line breaks or stray bits in the base64.
	if !ok || !ok2 || err != nil || v < 1 || vs != strconv.Itoa(v) {
		return 0, nil, fmt.Errorf("%w: vault encrypt returned a ciphertext not of the form vault:v<n>:<base64>", keystore.ErrUnavailable)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err == nil && base64.StdEncoding.EncodeToString(raw) != b64 {
		err = errors.New("not canonical")
	}
	// Unwrap refuses what is outside these bounds: a larger answer
	// accepted here would wrap a KEK that never unwraps.
	if err != nil || len(raw) < minCiphertext || len(raw) > maxCiphertext {
		return 0, nil, fmt.Errorf("%w: vault encrypt returned a malformed ciphertext", keystore.ErrUnavailable)
	}
	return v, raw, nil
}

func (b *Backend) refreshMeta(ctx context.Context) (*keyMeta, error) {
	return b.meta.Update(ctx, b.fetch)
}

// fetchAndProbe reads the key and probes encrypt and decrypt (remote.Probe),
// so KeyID fails when Wrap or Unwrap would.
func (b *Backend) fetchAndProbe(ctx context.Context) (*keyMeta, error) {
	m, err := b.fetch(ctx)
	if err != nil {
		return nil, err
	}
	// The probe decrypts with the version encrypt used, as it came back in
	// the ciphertext: not through Unwrap, which needs a key_id for it.
	var v int
	wrap := func(ctx context.Context, pt, aad []byte) (w keystore.Wrapped, err error) {
		v, w.Ciphertext, err = b.encrypt(ctx, pt, aad)
		return w, err
	}
	unwrap := func(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
		return b.decrypt(ctx, v, w.Ciphertext, aad)
	}
	if err := remote.Probe(ctx, wrap, unwrap); err != nil {
		return nil, err
	}
	if v > m.latest {
		// Rotated between the read and the probe.
		return b.fetch(ctx)
	}
	return m, nil
}

func (b *Backend) fetch(ctx context.Context) (*keyMeta, error) {
	var s *api.Secret
	err := b.call(ctx, true, "read key", func(ctx context.Context) (err error) {
		s, err = b.api.Read(ctx, b.cfg.mount+"/keys/"+b.cfg.name)
		return err
	})
	if err != nil {
		return nil, err
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("%w: vault transit key %s/keys/%s does not exist", keystore.ErrKeyNotFound, b.cfg.mount, b.cfg.name)
	}
	m, err := parseMeta(s.Data)
	if err != nil {
		return nil, err
	}
	return m, b.checkSameKey(m)
}

// checkSameKey notices a key that was deleted and re-created under the same
// name while keywarden runs: its versions restart at 1, so its key_ids would
// repeat the old key's. Transit exposes no key identity other than the
// creation time of each (enabled) version, which we remember.
func (b *Backend) checkSameKey(m *keyMeta) error {
	b.seenMu.Lock()
	defer b.seenMu.Unlock()
	for v, t := range m.created {
		if old, ok := b.seen[v]; ok && old != t {
			return fmt.Errorf("%w: vault key %s was deleted and re-created (version %d was created at %d, now %d); its key_ids would repeat the old key's: use a new key name", keystore.ErrConfig, b.cfg.name, v, old, t)
		}
	}
	for v, t := range m.created {
		b.seen[v] = t
	}
	return nil
}

func parseMeta(d map[string]any) (*keyMeta, error) {
	m := &keyMeta{created: map[int]int64{}}
	m.typ, _ = d["type"].(string)
	if !aeadTypes[m.typ] {
		return nil, fmt.Errorf("%w: vault transit key type %q does not bind associated data; use aes256-gcm96", keystore.ErrConfig, m.typ)
	}
	for k, dst := range map[string]*int{"latest_version": &m.latest, "min_decryption_version": &m.minDec, "min_available_version": &m.minAvail, "min_encryption_version": &m.minEnc} {
		n, err := jsonInt(d[k])
		if err != nil {
			return nil, fmt.Errorf("vault key read: field %s: %v", k, err)
		}
		*dst = int(n)
	}
	keys, _ := d["keys"].(map[string]any)
	for k, c := range keys {
		v, err := strconv.Atoi(k)
		t, err2 := jsonInt(c)
		if err != nil || err2 != nil || v < 1 {
			return nil, fmt.Errorf("vault key read: malformed keys entry %q", k)
		}
		m.created[v] = t
	}
	if m.latest < 1 || m.created[m.latest] == 0 {
		return nil, fmt.Errorf("vault key read: latest version %d not among its keys", m.latest)
	}
	return m, nil
}

// call runs one Vault call with our token, a per-attempt timeout and, when
// idempotent, retries by error class. A refused token is replaced (token file
// re-read, or a new login) and the call tried once more.
func (b *Backend) call(ctx context.Context, idempotent bool, op string, f func(ctx context.Context) error) error {
	// ensure's errors already carry a class (or are the context's), so
	// Call passes them through; f's go through classify.
	attempt := func(actx context.Context) error {
		if err := b.tok.ensure(actx); err != nil {
			return err
		}
		return f(actx)
	}
	err := b.retry.Call(ctx, idempotent, classify, attempt)
	if errors.Is(err, keystore.ErrPermission) && ctx.Err() == nil && b.tok.denied(ctx) {
		err = b.retry.Call(ctx, idempotent, classify, attempt)
	}
	if err != nil {
		return fmt.Errorf("vault %s %s/%s: %w", op, b.cfg.mount, b.cfg.name, err)
	}
	return nil
}

// classify sorts a Vault client error into keystore's classes. It has the
// signature of its siblings' (awskms, gcpkms, azurekv), for remote.Retry.Call.
func classify(err error) error { return sortError(err, false) }

// classifyLogin is classify for a login, where a 400 is Vault refusing our
// credentials (AppRole: "invalid role or secret ID").
func classifyLogin(err error) error { return sortError(err, true) }

func sortError(err error, login bool) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		msg := remote.Detail(strings.Join(re.Errors, "; "))
		var class error
		switch c := re.StatusCode; c {
		case http.StatusBadRequest:
			switch {
			case login:
				class = keystore.ErrPermission
			case strings.Contains(msg, "too old"):
				class = keystore.ErrKeyDisabled
			case strings.Contains(msg, "version is too new"), strings.Contains(msg, "key not found"), strings.Contains(msg, "no such key version"):
				class = keystore.ErrKeyNotFound
			default:
				class = keystore.ErrInvalid
			}
		case http.StatusNotFound:
			class = keystore.ErrKeyNotFound
		case http.StatusPreconditionFailed:
			// A performance standby has not caught up. (5xx, with 503 for
			// sealed or in standby, are ErrUnavailable too.)
			class = keystore.ErrUnavailable
		default:
			if class = remote.StatusClass(c); class == nil {
				class = fmt.Errorf("unexpected HTTP %d", c)
			}
		}
		return fmt.Errorf("%w: HTTP %d: %s", class, re.StatusCode, msg)
	}
	var (
		ua x509.UnknownAuthorityError
		hn x509.HostnameError
		ci x509.CertificateInvalidError
		rh tls.RecordHeaderError
	)
	if errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci) || errors.As(err, &rh) {
		return fmt.Errorf("%w: TLS: %v", keystore.ErrConfig, err)
	}
	// Anything else is the request not getting an answer: refused, reset,
	// DNS, a proxy's garbage.
	return fmt.Errorf("%w: %v", keystore.ErrUnavailable, err)
}

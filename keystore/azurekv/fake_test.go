package azurekv

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys/fake"
)

// fakeVault backs the SDK's own fake server (azkeys/fake.Server, served
// in-process through fake.NewServerTransport) with an in-memory Key Vault:
// RSA keys that wrap with RSA-OAEP-256 and oct-HSM keys that wrap with A256KW
// (RFC 3394), versions, the enabled attribute, and Key Vault's error shapes
// (400 BadParameter for a data key that does not unwrap, 403 with inner code
// KeyDisabled, 404 KeyNotFound). It is a fake: it has not been compared with
// Key Vault byte for byte. It can fail or hang a method on demand.
type fakeVault struct {
	host string // https://fake.vault.azure.net

	mu     sync.Mutex
	keys   map[string][]*fakeVersion
	faults map[string]fault
	calls  map[string]int
}

type fault struct {
	status int
	code   string
	count  int
	hang   bool
}

type fakeVersion struct {
	id      string
	kty     azkeys.KeyType
	rsa     *rsa.PrivateKey
	aes     []byte
	enabled bool
	created time.Time
}

func newFakeVault(host string) *fakeVault {
	return &fakeVault{host: host, keys: map[string][]*fakeVersion{}, faults: map[string]fault{}, calls: map[string]int{}}
}

var fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

// created hands out strictly increasing creation times.
func nextCreated() time.Time {
	fakeClock.mu.Lock()
	defer fakeClock.mu.Unlock()
	if fakeClock.t.IsZero() {
		fakeClock.t = time.Unix(1_700_000_000, 0)
	}
	fakeClock.t = fakeClock.t.Add(time.Second)
	return fakeClock.t
}

func (f *fakeVault) addVersion(name string, kty azkeys.KeyType, bits int) *fakeVersion {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	v := &fakeVersion{id: hex.EncodeToString(id), kty: kty, enabled: true, created: nextCreated()}
	switch kty {
	case azkeys.KeyTypeOctHSM:
		v.aes = make([]byte, 32)
		_, _ = rand.Read(v.aes)
	default:
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			panic(err)
		}
		v.rsa = k
	}
	f.mu.Lock()
	f.keys[name] = append(f.keys[name], v)
	f.mu.Unlock()
	return v
}

func (f *fakeVault) kid(name string, v *fakeVersion) *azkeys.ID {
	id := azkeys.ID(f.host + "/keys/" + name + "/" + v.id)
	return &id
}

func (f *fakeVault) bundle(name string, v *fakeVersion) azkeys.KeyBundle {
	kty := v.kty
	enabled := v.enabled
	created := v.created
	jwk := &azkeys.JSONWebKey{KID: f.kid(name, v), Kty: &kty,
		KeyOps: []*azkeys.KeyOperation{ptr(azkeys.KeyOperationWrapKey), ptr(azkeys.KeyOperationUnwrapKey)}}
	if v.rsa != nil {
		jwk.N = v.rsa.N.Bytes()
		jwk.E = big2bytes(v.rsa.E)
	}
	return azkeys.KeyBundle{Key: jwk, Attributes: &azkeys.KeyAttributes{Enabled: &enabled, Created: &created}}
}

func big2bytes(e int) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(e))
	return bytes.TrimLeft(b, "\x00")
}

func (f *fakeVault) setFault(method string, fl fault) {
	f.mu.Lock()
	f.faults[method] = fl
	f.mu.Unlock()
}

func (f *fakeVault) callCount(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// enter counts a call and applies its fault; it returns with f.mu held when
// the call should proceed.
func (f *fakeVault) enter(ctx context.Context, method string, e *azfake.ErrorResponder) bool {
	f.mu.Lock()
	f.calls[method]++
	fl := f.faults[method]
	if fl.count > 0 && !fl.hang {
		fl.count--
		f.faults[method] = fl
		f.mu.Unlock()
		e.SetResponseError(fl.status, fl.code)
		return false
	}
	return true
}

// norm undoes a quirk of the generated fake: its route regex lets the key
// name swallow "/" (the character class "$-;" spans it), so /keys/kw/
// arrives as name "kw/" and /keys/kw/v as name "kw/v".
func norm(name, version string) (string, string) {
	if n, v, ok := strings.Cut(name, "/"); ok && version == "" {
		return n, v
	}
	return name, version
}

// lookup resolves name and version ("" is the latest). Call with f.mu held.
func (f *fakeVault) lookup(name, version string, e *azfake.ErrorResponder) *fakeVersion {
	vs := f.keys[name]
	if len(vs) == 0 {
		e.SetResponseError(http.StatusNotFound, "KeyNotFound")
		return nil
	}
	if version == "" {
		return vs[len(vs)-1]
	}
	for _, v := range vs {
		if v.id == version {
			return v
		}
	}
	e.SetResponseError(http.StatusNotFound, "KeyNotFound")
	return nil
}

// transport puts vaultTransport in front of the SDK's fake server transport.
func (f *fakeVault) transport(srv *fake.Server) policy.Transporter {
	return vaultTransport{f: f, inner: fake.NewServerTransport(srv)}
}

// vaultTransport does, in front of the SDK's fake transport, the two things
// that fake cannot: answer with Key Vault's full error body (the fake keeps
// only a status and a code, and a disabled key is told apart by the body's
// inner error code), and hang a call until the client gives up (the fake's
// dispatcher panics if a handler returns after that).
type vaultTransport struct {
	f     *fakeVault
	inner policy.Transporter
}

func (t vaultTransport) Do(req *http.Request) (*http.Response, error) {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/") // keys, name, version, op
	if len(parts) == 4 && parts[0] == "keys" && req.Header.Get("Authorization") != "" {
		method := map[string]string{"wrapkey": "WrapKey", "unwrapkey": "UnwrapKey"}[parts[3]]
		t.f.mu.Lock()
		fl := t.f.faults[method]
		hang := method != "" && fl.hang && fl.count > 0
		if hang {
			fl.count--
			t.f.faults[method] = fl
			t.f.calls[method]++
		}
		var disabled bool
		for _, v := range t.f.keys[parts[1]] {
			disabled = disabled || (v.id == parts[2] && !v.enabled)
		}
		t.f.mu.Unlock()
		switch {
		case hang:
			select {
			case <-req.Context().Done():
				return nil, req.Context().Err()
			case <-time.After(10 * time.Second):
				return nil, errors.New("fake hang: client never gave up")
			}
		case method != "" && disabled:
			body := fmt.Sprintf(`{"error":{"code":"Forbidden","message":"Operation %s is not allowed on a disabled key.","innererror":{"code":"KeyDisabled"}}}`, parts[3])
			return &http.Response{
				StatusCode: http.StatusForbidden,
				Status:     "403 Forbidden",
				Header:     http.Header{"Content-Type": []string{"application/json; charset=utf-8"}},
				Body:       io.NopCloser(strings.NewReader(body)),
				Request:    req,
			}, nil
		}
	}
	return t.inner.Do(req)
}

func (f *fakeVault) server() *fake.Server {
	return &fake.Server{
		GetKey: func(ctx context.Context, name, version string, _ *azkeys.GetKeyOptions) (r azfake.Responder[azkeys.GetKeyResponse], e azfake.ErrorResponder) {
			name, version = norm(name, version)
			if !f.enter(ctx, "GetKey", &e) {
				return
			}
			defer f.mu.Unlock()
			if v := f.lookup(name, version, &e); v != nil {
				r.SetResponse(http.StatusOK, azkeys.GetKeyResponse{KeyBundle: f.bundle(name, v)}, nil)
			}
			return
		},
		WrapKey: func(ctx context.Context, name, version string, p azkeys.KeyOperationParameters, _ *azkeys.WrapKeyOptions) (r azfake.Responder[azkeys.WrapKeyResponse], e azfake.ErrorResponder) {
			name, version = norm(name, version)
			if !f.enter(ctx, "WrapKey", &e) {
				return
			}
			defer f.mu.Unlock()
			v := f.lookup(name, version, &e)
			if v == nil {
				return
			}
			if !v.enabled {
				e.SetResponseError(http.StatusForbidden, "Forbidden") // vaultTransport answers first
				return
			}
			var out []byte
			var err error
			switch {
			case v.rsa != nil && *p.Algorithm == azkeys.EncryptionAlgorithmRSAOAEP256:
				out, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, &v.rsa.PublicKey, p.Value, nil)
			case v.aes != nil && *p.Algorithm == azkeys.EncryptionAlgorithmA256KW:
				out, err = aesKeyWrap(v.aes, p.Value)
			default:
				err = errors.New("algorithm does not fit the key type")
			}
			if err != nil {
				e.SetResponseError(http.StatusBadRequest, "BadParameter")
				return
			}
			r.SetResponse(http.StatusOK, azkeys.WrapKeyResponse{KeyOperationResult: azkeys.KeyOperationResult{KID: f.kid(name, v), Result: out}}, nil)
			return
		},
		UnwrapKey: func(ctx context.Context, name, version string, p azkeys.KeyOperationParameters, _ *azkeys.UnwrapKeyOptions) (r azfake.Responder[azkeys.UnwrapKeyResponse], e azfake.ErrorResponder) {
			name, version = norm(name, version)
			if !f.enter(ctx, "UnwrapKey", &e) {
				return
			}
			defer f.mu.Unlock()
			v := f.lookup(name, version, &e)
			if v == nil {
				return
			}
			if !v.enabled {
				e.SetResponseError(http.StatusForbidden, "Forbidden") // vaultTransport answers first
				return
			}
			var out []byte
			var err error
			switch {
			case v.rsa != nil && *p.Algorithm == azkeys.EncryptionAlgorithmRSAOAEP256:
				out, err = rsa.DecryptOAEP(sha256.New(), nil, v.rsa, p.Value, nil)
			case v.aes != nil && *p.Algorithm == azkeys.EncryptionAlgorithmA256KW:
				out, err = aesKeyUnwrap(v.aes, p.Value)
			default:
				err = errors.New("algorithm does not fit the key type")
			}
			if err != nil {
				e.SetResponseError(http.StatusBadRequest, "BadParameter")
				return
			}
			r.SetResponse(http.StatusOK, azkeys.UnwrapKeyResponse{KeyOperationResult: azkeys.KeyOperationResult{KID: f.kid(name, v), Result: out}}, nil)
			return
		},
		NewListKeyPropertiesVersionsPager: func(name string, _ *azkeys.ListKeyPropertiesVersionsOptions) (r azfake.PagerResponder[azkeys.ListKeyPropertiesVersionsResponse]) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.calls["ListVersions"]++
			vs := f.keys[name]
			if len(vs) == 0 {
				r.AddResponseError(http.StatusNotFound, "KeyNotFound")
				return
			}
			for i := 0; i < len(vs); i += 2 { // two versions per page
				var page azkeys.ListKeyPropertiesVersionsResponse
				for _, v := range vs[i:min(i+2, len(vs))] {
					b := f.bundle(name, v)
					page.Value = append(page.Value, &azkeys.KeyProperties{KID: b.Key.KID, Attributes: b.Attributes})
				}
				r.AddPage(http.StatusOK, page, nil)
			}
			return
		},
		CreateKey: func(ctx context.Context, name string, p azkeys.CreateKeyParameters, _ *azkeys.CreateKeyOptions) (r azfake.Responder[azkeys.CreateKeyResponse], e azfake.ErrorResponder) {
			if !f.enter(ctx, "CreateKey", &e) {
				return
			}
			f.mu.Unlock()
			v := f.addVersion(name, *p.Kty, int(*p.KeySize))
			f.mu.Lock()
			defer f.mu.Unlock()
			r.SetResponse(http.StatusOK, azkeys.CreateKeyResponse{KeyBundle: f.bundle(name, v)}, nil)
			return
		},
		UpdateKey: func(ctx context.Context, name, version string, p azkeys.UpdateKeyParameters, _ *azkeys.UpdateKeyOptions) (r azfake.Responder[azkeys.UpdateKeyResponse], e azfake.ErrorResponder) {
			name, version = norm(name, version)
			if !f.enter(ctx, "UpdateKey", &e) {
				return
			}
			defer f.mu.Unlock()
			v := f.lookup(name, version, &e)
			if v == nil {
				return
			}
			if p.KeyAttributes != nil && p.KeyAttributes.Enabled != nil {
				v.enabled = *p.KeyAttributes.Enabled
			}
			r.SetResponse(http.StatusOK, azkeys.UpdateKeyResponse{KeyBundle: f.bundle(name, v)}, nil)
			return
		},
	}
}

// RFC 3394 AES key wrap with the default IV, for the fake's oct-HSM keys.
var kwIV = []byte{0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6}

func aesKeyWrap(kek, pt []byte) ([]byte, error) {
	if len(pt)%8 != 0 || len(pt) < 16 {
		return nil, errors.New("bad length")
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(pt) / 8
	a := bytes.Clone(kwIV)
	r := make([][]byte, n)
	for i := range r {
		r[i] = bytes.Clone(pt[i*8 : i*8+8])
	}
	buf := make([]byte, 16)
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(buf, a)
			copy(buf[8:], r[i])
			block.Encrypt(buf, buf)
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a, binary.BigEndian.Uint64(buf[:8])^t)
			copy(r[i], buf[8:])
		}
	}
	out := append([]byte{}, a...)
	for _, x := range r {
		out = append(out, x...)
	}
	return out, nil
}

func aesKeyUnwrap(kek, ct []byte) ([]byte, error) {
	if len(ct)%8 != 0 || len(ct) < 24 {
		return nil, errors.New("bad length")
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(ct)/8 - 1
	a := bytes.Clone(ct[:8])
	r := make([][]byte, n)
	for i := range r {
		r[i] = bytes.Clone(ct[8+i*8 : 16+i*8])
	}
	buf := make([]byte, 16)
	for j := 5; j >= 0; j-- {
		for i := n - 1; i >= 0; i-- {
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(buf[:8], binary.BigEndian.Uint64(a)^t)
			copy(buf[8:], r[i])
			block.Decrypt(buf, buf)
			copy(a, buf[:8])
			copy(r[i], buf[8:])
		}
	}
	if !bytes.Equal(a, kwIV) {
		return nil, errors.New("integrity check failed")
	}
	var out []byte
	for _, x := range r {
		out = append(out, x...)
	}
	return out, nil
}

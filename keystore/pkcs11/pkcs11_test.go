//go:build !nopkcs11

package pkcs11

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

var kek = []byte("0123456789abcdef0123456789abcdef")

func TestConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystoretest.Fixture {
		tok := newToken(t)
		ctx := context.Background()
		if _, err := Init(ctx, tok.uri); err != nil {
			t.Fatalf("Init: %v", err)
		}
		b, err := Open(ctx, tok.uri)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return keystoretest.Fixture{
			Backend: b,
			Rotate: func(ctx context.Context) error {
				v, err := b.Add(ctx)
				if err != nil {
					return err
				}
				return b.Promote(ctx, v.KeyID)
			},
		}
	})
}

func TestParseURI(t *testing.T) {
	requireSoftHSM(t)
	mod := softhsm.module
	pinFile := writePIN(t, "1234")
	src := "&pin-source=file:" + pinFile
	tests := []struct {
		name    string
		uri     string
		wantErr bool
	}{
		{"pin-source", "pkcs11:token=kw;object=root?module-path=" + mod + src, false},
		{"pin-source without file:", "pkcs11:token=kw;object=root?module-path=" + mod + "&pin-source=" + pinFile, false},
		{"serial only", "pkcs11:serial=abc;object=root?module-path=" + mod + src, false},
		{"pct-encoded label", "pkcs11:token=my%20token;object=root%2f1?module-path=" + mod + src, false},
		// A PIN in the URI shows up in ps, manifests and shell history.
		{"pin-value", "pkcs11:token=kw;object=root?module-path=" + mod + "&pin-value=1234", true},
		{"not pkcs11", "file:///x", true},
		{"no object", "pkcs11:token=kw?module-path=" + mod + src, true},
		{"id set", "pkcs11:token=kw;object=root;id=%01?module-path=" + mod + src, true},
		{"no token", "pkcs11:object=root?module-path=" + mod + src, true},
		{"no module", "pkcs11:token=kw;object=root?pin-source=file:" + pinFile, true},
		{"relative module", "pkcs11:token=kw;object=root?module-path=lib.so" + src, true},
		{"missing module", "pkcs11:token=kw;object=root?module-path=/nonexistent/lib.so" + src, true},
		{"no pin", "pkcs11:token=kw;object=root?module-path=" + mod, true},
		{"both pins", "pkcs11:token=kw;object=root?module-path=" + mod + "&pin-value=1234" + src, true},
		{"relative pin-source", "pkcs11:token=kw;object=root?module-path=" + mod + "&pin-source=file:pin", true},
		{"pin-source not a file", "pkcs11:token=kw;object=root?module-path=" + mod + "&pin-source=https://x/pin", true},
		{"bad slot", "pkcs11:token=kw;slot-id=x;object=root?module-path=" + mod + src, true},
		{"malformed with pin", "pkcs11:token=kw;object=root;junk?module-path=" + mod + "&pin-value=s3cr3t-pin", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseURI(tc.uri)
			if tc.wantErr {
				if !errors.Is(err, keystore.ErrConfig) {
					t.Fatalf("got %v, want ErrConfig", err)
				}
				if strings.Contains(err.Error(), "1234") || strings.Contains(err.Error(), "s3cr3t") {
					t.Fatalf("error %q shows the PIN", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			pin, err := c.pin()
			if err != nil || pin != "1234" {
				t.Fatalf("pin() = %q, %v; want 1234 (trailing newline dropped)", pin, err)
			}
		})
	}
	c, err := parseURI("pkcs11:token=my%20token;object=root%2f1?module-path=" + mod + src)
	if err != nil || c.token.label != "my token" || c.label != "root/1" {
		t.Fatalf("pct-decoding: %+v, %v", c, err)
	}
	if _, err := parseURI("pkcs11:token=kw;object=root?module-path=" + mod + "&pin-value=1234"); err == nil || !strings.Contains(err.Error(), "pin-source") {
		t.Fatalf("pin-value refusal %v does not say what to use instead", err)
	}
}

// The PIN file is read under the secret-file rule: a 0644 file fails Open
// with ErrConfig naming the file (never the PIN); 0600 opens.
func TestPINFilePermissions(t *testing.T) {
	tok := newToken(t)
	ctx := context.Background()
	if _, err := Init(ctx, tok.uri); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tok.pinFile, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, tok.uri)
	if !errors.Is(err, keystore.ErrConfig) || b != nil {
		t.Fatalf("Open with a 0644 PIN file: %v, want ErrConfig", err)
	}
	if msg := err.Error(); !strings.Contains(msg, tok.pinFile) || !strings.Contains(msg, "0644") || strings.Contains(msg, testUserPIN) {
		t.Fatalf("error %q: want the file and its mode named, and no PIN", msg)
	}
	if err := os.Chmod(tok.pinFile, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err = Open(ctx, tok.uri)
	if err != nil {
		t.Fatalf("Open with a 0600 PIN file: %v", err)
	}
	_ = b.Close()
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	tok := newToken(t)
	wrongPIN := pinURI(tok.label, "root", writePIN(t, "wrong-pin"))
	tests := []struct {
		name string
		uri  string
		want error
	}{
		{"empty token", tok.uri, keystore.ErrConfig},
		{"missing token", strings.Replace(tok.uri, tok.label, "no-such-token", 1), keystore.ErrUnavailable},
		{"wrong PIN", wrongPIN, keystore.ErrPermission},
		{"not a module", strings.Replace(tok.uri, softhsm.module, "/etc/hostname", 1), keystore.ErrConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Open(ctx, tc.uri)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if b != nil {
				t.Fatal("Open returned a backend with an error")
			}
			if strings.Contains(err.Error(), "wrong-pin") || strings.Contains(err.Error(), testUserPIN) {
				t.Fatalf("error %q shows the PIN", err)
			}
		})
	}
	if _, err := Init(ctx, wrongPIN); !errors.Is(err, keystore.ErrPermission) {
		t.Fatalf("Init with wrong PIN: got %v, want ErrPermission", err)
	}
	ctxDone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Open(ctxDone, tok.uri); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with cancelled context: got %v", err)
	}
}

func TestInitRefusesSecond(t *testing.T) {
	b, tok := newBackend(t)
	ctx := context.Background()
	before, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 1 || !before[0].Primary || before[0].State != keystore.KeyEnabled {
		t.Fatalf("after Init, List = %+v", before)
	}
	if _, err := Init(ctx, tok.uri); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("second Init: got %v, want ErrConfig", err)
	}
	after, _ := b.List(ctx)
	if len(after) != 1 || after[0].KeyID != before[0].KeyID {
		t.Fatalf("second Init changed the token: %+v", after)
	}
	// Another label on the same token is another key set.
	if _, err := Init(ctx, tok.uriFor("other")); err != nil {
		t.Fatalf("Init under another label: %v", err)
	}
}

func TestKeyID(t *testing.T) {
	b, tok := newBackend(t)
	ctx := context.Background()
	kid, err := b.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(kid, keyIDPrefix) || len(kid) > 64 {
		t.Fatalf("key_id %q: want %s<hex>, short", kid, keyIDPrefix)
	}
	list, _ := b.List(ctx)
	if age := time.Since(list[0].Created); age < 0 || age > time.Minute {
		t.Fatalf("Created = %v, want about now", list[0].Created)
	}
	// Stable across processes: a second Open reads the same key_id.
	b2, err := Open(ctx, tok.uri)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if kid2, _ := b2.KeyID(ctx); kid2 != kid {
		t.Fatalf("reopened key_id %q, want %q", kid2, kid)
	}
	// The same label on another token is another key.
	other, _ := newBackend(t)
	if kid3, _ := other.KeyID(ctx); kid3 == kid {
		t.Fatalf("two tokens share key_id %q", kid)
	}
}

// The root key must be sensitive and non-extractable: the token refuses to
// give out its value.
func TestKeyNeverLeavesToken(t *testing.T) {
	b, _ := newBackend(t)
	ctx := context.Background()
	st, err := b.snapshot(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	err = b.run(ctx, func(s session, _ *state) error {
		return b.mod.callIn(s.gen, func(c *p11.Ctx) error {
			_, err := c.GetAttributeValue(s.h, st.primary.handle, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
			return err
		})
	})
	var ck p11.Error
	if !errors.As(err, &ck) || ck != p11.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("reading CKA_VALUE: got %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}
}

// The ciphertext is plain AES-256-GCM (format byte, 12-byte IV, sealed data
// with a 16-byte tag), computed by the HSM. A key with known bytes, made for
// this test only, lets crypto/cipher check that.
func TestCiphertextIsStandardGCM(t *testing.T) {
	b, _ := newBackend(t)
	ctx := context.Background()
	raw := bytes.Repeat([]byte{0x42}, 32)
	id, err := newCKAID(time.Now(), bytes.NewReader(make([]byte, 8)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.snapshot(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	err = b.run(ctx, func(s session, _ *state) error {
		err := b.mod.callIn(s.gen, func(c *p11.Ctx) error {
			_, err := c.CreateObject(s.h, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
				p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
				p11.NewAttribute(p11.CKA_TOKEN, true),
				p11.NewAttribute(p11.CKA_PRIVATE, true),
				p11.NewAttribute(p11.CKA_SENSITIVE, true),
				p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
				p11.NewAttribute(p11.CKA_ENCRYPT, true),
				p11.NewAttribute(p11.CKA_DECRYPT, true),
				p11.NewAttribute(p11.CKA_LABEL, b.cfg.label),
				p11.NewAttribute(p11.CKA_ID, id),
				p11.NewAttribute(p11.CKA_VALUE, raw),
			})
			return err
		})
		if err != nil {
			return err
		}
		return b.writePointer(s, st, id)
	})
	if err != nil {
		t.Fatal(err)
	}
	kid, err := b.KeyID(ctx)
	if err != nil || kid != keyIDOf(id) {
		t.Fatalf("KeyID = %q, %v; want the imported key %s", kid, err, keyIDOf(id))
	}
	aad := []byte("aad")
	w, err := b.Wrap(ctx, kek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Ciphertext) != overhead+len(kek) || w.Ciphertext[0] != formatGCM {
		t.Fatalf("ciphertext of %d bytes, format %#x", len(w.Ciphertext), w.Ciphertext[0])
	}
	// After the format byte, the layout is crypto/cipher's random-nonce
	// GCM (IV | ciphertext | tag), the one FIPS 140-only mode allows.
	blk, _ := aes.NewCipher(raw)
	gcm, err := cipher.NewGCMWithRandomNonce(blk)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := gcm.Open(nil, nil, w.Ciphertext[1:], aad)
	if err != nil || !bytes.Equal(pt, kek) {
		t.Fatalf("crypto/cipher cannot open the HSM's ciphertext: %v", err)
	}
	// And the other way: what Go seals, the HSM opens.
	ct := gcm.Seal([]byte{formatGCM}, nil, kek, aad)
	got, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: kid, Ciphertext: ct}, aad)
	if err != nil || !bytes.Equal(got, kek) {
		t.Fatalf("HSM cannot open crypto/cipher's ciphertext: %v", err)
	}
}

func TestLifecycle(t *testing.T) {
	b, _ := newBackend(t)
	ctx := context.Background()
	first, _ := b.KeyID(ctx)
	w, err := b.Wrap(ctx, kek, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Disable(ctx, first); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("disable primary: got %v, want ErrConfig", err)
	}
	v, err := b.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.KeyID == "" || v.Primary || v.State != keystore.KeyEnabled {
		t.Fatalf("Add returned %+v", v)
	}
	if kid, _ := b.KeyID(ctx); kid != first {
		t.Fatalf("Add changed the primary to %q", kid)
	}
	if err := b.Promote(ctx, v.KeyID); err != nil {
		t.Fatal(err)
	}
	if err := b.Promote(ctx, v.KeyID); err != nil {
		t.Fatalf("promoting the primary again: %v", err)
	}
	if err := b.Destroy(ctx, first); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("destroy enabled version: got %v, want ErrConfig", err)
	}
	if err := b.Disable(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w, nil); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap under disabled version: got %v, want ErrKeyDisabled", err)
	}
	if err := b.Promote(ctx, first); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("promote disabled: got %v, want ErrKeyDisabled", err)
	}
	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].KeyID != first || list[0].State != keystore.KeyDisabled || list[0].Primary ||
		list[1].KeyID != v.KeyID || !list[1].Primary {
		t.Fatalf("List = %+v", list)
	}
	if err := b.Enable(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w, nil); err != nil {
		t.Fatalf("Unwrap after re-enable: %v", err)
	}
	if err := b.Disable(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := b.Destroy(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w, nil); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("Unwrap under destroyed version: got %v, want ErrKeyNotFound", err)
	}
	list, _ = b.List(ctx)
	if len(list) != 1 || list[0].KeyID != v.KeyID || !list[0].Primary {
		t.Fatalf("List = %+v, want only the promoted version", list)
	}
	unknown := keyIDOf(append(append([]byte{}, ckaIDMagic...), make([]byte, 16)...))
	for name, fn := range map[string]func(context.Context, string) error{
		"promote": b.Promote, "disable": b.Disable, "enable": b.Enable, "destroy": b.Destroy,
	} {
		if err := fn(ctx, unknown); !errors.Is(err, keystore.ErrKeyNotFound) {
			t.Fatalf("%s unknown: got %v, want ErrKeyNotFound", name, err)
		}
		if err := fn(ctx, "tink:1:00"); !errors.Is(err, keystore.ErrKeyNotFound) {
			t.Fatalf("%s foreign key_id: got %v, want ErrKeyNotFound", name, err)
		}
	}
}

// kmsctl runs in another process with a backend of its own; the running
// plugin sees its changes without a restart.
func TestChangesFromAnotherBackend(t *testing.T) {
	running, tok := newBackend(t)
	ctx := context.Background()
	old, _ := running.KeyID(ctx)
	w, err := running.Wrap(ctx, kek, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := Open(ctx, tok.uri)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	v, err := ctl.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ctl.Promote(ctx, v.KeyID); err != nil {
		t.Fatal(err)
	}
	if kid, err := running.KeyID(ctx); err != nil || kid != v.KeyID {
		t.Fatalf("running KeyID = %q, %v; want promoted %q", kid, err, v.KeyID)
	}
	w2, err := running.Wrap(ctx, kek, nil)
	if err != nil || w2.KeyID != v.KeyID {
		t.Fatalf("Wrap after promotion: %v, %v", w2.KeyID, err)
	}
	if _, err := running.Unwrap(ctx, w, nil); err != nil {
		t.Fatalf("old ciphertext after promotion: %v", err)
	}
	// Disable is enforced by the HSM, so it bites at once.
	if err := ctl.Disable(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := running.Unwrap(ctx, w, nil); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap after another process disabled the version: got %v, want ErrKeyDisabled", err)
	}
	if err := ctl.Enable(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := running.Unwrap(ctx, w, nil); err != nil {
		t.Fatalf("Unwrap after another process re-enabled the version: %v", err)
	}
	_ = ctl.Disable(ctx, old)
	if err := ctl.Destroy(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := running.Unwrap(ctx, w, nil); !errors.Is(err, keystore.ErrKeyNotFound) {
		t.Fatalf("Unwrap after another process destroyed the version: got %v, want ErrKeyNotFound", err)
	}
	// A version added elsewhere unwraps here without a reload.
	v3, _ := ctl.Add(ctx)
	_ = ctl.Promote(ctx, v3.KeyID)
	w3, err := ctl.Wrap(ctx, kek, nil)
	if err != nil {
		t.Fatal(err)
	}
	running.mu.Lock()
	running.lastMiss = time.Time{}
	running.mu.Unlock()
	if got, err := running.Unwrap(ctx, w3, nil); err != nil || !bytes.Equal(got, kek) {
		t.Fatalf("Unwrap under a version added elsewhere: %v", err)
	}
}

func TestInputBounds(t *testing.T) {
	b, _ := newBackend(t)
	ctx := context.Background()
	kid, _ := b.KeyID(ctx)
	tests := []struct {
		name string
		fn   func() error
	}{
		{"empty plaintext", func() error { _, err := b.Wrap(ctx, nil, nil); return err }},
		{"huge plaintext", func() error { _, err := b.Wrap(ctx, make([]byte, maxPlaintext+1), nil); return err }},
		{"huge aad", func() error { _, err := b.Wrap(ctx, kek, make([]byte, maxAAD+1)); return err }},
		{"huge ciphertext", func() error {
			_, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: kid, Ciphertext: make([]byte, overhead+maxPlaintext+1)}, nil)
			return err
		}},
		{"unknown format", func() error {
			ct := make([]byte, overhead+32)
			ct[0] = 9
			_, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: kid, Ciphertext: ct}, nil)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.fn(); !errors.Is(err, keystore.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
}

func TestPINSource(t *testing.T) {
	tok := newToken(t)
	ctx := context.Background()
	pinFile := tok.pinFile
	uri := tok.uri
	if err := os.WriteFile(pinFile, []byte("not-the-pin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(ctx, uri); !errors.Is(err, keystore.ErrPermission) {
		t.Fatalf("wrong PIN in file: got %v, want ErrPermission", err)
	}
	if err := os.WriteFile(pinFile, []byte(testUserPIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(ctx, uri); err != nil {
		t.Fatalf("Init with the PIN from a file: %v", err)
	}
	b, err := Open(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.KeyID(ctx); err != nil {
		t.Fatal(err)
	}
	// The PIN changes on disk to a wrong one and the login is lost: the
	// token refuses it once, and we do not try that PIN again.
	if err := os.WriteFile(pinFile, []byte("wrong-again"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.reset() // closes our sessions, the last ones: the token logs us out
	for range 2 {
		if _, err := b.KeyID(ctx); !errors.Is(err, keystore.ErrPermission) {
			t.Fatalf("KeyID after PIN change: got %v, want ErrPermission", err)
		}
	}
	if err := os.WriteFile(pinFile, []byte(testUserPIN), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.KeyID(ctx); err != nil {
		t.Fatalf("KeyID after the PIN file was fixed: %v", err)
	}
}

// With every session busy, a caller waits for one only as long as its
// context allows.
func TestSessionWaitHonoursContext(t *testing.T) {
	b, _ := newBackend(t)
	ctx := context.Background()
	var held []session
	for range b.pool.size() {
		s, err := b.pool.acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := b.Wrap(short, kek, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wrap with every session busy: got %v, want DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() { _, err := b.Wrap(ctx, kek, nil); done <- err }()
	time.Sleep(20 * time.Millisecond)
	b.pool.release(held[0], nil)
	if err := <-done; err != nil {
		t.Fatalf("Wrap once a session was free: %v", err)
	}
	for _, s := range held[1:] {
		b.pool.release(s, nil)
	}
}

// Many more callers than sessions: the pool queues them, none fails.
func TestManyCallers(t *testing.T) {
	b, _ := newBackend(t)
	ctx := context.Background()
	w, err := b.Wrap(ctx, kek, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			for range 5 {
				if _, err := b.Unwrap(ctx, w, nil); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestGuard(t *testing.T) {
	err := guard(func() error { panic("library blew up") })
	if !errors.Is(err, keystore.ErrUnavailable) || strings.Contains(err.Error(), "blew") {
		t.Fatalf("guard: got %v, want ErrUnavailable without the panic value", err)
	}
	err = guarded(func() error { var c *p11.Ctx; _, err := c.GetInfo(); return err })
	if !errors.Is(err, keystore.ErrUnavailable) || faultOf(err) != faultSession {
		t.Fatalf("guarded nil-context call: got %v, want an ErrUnavailable session fault", err)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		code p11.Error
		want error
	}{
		{p11.CKR_ENCRYPTED_DATA_INVALID, keystore.ErrInvalid},
		{ckrAEADDecryptFailed, keystore.ErrInvalid},
		{p11.CKR_KEY_FUNCTION_NOT_PERMITTED, keystore.ErrKeyDisabled},
		{p11.CKR_PIN_INCORRECT, keystore.ErrPermission},
		{p11.CKR_PIN_LOCKED, keystore.ErrPermission},
		{p11.CKR_TOKEN_NOT_PRESENT, keystore.ErrUnavailable},
		{p11.CKR_DEVICE_REMOVED, keystore.ErrUnavailable},
		{p11.CKR_SESSION_HANDLE_INVALID, keystore.ErrUnavailable},
		{p11.CKR_MECHANISM_INVALID, keystore.ErrConfig},
		{p11.Error(0x7777), keystore.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.code.Error(), func(t *testing.T) {
			err := classify("C_Test", tc.code)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			var ck p11.Error
			if !errors.As(err, &ck) || ck != tc.code {
				t.Fatalf("%v does not carry the CKR code", err)
			}
		})
	}
}

func FuzzParseKeyID(f *testing.F) {
	f.Add(keyIDOf(append(append([]byte{}, ckaIDMagic...), make([]byte, 16)...)))
	f.Add("pkcs11:")
	f.Add("tink:1:00")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseKeyID(s)
		if err != nil {
			if !errors.Is(err, keystore.ErrKeyNotFound) {
				t.Fatalf("error %v is not ErrKeyNotFound", err)
			}
			return
		}
		if keyIDOf(id) != strings.ToLower(s) {
			t.Fatalf("%q does not round-trip", s)
		}
	})
}

func FuzzParsePointer(f *testing.F) {
	f.Add(formatPointer(3, append(append([]byte{}, ckaIDMagic...), make([]byte, 16)...)))
	f.Add([]byte("keywarden primary v1 seq=1 id=00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, id, err := parsePointer(b)
		if err != nil {
			return
		}
		if !validCKAID(id) {
			t.Fatalf("accepted invalid CKA_ID %x", id)
		}
		if _, _, err := parsePointer(formatPointer(seq, id)); err != nil {
			t.Fatalf("formatPointer output does not parse: %v", err)
		}
	})
}

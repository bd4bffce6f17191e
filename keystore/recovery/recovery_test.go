package recovery

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
)

// fastKDF keeps the tests quick; the files record their parameters.
func fastKDF() KDF { return KDF{Name: kdfArgon2id, Time: 1, MemoryKiB: 64, Threads: 1} }

func newKey(t *testing.T) *PrivateKey {
	t.Helper()
	k, err := New()
	if errors.Is(err, ErrFIPSOnly) {
		t.Skip("no recovery key under GODEBUG=fips140=only (X25519 is not FIPS approved; TestFIPSOnly checks the refusal)")
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func write(t *testing.T, b []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "k.json")
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

func TestSealUnwrap(t *testing.T) {
	ctx := context.Background()
	k := newKey(t)
	pubJSON, err := k.MarshalPublic()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublic(pubJSON)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := pub.KeyID(ctx)
	if id != k.KeyID() || !IsKeyID(id) || len(id) > keystore.MaxKeyIDLen {
		t.Fatalf("public key_id %q, private %q", id, k.KeyID())
	}
	if pub.Name() != Name {
		t.Fatalf("Name %q", pub.Name())
	}
	kek := bytes.Repeat([]byte{7}, 32)
	aad := []byte("root aad")
	w, err := pub.Wrap(ctx, kek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if w.KeyID != id || bytes.Contains(w.Ciphertext, kek) {
		t.Fatalf("wrapped %q", w.KeyID)
	}
	got, err := k.Unwrap(w, aad)
	if err != nil || !bytes.Equal(got, kek) {
		t.Fatalf("Unwrap = %x, %v", got, err)
	}

	tests := []struct {
		name string
		w    keystore.Wrapped
		aad  []byte
		want error
	}{
		{"other aad", w, []byte("other"), keystore.ErrInvalid},
		{"other key_id", keystore.Wrapped{KeyID: "recovery:00", Ciphertext: w.Ciphertext}, aad, keystore.ErrKeyNotFound},
		{"truncated", keystore.Wrapped{KeyID: id, Ciphertext: w.Ciphertext[:len(w.Ciphertext)-1]}, aad, keystore.ErrInvalid},
		{"empty", keystore.Wrapped{KeyID: id}, aad, keystore.ErrInvalid},
	}
	for i := range w.Ciphertext {
		ct := bytes.Clone(w.Ciphertext)
		ct[i] ^= 1
		tests = append(tests, struct {
			name string
			w    keystore.Wrapped
			aad  []byte
			want error
		}{"flipped", keystore.Wrapped{KeyID: id, Ciphertext: ct}, aad, keystore.ErrInvalid})
	}
	for _, tt := range tests {
		if _, err := k.Unwrap(tt.w, tt.aad); !errors.Is(err, tt.want) {
			t.Fatalf("%s: err %v, want %v", tt.name, err, tt.want)
		}
	}

	// Another recovery key has another key_id and cannot open it.
	other := newKey(t)
	if other.KeyID() == k.KeyID() {
		t.Fatal("two recovery keys share a key_id")
	}
	if _, err := other.Unwrap(keystore.Wrapped{KeyID: other.KeyID(), Ciphertext: w.Ciphertext}, aad); !errors.Is(err, keystore.ErrInvalid) {
		t.Fatalf("other key: %v", err)
	}
}

func TestPrivateFile(t *testing.T) {
	k := newKey(t)
	pass := []byte("correct horse battery staple")
	for _, tt := range []struct {
		name string
		pass []byte
	}{{"sealed", pass}, {"clear", nil}} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := k.Marshal(tt.pass, fastKDF())
			if err != nil {
				t.Fatal(err)
			}
			if Sealed(b) != (tt.pass != nil) {
				t.Fatalf("Sealed = %v", Sealed(b))
			}
			p := write(t, b, 0o600)
			got, err := OpenPrivate(p, tt.pass)
			if err != nil {
				t.Fatal(err)
			}
			if got.KeyID() != k.KeyID() {
				t.Fatalf("key_id %q, want %q", got.KeyID(), k.KeyID())
			}
			if tt.pass != nil {
				if _, err := ParsePrivate(b, []byte("wrong")); !errors.Is(err, keystore.ErrPermission) {
					t.Fatalf("wrong passphrase: %v", err)
				}
				if _, err := ParsePrivate(b, nil); !errors.Is(err, keystore.ErrPermission) {
					t.Fatalf("no passphrase: %v", err)
				}
				if bytes.Contains(b, []byte(`"value"`)) {
					t.Fatal("sealed file holds a clear key value")
				}
			}
			if _, err := OpenPrivate(write(t, b, 0o640), tt.pass); !errors.Is(err, keystore.ErrConfig) {
				t.Fatalf("mode 0640: %v", err)
			}
		})
	}
	t.Run("default KDF bounds", func(t *testing.T) {
		d := DefaultKDF()
		d.Salt = make([]byte, 16)
		if err := d.check(); err != nil {
			t.Fatal(err)
		}
		hostile := d
		hostile.MemoryKiB = 1 << 30
		if err := hostile.check(); !errors.Is(err, keystore.ErrConfig) {
			t.Fatalf("hostile memory: %v", err)
		}
	})
}

// The private keyset is never accepted where a private key is not
// expected, and the reverse.
func TestKeysetsNotConfused(t *testing.T) {
	k := newKey(t)
	pub, err := k.MarshalPublic()
	if err != nil {
		t.Fatal(err)
	}
	privFile, err := k.Marshal(nil, fastKDF())
	if err != nil {
		t.Fatal(err)
	}
	sealedFile, err := k.Marshal([]byte("p"), fastKDF())
	if err != nil {
		t.Fatal(err)
	}
	var bare bytes.Buffer
	if err := insecurecleartextkeyset.Write(k.h, keyset.NewJSONWriter(&bare)); err != nil {
		t.Fatal(err)
	}
	ah, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	var aeadPub bytes.Buffer
	if err := insecurecleartextkeyset.Write(ah, keyset.NewJSONWriter(&aeadPub)); err != nil {
		t.Fatal(err)
	}

	t.Run("node refuses private", func(t *testing.T) {
		for name, b := range map[string][]byte{"file": privFile, "sealed file": sealedFile, "bare keyset": bare.Bytes(), "aead keyset": aeadPub.Bytes()} {
			if _, err := OpenPublic(write(t, b, 0o600)); !errors.Is(err, keystore.ErrConfig) {
				t.Errorf("OpenPublic(%s) = %v, want ErrConfig", name, err)
			}
		}
	})
	t.Run("file keystore refuses recovery keysets", func(t *testing.T) {
		for name, b := range map[string][]byte{"private file": privFile, "sealed file": sealedFile, "bare private keyset": bare.Bytes(), "public keyset": pub} {
			if b, err := file.Open(write(t, b, 0o600)); err == nil {
				b.Close()
				t.Errorf("file.Open(%s) accepted a recovery keyset", name)
			}
		}
	})
	t.Run("recover refuses public and bare", func(t *testing.T) {
		for name, b := range map[string][]byte{"public": pub, "bare private keyset": bare.Bytes(), "aead keyset": aeadPub.Bytes()} {
			if _, err := ParsePrivate(b, nil); !errors.Is(err, keystore.ErrConfig) {
				t.Errorf("ParsePrivate(%s) = %v, want ErrConfig", name, err)
			}
		}
	})
	t.Run("public file permissions", func(t *testing.T) {
		if _, err := OpenPublic(write(t, pub, 0o644)); err != nil {
			t.Fatalf("0644: %v", err)
		}
		if _, err := OpenPublic("file://" + write(t, pub, 0o600)); err != nil {
			t.Fatalf("file:// URI: %v", err)
		}
		if _, err := OpenPublic(write(t, pub, 0o666)); !errors.Is(err, keystore.ErrConfig) {
			t.Fatalf("0666: %v", err)
		}
	})
}

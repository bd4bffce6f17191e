package envelope

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/fips140"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "write new golden vectors (only ever add; never rewrite existing ones)")

func newKEK(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, KEKSize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func sealed(t testing.TB) (kek, ct, aad, pt []byte) {
	t.Helper()
	kek = newKEK(t)
	a, err := NewAEAD(kek)
	if err != nil {
		t.Fatal(err)
	}
	ann, err := EncodeKEK("tink:1:00aa", []byte("root-ciphertext"))
	if err != nil {
		t.Fatal(err)
	}
	aad = AAD("tink:1:00aa", ann)
	pt = bytes.Repeat([]byte{0x42}, 32)
	ct, err = Seal(a, pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	return kek, ct, aad, pt
}

func TestSealOpen(t *testing.T) {
	kek, ct, aad, pt := sealed(t)
	a, _ := NewAEAD(kek)
	if len(ct) >= 1024 {
		t.Fatalf("ciphertext for a 32-byte seed is %d bytes, want < 1 kB", len(ct))
	}
	if len(ct) != 1+NonceSize+len(pt)+TagSize {
		t.Fatalf("ciphertext is %d bytes", len(ct))
	}
	got, err := Open(a, ct, aad)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pt) {
		t.Fatal("round trip changed the plaintext")
	}
}

// Seal writes what earlier releases wrote with cipher.NewGCM and a nonce
// they drew themselves: the version byte, the nonce, the AES-GCM output.
// Sealing again through that GCM with the nonce Seal drew gives the same
// bytes. (cipher.NewGCM is refused under GODEBUG=fips140=only, so the
// comparison runs with enforcement lifted; Seal did not.)
func TestSealLayoutUnchanged(t *testing.T) {
	kek, ct, aad, pt := sealed(t)
	var want []byte
	var err error
	fips140.WithoutEnforcement(func() {
		block, _ := aes.NewCipher(kek)
		var g cipher.AEAD
		if g, err = cipher.NewGCM(block); err == nil {
			nonce := ct[1 : 1+NonceSize]
			want = g.Seal(append([]byte{Version1}, nonce...), nonce, pt, aad)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ct, want) {
		t.Fatalf("Seal wrote\n%x\nwhere the earlier layout is\n%x", ct, want)
	}
}

// A parsed ciphertext opens as Open does; the zero one never opens.
func TestParseOpen(t *testing.T) {
	kek, ct, aad, pt := sealed(t)
	a, _ := NewAEAD(kek)
	c, err := Parse(ct)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Open(a, aad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Parse then Open: %x, %v", got, err)
	}
	if _, err := c.Open(a, append(bytes.Clone(aad), 0)); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Open with other AAD: got %v, want ErrAuthFailed", err)
	}
	if _, err := (Ciphertext{}).Open(a, aad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("zero Ciphertext: got %v, want ErrMalformed", err)
	}
}

func TestSealBounds(t *testing.T) {
	a, _ := NewAEAD(newKEK(t))
	for _, n := range []int{0, MaxPlaintext + 1, 4 << 20} {
		if _, err := Seal(a, make([]byte, n), nil); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Seal(%d bytes): got %v, want ErrTooLarge", n, err)
		}
	}
	if _, err := Seal(a, make([]byte, MaxPlaintext), nil); err != nil {
		t.Fatalf("Seal(max): %v", err)
	}
	if _, err := NewAEAD(make([]byte, 16)); !errors.Is(err, ErrBadKEKBytes) {
		t.Fatalf("NewAEAD(16 bytes): got %v", err)
	}
}

func TestOpenRejectsEveryTruncationAndBitFlip(t *testing.T) {
	kek, ct, aad, _ := sealed(t)
	a, _ := NewAEAD(kek)
	for n := range len(ct) {
		if _, err := Open(a, ct[:n], aad); err == nil {
			t.Fatalf("truncation to %d bytes opened", n)
		}
	}
	for i := range len(ct) * 8 {
		c := bytes.Clone(ct)
		c[i/8] ^= 1 << (i % 8)
		if _, err := Open(a, c, aad); err == nil {
			t.Fatalf("bit flip %d opened", i)
		}
	}
	for i := range len(aad) * 8 {
		d := bytes.Clone(aad)
		d[i/8] ^= 1 << (i % 8)
		if _, err := Open(a, ct, d); !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("aad bit flip %d: got %v", i, err)
		}
	}
	if _, err := Open(a, append(bytes.Clone(ct), 0), aad); err == nil {
		t.Fatal("extended ciphertext opened")
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		ct   []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"version 0", append([]byte{0}, make([]byte, 60)...), ErrVersion},
		{"version 2", append([]byte{2}, make([]byte, 60)...), ErrVersion},
		{"short", append([]byte{1}, make([]byte, MinCiphertext-2)...), ErrMalformed},
		{"oversize", append([]byte{1}, make([]byte, MaxCiphertext)...), ErrTooLarge},
		{"multi-MiB", append([]byte{1}, make([]byte, 4<<20)...), ErrTooLarge},
		{"min ok", append([]byte{1}, make([]byte, MinCiphertext-1)...), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.ct)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Check: got %v, want %v", err, tc.want)
			}
			// Parse checks exactly as Check does.
			if _, perr := Parse(tc.ct); (perr == nil) != (err == nil) || err != nil && perr.Error() != err.Error() {
				t.Fatalf("Parse: got %v, Check got %v", perr, err)
			}
		})
	}
}

func TestKEKAnnotation(t *testing.T) {
	ann, err := EncodeKEK("tink:7:abcd", []byte{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	id, ct, err := DecodeKEK(ann)
	if err != nil {
		t.Fatal(err)
	}
	if id != "tink:7:abcd" || !bytes.Equal(ct, []byte{1, 2, 3}) {
		t.Fatalf("DecodeKEK = %q %x", id, ct)
	}
	for n := range len(ann) {
		if _, _, err := DecodeKEK(ann[:n]); err == nil {
			t.Fatalf("truncation to %d decoded", n)
		}
	}
	if _, _, err := DecodeKEK(append(bytes.Clone(ann), 9)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: got %v", err)
	}
	bad := []struct {
		name string
		id   string
		ct   []byte
	}{
		{"empty id", "", []byte{1}},
		{"long id", strings.Repeat("k", MaxKeyID+1), []byte{1}},
		{"empty ct", "k", nil},
		{"long ct", "k", make([]byte, MaxRootCT+1)},
	}
	for _, tc := range bad {
		if _, err := EncodeKEK(tc.id, tc.ct); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("%s: got %v, want ErrTooLarge", tc.name, err)
		}
	}
	if _, _, err := DecodeKEK(append([]byte{1}, make([]byte, MaxAnnotation)...)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize annotation: got %v", err)
	}
	if _, _, err := DecodeKEK([]byte{2, 0, 1, 'k', 0, 1, 1}); !errors.Is(err, ErrVersion) {
		t.Fatalf("version 2 annotation: got %v", err)
	}
}

// golden is a ciphertext written by an earlier release. Every later release
// must open it: stored Secrets outlive plugin versions.
type golden struct {
	Name       string `json:"name"`
	KEK        string `json:"kek"`
	KeyID      string `json:"keyID"`
	Annotation string `json:"annotation"`
	Ciphertext string `json:"ciphertext"`
	Plaintext  string `json:"plaintext"`
}

const goldenPath = "testdata/golden-v1.json"

func TestGolden(t *testing.T) {
	if *update {
		writeGolden(t)
	}
	b, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	var vs []golden
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("no golden vectors")
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			kek, ann, ct, pt := unhex(t, v.KEK), unhex(t, v.Annotation), unhex(t, v.Ciphertext), unhex(t, v.Plaintext)
			id, _, err := DecodeKEK(ann)
			if err != nil {
				t.Fatal(err)
			}
			if id != v.KeyID {
				t.Fatalf("annotation key_id %q, want %q", id, v.KeyID)
			}
			a, err := NewAEAD(kek)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Open(a, ct, AAD(v.KeyID, ann))
			if err != nil {
				t.Fatalf("golden vector no longer opens: %v", err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatal("golden vector opens to different bytes")
			}
		})
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeGolden(t *testing.T) {
	var vs []golden
	for _, c := range []struct {
		name  string
		keyID string
		n     int
	}{{"seed-32", "tink:1234567:0011223344556677", 32}, {"dek-16", "tink:42:8899aabbccddeeff", 16}, {"max", "k", MaxPlaintext}} {
		kek := newKEK(t)
		a, _ := NewAEAD(kek)
		ann, err := EncodeKEK(c.keyID, []byte("root ciphertext for "+c.name))
		if err != nil {
			t.Fatal(err)
		}
		pt := make([]byte, c.n)
		_, _ = rand.Read(pt)
		ct, err := Seal(a, pt, AAD(c.keyID, ann))
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, golden{c.name, hex.EncodeToString(kek), c.keyID, hex.EncodeToString(ann), hex.EncodeToString(ct), hex.EncodeToString(pt)})
	}
	b, _ := json.MarshalIndent(vs, "", "  ")
	if err := os.WriteFile(filepath.Clean(goldenPath), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

func FuzzOpen(f *testing.F) {
	kek, ct, aad, _ := sealed(f)
	a, _ := NewAEAD(kek)
	f.Add(ct)
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add(ct[:len(ct)-1])
	f.Fuzz(func(t *testing.T, data []byte) {
		pt, err := Open(a, data, aad)
		if err == nil && !bytes.Equal(data, ct) {
			t.Fatalf("a ciphertext we did not make opened: %x -> %x", data, pt)
		}
	})
}

func FuzzDecodeKEK(f *testing.F) {
	ann, _ := EncodeKEK("tink:1:00", []byte("ct"))
	f.Add(ann)
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		id, ct, err := DecodeKEK(data)
		if err != nil {
			return
		}
		again, err := EncodeKEK(id, ct)
		if err != nil {
			t.Fatalf("decoded annotation does not re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("decode/encode not canonical: %x vs %x", data, again)
		}
	})
}

func BenchmarkSeal(b *testing.B) {
	a, _ := NewAEAD(newKEK(b))
	pt := make([]byte, 32)
	aad := AAD("tink:1:00", make([]byte, 80))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Seal(a, pt, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	kek, ct, aad, _ := sealed(b)
	a, _ := NewAEAD(kek)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Open(a, ct, aad); err != nil {
			b.Fatal(err)
		}
	}
}

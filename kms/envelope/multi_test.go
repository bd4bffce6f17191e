package envelope

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var updateV2 = flag.Bool("update-v2", false, "write the version-2 golden vectors (once; never rewrite them)")

func twoCopies() []Copy {
	return []Copy{
		{Backend: "file", KeyID: "tink:1234567:0011223344556677", RootCT: []byte("file root ciphertext")},
		{Backend: "awskms", KeyID: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", RootCT: []byte("aws root ciphertext")},
	}
}

func TestKEK2RoundTrip(t *testing.T) {
	for _, n := range []int{2, 3, MaxRoots} {
		copies := make([]Copy, n)
		for i := range copies {
			copies[i] = Copy{Backend: "b" + strings.Repeat("x", i), KeyID: "id-" + strings.Repeat("k", i+1), RootCT: bytes.Repeat([]byte{byte(i + 1)}, 10+i)}
		}
		ann, err := EncodeKEK2(copies)
		if err != nil {
			t.Fatal(err)
		}
		a, err := DecodeAnnotation(ann)
		if err != nil {
			t.Fatal(err)
		}
		if a.Version != Version2 || len(a.Copies) != n {
			t.Fatalf("decoded %+v", a)
		}
		for i := range copies {
			if a.Copies[i].Backend != copies[i].Backend || a.Copies[i].KeyID != copies[i].KeyID || !bytes.Equal(a.Copies[i].RootCT, copies[i].RootCT) {
				t.Fatalf("copy %d: %+v, want %+v", i, a.Copies[i], copies[i])
			}
		}
		ids := make([]string, n)
		for i, c := range copies {
			ids[i] = c.KeyID
		}
		want, _ := RootsKeyID(ids)
		if a.KeyID != want {
			t.Fatalf("key_id %q, want %q", a.KeyID, want)
		}
	}
}

func TestDecodeAnnotationV1(t *testing.T) {
	ann, _ := EncodeKEK("tink:1:00", []byte("ct"))
	a, err := DecodeAnnotation(ann)
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != Version1 || a.KeyID != "tink:1:00" || len(a.Copies) != 1 || a.Copies[0].Backend != "" || string(a.Copies[0].RootCT) != "ct" {
		t.Fatalf("decoded %+v", a)
	}
}

var rootsKeyIDForm = regexp.MustCompile(`^roots:[2-9]:[0-9a-f]{64}$`)

func TestRootsKeyID(t *testing.T) {
	a, b, c := "tink:1:00", "arn:aws:kms:eu-west-1:1:key/x", "pkcs11:01"
	ab, err := RootsKeyID([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if !rootsKeyIDForm.MatchString(ab) || len(ab) > MaxKeyID {
		t.Fatalf("key_id %q", ab)
	}
	again, _ := RootsKeyID([]string{a, b})
	if again != ab {
		t.Fatal("not deterministic")
	}
	for name, ids := range map[string][]string{
		"order":          {b, a},
		"second rotated": {a, c},
		"first rotated":  {c, b},
		"third root":     {a, b, c},
		// Without the length prefixes these two would hash alike.
		"boundary": {a + b[:1], b[1:]},
	} {
		if id, _ := RootsKeyID(ids); id == ab {
			t.Fatalf("%s: same key_id %q", name, id)
		}
	}
	for _, ids := range [][]string{nil, {a}, {a, ""}, {a, b, c, a, b}, {a, strings.Repeat("x", MaxKeyID+1)}} {
		if _, err := RootsKeyID(ids); err == nil {
			t.Fatalf("RootsKeyID(%d ids) accepted", len(ids))
		}
	}
	// No single-root key_id any backend makes has the form.
	for _, single := range []string{a, b, c, "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
		"https://v.vault.azure.net/keys/k/0123", "transit/keys/k:v1#1700000000", "roots/keys/k:v2#1"} {
		if rootsKeyIDForm.MatchString(single) {
			t.Fatalf("single-root key_id %q has the several-roots form", single)
		}
	}
}

func TestKEK2Bounds(t *testing.T) {
	big := []Copy{}
	for range MaxRoots {
		big = append(big, Copy{Backend: strings.Repeat("b", MaxBackendName), KeyID: strings.Repeat("k", MaxKeyID), RootCT: make([]byte, MaxRootCT2)})
	}
	ann, err := EncodeKEK2(big)
	if err != nil {
		t.Fatal(err)
	}
	// The apiserver's limit is on all annotations, keys included.
	if len(ann) != MaxAnnotation2 || len(ann)+len(AnnotationKey) > 32<<10 {
		t.Fatalf("largest annotation is %d bytes, bound %d", len(ann), MaxAnnotation2)
	}
	if _, err := DecodeKEK2(ann); err != nil {
		t.Fatal(err)
	}
	for name, copies := range map[string][]Copy{
		"one root":     twoCopies()[:1],
		"five roots":   append(big, big[0]),
		"no backend":   {{KeyID: "k", RootCT: []byte{1}}, twoCopies()[0]},
		"long backend": {{Backend: strings.Repeat("b", MaxBackendName+1), KeyID: "k", RootCT: []byte{1}}, twoCopies()[0]},
		"no key_id":    {{Backend: "b", RootCT: []byte{1}}, twoCopies()[0]},
		"no ct":        {{Backend: "b", KeyID: "k"}, twoCopies()[0]},
		"long ct":      {{Backend: "b", KeyID: "k", RootCT: make([]byte, MaxRootCT2+1)}, twoCopies()[0]},
	} {
		if _, err := EncodeKEK2(copies); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("%s: got %v", name, err)
		}
	}
}

func TestDecodeKEK2Rejects(t *testing.T) {
	ann, _ := EncodeKEK2(twoCopies())
	if _, err := DecodeKEK2(ann); err != nil {
		t.Fatal(err)
	}
	// Every truncation and every extension is refused.
	for i := range len(ann) {
		if _, err := DecodeKEK2(ann[:i]); err == nil {
			t.Fatalf("truncation to %d bytes decoded", i)
		}
	}
	if _, err := DecodeKEK2(append(bytes.Clone(ann), 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: %v", err)
	}
	for name, tc := range map[string]struct {
		b    []byte
		want error
	}{
		"version 1":  {append([]byte{1}, ann[1:]...), ErrVersion},
		"version 3":  {append([]byte{3}, ann[1:]...), ErrVersion},
		"zero roots": {[]byte{2, 0}, ErrMalformed},
		"one root":   {[]byte{2, 1, 1, 'b', 0, 1, 'k', 0, 1, 1}, ErrMalformed},
		"five roots": {append([]byte{2, 5}, ann[2:]...), ErrMalformed},
		"count lies": {append([]byte{2, 3}, ann[2:]...), ErrMalformed},
		"empty name": {[]byte{2, 2, 0, 0, 1, 'k', 0, 1, 1, 1, 'b', 0, 1, 'k', 0, 1, 1}, ErrMalformed},
		"oversize":   {append([]byte{2, 2}, make([]byte, MaxAnnotation2)...), ErrTooLarge},
		"empty":      {nil, ErrMalformed},
	} {
		if _, err := DecodeKEK2(tc.b); !errors.Is(err, tc.want) {
			t.Fatalf("%s: got %v, want %v", name, err, tc.want)
		}
		if _, err := DecodeAnnotation(tc.b); err == nil {
			t.Fatalf("%s: DecodeAnnotation accepted it", name)
		}
	}
	// Version 1 decoders refuse version 2 explicitly, as older releases do.
	if _, _, err := DecodeKEK(ann); !errors.Is(err, ErrVersion) {
		t.Fatalf("DecodeKEK(v2): %v", err)
	}
}

// golden2 is a version-2 ciphertext and annotation written when the format
// was made. Every later release must open it.
type golden2 struct {
	Name       string   `json:"name"`
	KEK        string   `json:"kek"`
	Backends   []string `json:"backends"`
	RootKeyIDs []string `json:"rootKeyIDs"`
	KeyID      string   `json:"keyID"`
	Annotation string   `json:"annotation"`
	Ciphertext string   `json:"ciphertext"`
	Plaintext  string   `json:"plaintext"`
}

const golden2Path = "testdata/golden-v2.json"

func TestGoldenV2(t *testing.T) {
	if *updateV2 {
		writeGolden2(t)
	}
	b, err := os.ReadFile(golden2Path)
	if err != nil {
		t.Fatal(err)
	}
	var vs []golden2
	if err := json.Unmarshal(b, &vs); err != nil || len(vs) == 0 {
		t.Fatalf("golden vectors: %v (%d)", err, len(vs))
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			kek, ann, ct, pt := unhex(t, v.KEK), unhex(t, v.Annotation), unhex(t, v.Ciphertext), unhex(t, v.Plaintext)
			a, err := DecodeAnnotation(ann)
			if err != nil {
				t.Fatal(err)
			}
			// The key_id derivation is pinned: a change would make the
			// apiserver see every several-roots key_id as new.
			if a.Version != Version2 || a.KeyID != v.KeyID {
				t.Fatalf("annotation version %d key_id %q, want 2 and %q", a.Version, a.KeyID, v.KeyID)
			}
			if kid, _ := RootsKeyID(v.RootKeyIDs); kid != v.KeyID {
				t.Fatalf("RootsKeyID = %q, want %q", kid, v.KeyID)
			}
			if len(a.Copies) != len(v.Backends) {
				t.Fatalf("%d copies, want %d", len(a.Copies), len(v.Backends))
			}
			for i, c := range a.Copies {
				if c.Backend != v.Backends[i] || c.KeyID != v.RootKeyIDs[i] {
					t.Fatalf("copy %d = %s %q", i, c.Backend, c.KeyID)
				}
			}
			aead, err := NewAEAD(kek)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Open(aead, ct, AAD(v.KeyID, ann))
			if err != nil {
				t.Fatalf("golden vector no longer opens: %v", err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatal("golden vector opens to different bytes")
			}
		})
	}
}

func writeGolden2(t *testing.T) {
	var vs []golden2
	for _, c := range []struct {
		name     string
		backends []string
		ids      []string
		n        int
	}{
		{"file+awskms", []string{"file", "awskms"}, []string{"tink:1234567:0011223344556677", "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}, 32},
		{"pkcs11+vault+gcpkms", []string{"pkcs11", "vault", "gcpkms"}, []string{"pkcs11:0a0b", "transit/keys/kw:v3#1700000000", "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/2"}, 32},
		{"file+file-max", []string{"file", "file"}, []string{"tink:1:00", "tink:2:01"}, MaxPlaintext},
	} {
		kek := newKEK(t)
		a, _ := NewAEAD(kek)
		copies := make([]Copy, len(c.ids))
		for i := range c.ids {
			copies[i] = Copy{Backend: c.backends[i], KeyID: c.ids[i], RootCT: []byte("root " + c.backends[i] + " ciphertext for " + c.name)}
		}
		ann, err := EncodeKEK2(copies)
		if err != nil {
			t.Fatal(err)
		}
		kid, err := RootsKeyID(c.ids)
		if err != nil {
			t.Fatal(err)
		}
		pt := make([]byte, c.n)
		_, _ = rand.Read(pt)
		ct, err := Seal(a, pt, AAD(kid, ann))
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, golden2{c.name, hex.EncodeToString(kek), c.backends, c.ids, kid, hex.EncodeToString(ann), hex.EncodeToString(ct), hex.EncodeToString(pt)})
	}
	b, _ := json.MarshalIndent(vs, "", "  ")
	if err := os.WriteFile(filepath.Clean(golden2Path), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeKEK2: no input panics; what decodes re-encodes to the same
// bytes (one encoding per annotation), within bounds, with a key_id of the
// several-roots form.
func FuzzDecodeKEK2(f *testing.F) {
	ann, _ := EncodeKEK2(twoCopies())
	f.Add(ann)
	three, _ := EncodeKEK2(append(twoCopies(), Copy{Backend: "pkcs11", KeyID: "pkcs11:01", RootCT: []byte{9}}))
	f.Add(three)
	f.Add([]byte{2, 2})
	f.Add([]byte{2, 2, 1, 'b', 0, 1, 'k', 0, 1, 1, 1, 'b', 0, 1, 'k', 0, 1, 1})
	f.Add([]byte{2, 4, 0xff, 0xff})
	v1, _ := EncodeKEK("tink:1:00", []byte("ct"))
	f.Add(v1)
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := DecodeAnnotation(data)
		if err != nil {
			return
		}
		if len(data) > MaxAnnotationAny {
			t.Fatalf("%d-byte annotation decoded", len(data))
		}
		var again []byte
		if a.Version == Version2 {
			if !rootsKeyIDForm.MatchString(a.KeyID) {
				t.Fatalf("key_id %q", a.KeyID)
			}
			again, err = EncodeKEK2(a.Copies)
		} else {
			again, err = EncodeKEK(a.KeyID, a.Copies[0].RootCT)
		}
		if err != nil {
			t.Fatalf("decoded annotation does not re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("decode/encode not canonical: %x vs %x", data, again)
		}
	})
}

// A version-2 AAD binds the whole annotation through its digest, and its
// size does not grow with the annotation: the warm path's AES-GCM work is
// the same whatever the roots.
func TestAADV2(t *testing.T) {
	small, _ := EncodeKEK2(twoCopies())
	big, _ := EncodeKEK2(append(twoCopies(), Copy{Backend: "azurekv", KeyID: "https://v.vault.azure.net/keys/k/0123", RootCT: make([]byte, 600)}))
	kid := "roots:2:" + strings.Repeat("0", 64)
	a := AAD(kid, small)
	if len(a) != len(AAD(kid, big)) || len(a) != len(aadLabel2)+1+2+len(kid)+32 {
		t.Fatalf("AAD is %d and %d bytes", len(a), len(AAD(kid, big)))
	}
	v1, _ := EncodeKEK("k", []byte("ct"))
	if bytes.HasPrefix(AAD("k", v1), []byte(aadLabel2)) || !bytes.HasPrefix(a, []byte(aadLabel2)) {
		t.Fatal("AAD labels do not follow the annotation version")
	}
	for i := range small {
		flipped := bytes.Clone(small)
		flipped[i] ^= 1
		if bytes.Equal(AAD(kid, flipped), a) {
			t.Fatalf("flipping annotation byte %d leaves the AAD unchanged", i)
		}
	}
}

package remote

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// The layout is fixed: gcpkms and azurekv ciphertexts already stored were
// made with these bytes.
func TestBoundAADLayout(t *testing.T) {
	got := BoundAAD("d/v1", "k1", []byte{0xAA, 0xBB})
	want, _ := hex.DecodeString("00000004" + hex.EncodeToString([]byte("d/v1")) +
		"00000002" + hex.EncodeToString([]byte("k1")) + "00000002aabb")
	if !bytes.Equal(got, want) {
		t.Fatalf("BoundAAD = %x, want %x", got, want)
	}
	if got := BoundAAD("d", "", nil); !bytes.Equal(got, []byte{0, 0, 0, 1, 'd', 0, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("BoundAAD with empty key_id and aad = %x", got)
	}
}

func TestBoundAADUnambiguous(t *testing.T) {
	tests := []struct {
		name string
		a, b [3]string // domain, key_id, aad
	}{
		{"key_id and aad boundary", [3]string{"d", "k/cryptoKeyVersions/1", "2x"}, [3]string{"d", "k/cryptoKeyVersions/12", "x"}},
		{"domain and key_id boundary", [3]string{"d1", "k", ""}, [3]string{"d", "1k", ""}},
		{"other domain", [3]string{"keywarden.io/gcpkms/v1", "k", "a"}, [3]string{"keywarden.io/azurekv/v1", "k", "a"}},
		{"key_id and aad swapped", [3]string{"d", "", "k"}, [3]string{"d", "k", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := BoundAAD(tc.a[0], tc.a[1], []byte(tc.a[2]))
			b := BoundAAD(tc.b[0], tc.b[1], []byte(tc.b[2]))
			if bytes.Equal(a, b) {
				t.Fatalf("%q and %q give the same bytes %x", tc.a, tc.b, a)
			}
		})
	}
}

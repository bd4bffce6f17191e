package keystore

import "testing"

func TestSameVersion(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"transit/keys/kw:v1#1700000000", "transit/keys/kw:v1#1700000000", true},
		{"transit/keys/kw:v1", "transit/keys/kw:v1#1700000000", true}, // written before the tag
		{"transit/keys/kw:v1#1700000000", "transit/keys/kw:v1", true},
		{"transit/keys/kw:v1#1700000000", "transit/keys/kw:v1#1700000500", false}, // a re-created key
		{"transit/keys/kw:v1", "transit/keys/kw:v2", false},
		{"transit/keys/kw:v1", "transit/keys/kw:v12#1700000000", false},
		{"pkcs11:6b77", "pkcs11:6b77", true},
		{"pkcs11:6b77", "pkcs11:6b78", false},
	}
	for _, tc := range tests {
		if got := SameVersion(tc.a, tc.b); got != tc.want {
			t.Errorf("SameVersion(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

package audit

import "testing"

// A Vault version's objects written before key_ids named the key carry
// the untagged key_id; retiring the version must count them too.
func TestInUseCountsEveryFormOfAVersion(t *testing.T) {
	r := &Report{KeyIDs: map[string]int{
		"transit/keys/kw:v1":            3, // before the upgrade
		"transit/keys/kw:v1#1700000000": 2, // after it
		"transit/keys/kw:v1#1600000000": 7, // a key deleted since: another key
		"transit/keys/kw:v2#1700000100": 5,
	}}
	tests := []struct {
		keyID string
		want  int
	}{
		{"transit/keys/kw:v1#1700000000", 5},
		{"transit/keys/kw:v1", 12}, // as keys list shows a disabled version: every v1
		{"transit/keys/kw:v2#1700000100", 5},
		{"transit/keys/kw:v3#1700000200", 0},
	}
	for _, tc := range tests {
		if got := r.InUse(tc.keyID); got != tc.want {
			t.Errorf("InUse(%q) = %d, want %d", tc.keyID, got, tc.want)
		}
	}
}

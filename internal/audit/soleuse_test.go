package audit

import (
	"context"
	"testing"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

func TestSoleUse(t *testing.T) {
	const (
		old   = "tink:3473997605:81291f5360ee4023"
		hsm   = "pkcs11:token=kw;object=root-2"
		other = "tink:1387148517:e270a5f50269b3e4"
		rec   = "recovery:0123456789abcdef"
	)
	tests := []struct {
		name  string
		r     Report
		keyID string
		want  int
	}{
		{"single-root objects under it count", Report{KeyIDs: map[string]int{old: 3}}, old, 3},
		{"single-root objects under another key do not", Report{KeyIDs: map[string]int{other: 3}}, old, 0},
		{"every form of the version counts", Report{KeyIDs: map[string]int{
			"transit/keys/kw:v1": 1, "transit/keys/kw:v1#1700000000": 2, "transit/keys/kw:v2#1700000100": 4,
		}}, "transit/keys/kw:v1#1700000000", 3},
		{"multi-root with a copy under it and another root does not", Report{
			KeyIDs:    map[string]int{"roots:2:aa": 5},
			LocalKEKs: []KEKReport{{ID: "k1", RootKeyID: "roots:2:aa", Roots: []string{old, hsm}, Objects: 5}},
		}, old, 0},
		{"the other root of that KEK is not sole either", Report{
			KeyIDs:    map[string]int{"roots:2:aa": 5},
			LocalKEKs: []KEKReport{{ID: "k1", RootKeyID: "roots:2:aa", Roots: []string{old, hsm}, Objects: 5}},
		}, hsm, 0},
		{"multi-root without a copy under it does not", Report{
			KeyIDs:    map[string]int{"roots:2:bb": 5},
			LocalKEKs: []KEKReport{{ID: "k1", RootKeyID: "roots:2:bb", Roots: []string{other, hsm}, Objects: 5}},
		}, old, 0},
		{"a recovery copy is not another root", Report{
			KeyIDs:    map[string]int{"roots:2:cc": 4},
			LocalKEKs: []KEKReport{{ID: "k1", RootKeyID: "roots:2:cc", Roots: []string{old, rec}, Objects: 4}},
		}, old, 4},
		{"two copies under forms of the same version only", Report{
			KeyIDs: map[string]int{"roots:2:dd": 2},
			LocalKEKs: []KEKReport{{ID: "k1", RootKeyID: "roots:2:dd",
				Roots: []string{"transit/keys/kw:v1", "transit/keys/kw:v1#1700000000"}, Objects: 2}},
		}, "transit/keys/kw:v1#1700000000", 2},
		{"mixed", Report{
			KeyIDs: map[string]int{old: 7, other: 1, "roots:2:aa": 5, "roots:2:cc": 4},
			LocalKEKs: []KEKReport{
				{ID: "k0", RootKeyID: old, Objects: 7},
				{ID: "k1", RootKeyID: "roots:2:aa", Roots: []string{hsm, old}, Objects: 5},
				{ID: "k2", RootKeyID: "roots:2:cc", Roots: []string{old, rec}, Objects: 4},
			},
		}, old, 11},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.r.SoleUse(tc.keyID); got != tc.want {
				t.Errorf("SoleUse(%q) = %d, want %d", tc.keyID, got, tc.want)
			}
			if in := tc.r.InUse(tc.keyID); in < tc.r.SoleUse(tc.keyID) {
				t.Errorf("InUse(%q) = %d < SoleUse", tc.keyID, in)
			}
		})
	}
}

// SoleUse on a report read from values as keywarden writes them.
func TestSoleUseRun(t *testing.T) {
	kvs := map[string][]byte{
		"/registry/secrets/default/two": etcdtest.KMSValueRoots(t, key1, key2),
		"/registry/secrets/default/one": etcdtest.KMSValue(t, key1),
	}
	scopes, _ := Scopes("/registry", []string{"*.*"})
	r, err := Run(context.Background(), &fakeEtcd{kvs: kvs, rev: 1}, Options{Scopes: scopes})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int{key1: 1, key2: 0} {
		if got := r.SoleUse(id); got != want {
			t.Errorf("SoleUse(%s) = %d, want %d (%+v)", id, got, want, r.LocalKEKs)
		}
	}
}

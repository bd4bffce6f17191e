package recovery

import (
	"errors"
	"testing"
)

// FuzzParse: no input makes either parser panic, and no input is taken
// by both (a file is public or private, never both).
func FuzzParse(f *testing.F) {
	k, err := New()
	if errors.Is(err, ErrFIPSOnly) {
		f.Skip("no recovery key under GODEBUG=fips140=only (X25519 is not FIPS approved; TestFIPSOnly checks the refusal)")
	}
	if err != nil {
		f.Fatal(err)
	}
	pub, _ := k.MarshalPublic()
	priv, _ := k.Marshal(nil, fastKDF())
	sealed, _ := k.Marshal([]byte("p"), fastKDF())
	for _, b := range [][]byte{pub, priv, sealed, []byte("{}"), []byte(`{"type":"` + PrivateType + `"}`)} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, perr := ParsePublic(b)
		_, xerr := ParsePrivate(b, []byte("p"))
		if perr == nil && xerr == nil {
			t.Fatalf("%q parsed as both public and private", b)
		}
	})
}

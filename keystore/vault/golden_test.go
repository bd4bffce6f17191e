package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore"
)

var updateGolden = flag.Bool("update-golden", false, "write testdata/golden.json from the dev server")

const goldenFile = "testdata/golden.json"

// golden is a Transit key (a plaintext backup of a key made for this test
// only: `go test -run TestGolden -update-golden` with a dev server writes a
// new one) and what keywarden wrapped under it, with the key_ids keywarden
// reported.
type golden struct {
	// Prefix is the key_id prefix of the key when the file was written;
	// the test restores the key under another name and swaps it.
	Prefix  string       `json:"prefix"`
	Backup  string       `json:"backup"`
	KeyID   string       `json:"keyID"` // what KeyID reported
	Wrapped []goldenWrap `json:"wrapped"`
}

type goldenWrap struct {
	KeyID      string `json:"keyID"`
	Ciphertext []byte `json:"ciphertext"`
	AAD        []byte `json:"aad"`
	Plaintext  []byte `json:"plaintext"`
}

// TestGolden: ciphertexts keywarden wrapped must unwrap in every later
// version, under the key_ids it reported then. The file holds both key_id
// forms: "<mount>/keys/<name>:v<n>", what keywarden reported before key_ids
// named the key (and what existing clusters' etcd holds), and today's
// "…:v<n>#<created>". The key comes back with its creation times through
// Transit's backup and restore, so today's KeyID is the one recorded.
func TestGolden(t *testing.T) {
	needServer(t)
	if *updateGolden {
		writeGolden(t)
	}
	raw, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatal(err)
	}
	name := "golden-" + randHex(4)
	if _, err := srv.admin.Logical().Write(srv.mount+"/restore/"+name, map[string]any{"backup": g.Backup}); err != nil {
		t.Fatalf("restore the golden key: %v", err)
	}
	ctx := context.Background()
	b := openKey(t, name)
	defer b.Close()
	rename := func(kid string) string {
		if !strings.HasPrefix(kid, g.Prefix) {
			t.Fatalf("golden key_id %q lacks prefix %q", kid, g.Prefix)
		}
		return b.prefix + kid[len(g.Prefix):]
	}
	if kid, err := b.KeyID(ctx); err != nil || kid != rename(g.KeyID) {
		t.Fatalf("KeyID = %q, %v; want the recorded %q", kid, err, rename(g.KeyID))
	}
	forms := map[bool]int{}
	for _, w := range g.Wrapped {
		forms[strings.Contains(w.KeyID, "#")]++
		pt, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: rename(w.KeyID), Ciphertext: w.Ciphertext}, w.AAD)
		if err != nil || !bytes.Equal(pt, w.Plaintext) {
			t.Errorf("Unwrap golden under %q: %q, %v", w.KeyID, pt, err)
		}
	}
	if forms[true] == 0 || forms[false] == 0 {
		t.Fatalf("golden file holds %d tagged and %d untagged key_ids; want both forms", forms[true], forms[false])
	}
}

// writeGolden makes an exportable key (for the backup only), wraps under
// two versions, and records both key_id forms of each.
func writeGolden(t *testing.T) {
	ctx := context.Background()
	name := "golden-src-" + randHex(4)
	if _, err := srv.admin.Logical().Write(srv.mount+"/keys/"+name, map[string]any{
		"type": "aes256-gcm96", "exportable": true, "allow_plaintext_backup": true,
	}); err != nil {
		t.Fatal(err)
	}
	b := openKey(t, name)
	defer b.Close()
	// Recorded under a fixed prefix, not this run's mount and name.
	g := golden{Prefix: "transit/keys/golden:"}
	fixed := func(kid string) string { return g.Prefix + strings.TrimPrefix(kid, b.prefix) }
	wrap := func(pt, aad string) {
		w, err := b.Wrap(ctx, []byte(pt), []byte(aad))
		if err != nil {
			t.Fatal(err)
		}
		old, _, _ := strings.Cut(w.KeyID, "#")
		for _, kid := range []string{w.KeyID, old} {
			g.Wrapped = append(g.Wrapped, goldenWrap{fixed(kid), w.Ciphertext, []byte(aad), []byte(pt)})
		}
	}
	wrap("golden local KEK, version 1 ....", "golden aad 1")
	if _, err := b.Add(ctx); err != nil {
		t.Fatal(err)
	}
	wrap("golden local KEK, version 2 ....", "")
	kid, err := b.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g.KeyID = fixed(kid)
	s, err := srv.admin.Logical().Read(srv.mount + "/backup/" + name)
	if err != nil || s == nil {
		t.Fatalf("backup: %v", err)
	}
	g.Backup, _ = s.Data["backup"].(string)
	out, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.FromSlash(goldenFile), append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/keywarden/keywarden/keystore/recovery"
)

func TestRecoveryInit(t *testing.T) {
	dir := t.TempDir()
	pub, priv := filepath.Join(dir, "recovery.pub.json"), filepath.Join(dir, "recovery.private.json")
	passFile := filepath.Join(dir, "pass")
	if err := os.WriteFile(passFile, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, "", false, "recovery", "init", "--public-out", pub, "--private-out", priv, "--passphrase-file", passFile, "-o", "json")
	if r.code != 0 {
		t.Fatalf("recovery init: %+v", r)
	}
	var out recoveryInit
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || !out.Passphrase || !recovery.IsKeyID(out.KeyID) {
		t.Fatalf("output %q (%v)", r.stdout, err)
	}
	st, err := os.Stat(priv)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private keyset: %v %v", st, err)
	}
	b, _ := os.ReadFile(priv)
	if !recovery.Sealed(b) {
		t.Fatal("private keyset not sealed under the passphrase")
	}
	k, err := recovery.OpenPrivate(priv, []byte("correct horse"))
	if err != nil || k.KeyID() != out.KeyID {
		t.Fatalf("OpenPrivate: %v", err)
	}
	p, err := recovery.OpenPublic(pub)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := p.KeyID(t.Context()); id != out.KeyID {
		t.Fatalf("public key_id %q, want %q", id, out.KeyID)
	}

	// Never overwritten; a passphrase is asked for unless refused.
	if r := run(t, "", false, "recovery", "init", "--public-out", pub+"2", "--private-out", priv, "--no-passphrase"); r.code != exitFailed {
		t.Fatalf("overwrite: %+v", r)
	}
	if r := run(t, "", false, "recovery", "init", "--public-out", pub+"3", "--private-out", priv+"3"); r.code != exitUsage {
		t.Fatalf("no passphrase source off a terminal: %+v", r)
	}
	if r := run(t, "", false, "recovery", "init", "--public-out", pub+"4", "--private-out", priv+"4", "--no-passphrase"); r.code != 0 {
		t.Fatalf("--no-passphrase: %+v", r)
	}
	if _, err := recovery.OpenPrivate(priv+"4", nil); err != nil {
		t.Fatal(err)
	}
}

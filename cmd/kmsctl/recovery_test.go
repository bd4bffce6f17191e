package main

import (
	"context"
	"crypto/fips140"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	storagevalue "k8s.io/apiserver/pkg/storage/value"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/offline"
	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/keystore/recovery"
	"github.com/keywarden/keywarden/kms"
)

func TestRecoveryInit(t *testing.T) {
	dir := t.TempDir()
	pub, priv := filepath.Join(dir, "recovery.pub.json"), filepath.Join(dir, "recovery.private.json")
	passFile := filepath.Join(dir, "pass")
	if err := os.WriteFile(passFile, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, "", false, "recovery", "init", "--public-out", pub, "--private-out", priv, "--passphrase-file", passFile, "-o", "json")
	if fips140.Enforced() {
		// No recovery key in FIPS 140-only mode (docs/fips.md): refused,
		// saying why, and nothing written.
		if r.code != exitFailed || !strings.Contains(r.stderr, "FIPS 140-only mode") {
			t.Fatalf("recovery init under GODEBUG=fips140=only: %+v", r)
		}
		if _, err := os.Stat(priv); err == nil {
			t.Fatal("a refused recovery init wrote the private keyset")
		}
		return
	}
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

// kmsctl recover reads, with the private keyset alone, what a keywarden
// with the public one sealed through kube-apiserver's own transformer.
func TestRecoverCommand(t *testing.T) {
	if fips140.Enforced() {
		t.Skip("no recovery key under GODEBUG=fips140=only (X25519 is not FIPS approved; TestRecoveryInit checks the refusal)")
	}
	url, c := etcdtest.Start(t)
	ctx := context.Background()
	dir := t.TempDir()
	pubPath, privPath := filepath.Join(dir, "r.pub.json"), filepath.Join(dir, "r.private.json")
	passFile := filepath.Join(dir, "pass")
	if err := os.WriteFile(passFile, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "", false, "recovery", "init", "--public-out", pubPath, "--private-out", privPath, "--passphrase-file", passFile); r.code != 0 {
		t.Fatalf("recovery init: %+v", r)
	}
	pub, err := recovery.OpenPublic(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	ks := filepath.Join(dir, "keyset.json")
	if _, err := file.Init(ks); err != nil {
		t.Fatal(err)
	}
	fb, err := file.Open(ks)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := kms.New(ctx, kms.Config{Backend: fb, Recovery: pub})
	if err != nil {
		t.Fatal(err)
	}
	tr, o, cacheKey, err := kmsv2.GenerateTransformer(ctx, "uid", svc, true)
	if err != nil {
		t.Fatal(err)
	}
	st := kmsv2.State{Transformer: tr, EncryptedObjectKeyID: o.KeyID, EncryptedObjectEncryptedDEKSource: o.EncryptedDEKSource,
		EncryptedObjectAnnotations: o.Annotations, EncryptedObjectEncryptedDEKSourceType: o.EncryptedDEKSourceType,
		ExpirationTimestamp: time.Now().Add(time.Hour), CacheKey: cacheKey, KMSProviderName: "keywarden"}
	w := kmsv2.NewEnvelopeTransformer(svc, "keywarden", func() (kmsv2.State, error) { return st, nil }, "test")
	const key = "/registry/secrets/ns/s1"
	secret := `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s1","namespace":"ns","uid":"u"},"data":{"p":"aHVudGVyMg=="}}`
	ct, err := w.TransformToStorage(ctx, []byte(secret), storagevalue.DefaultContext(key))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, key, "k8s:enc:kms:v2:keywarden:"+string(ct)); err != nil {
		t.Fatal(err)
	}
	pub600 := filepath.Join(dir, "pub600.json")
	if b, err := os.ReadFile(pubPath); err != nil || os.WriteFile(pub600, b, 0o600) != nil {
		t.Fatal(err)
	}
	base := []string{"recover", "--etcd-endpoints", url, "--private-key", privPath, "--passphrase-file", passFile}

	r := run(t, "", false, append(base, "--verify", "-o", "json")...)
	var rep offline.Report
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil || rep.Decrypted != 1 || rep.Written != 0 {
		t.Fatalf("recover --verify: %+v", r)
	}
	if strings.Contains(r.stdout+r.stderr, "aHVudGVyMg") {
		t.Fatal("recover --verify printed plaintext")
	}

	out := filepath.Join(dir, "out")
	for _, tt := range []struct {
		name string
		args []string
		code int
	}{
		{"out-dir without --write-plaintext", []string{"--out-dir", out}, exitUsage},
		{"neither verify nor out-dir", nil, exitUsage},
		{"both", []string{"--verify", "--out-dir", out, "--write-plaintext"}, exitUsage},
		{"wrong passphrase", []string{"--verify", "--passphrase-file", pubPath}, exitFailed},
		{"public keyset as the private key", []string{"--verify", "--private-key", pub600}, exitFailed},
		{"private key readable by others", []string{"--verify", "--private-key", pubPath}, exitFailed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if r := run(t, "", false, append(append([]string{}, base...), tt.args...)...); r.code != tt.code {
				t.Fatalf("exit %d, want %d: %+v", r.code, tt.code, r)
			}
		})
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("a refused recover made the output directory")
	}

	r = run(t, "", false, append(base, "--out-dir", out, "--write-plaintext")...)
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, "aHVudGVyMg") {
		t.Fatalf("recover --out-dir: %+v", r)
	}
	b, err := os.ReadFile(filepath.Join(out, "secrets", "ns", "s1.yaml"))
	if err != nil || !strings.Contains(string(b), "aHVudGVyMg==") || strings.Contains(string(b), "uid:") {
		t.Fatalf("manifest %q (%v)", b, err)
	}

	// The same from a snapshot file, with no etcd.
	snap := filepath.Join(dir, "snap.db")
	rc, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sf, err := os.Create(snap)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(sf, rc); err != nil || sf.Close() != nil {
		t.Fatal(err)
	}
	rc.Close()
	snapBase := []string{"recover", "--snapshot", snap, "--private-key", privPath, "--passphrase-file", passFile}
	r = run(t, "", false, append(snapBase, "--verify", "-o", "json")...)
	rep = offline.Report{}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil || rep.Decrypted != 1 || rep.Written != 0 {
		t.Fatalf("recover --snapshot --verify: %+v", r)
	}
	out2 := filepath.Join(dir, "out2")
	if r := run(t, "", false, append(snapBase, "--out-dir", out2, "--write-plaintext")...); r.code != 0 {
		t.Fatalf("recover --snapshot --out-dir: %+v", r)
	}
	if b2, err := os.ReadFile(filepath.Join(out2, "secrets", "ns", "s1.yaml")); err != nil || string(b2) != string(b) {
		t.Fatalf("manifest from the snapshot %q (%v), from etcd %q", b2, err, b)
	}
	if r := run(t, "", false, append(base, "--snapshot", snap, "--verify")...); r.code != exitUsage {
		t.Fatalf("--snapshot with --etcd-endpoints: %+v", r)
	}

	// A value whose KEK predates the recovery key fails the verify.
	plain, err := kms.New(ctx, kms.Config{Backend: fb})
	if err != nil {
		t.Fatal(err)
	}
	tr2, o2, ck2, err := kmsv2.GenerateTransformer(ctx, "uid", plain, true)
	if err != nil {
		t.Fatal(err)
	}
	st2 := kmsv2.State{Transformer: tr2, EncryptedObjectKeyID: o2.KeyID, EncryptedObjectEncryptedDEKSource: o2.EncryptedDEKSource,
		EncryptedObjectAnnotations: o2.Annotations, EncryptedObjectEncryptedDEKSourceType: o2.EncryptedDEKSourceType,
		ExpirationTimestamp: time.Now().Add(time.Hour), CacheKey: ck2, KMSProviderName: "keywarden"}
	w2 := kmsv2.NewEnvelopeTransformer(plain, "keywarden", func() (kmsv2.State, error) { return st2, nil }, "test")
	ct2, err := w2.TransformToStorage(ctx, []byte(secret), storagevalue.DefaultContext("/registry/secrets/ns/old"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "/registry/secrets/ns/old", "k8s:enc:kms:v2:keywarden:"+string(ct2)); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "", false, append(base, "--verify")...); r.code != exitProblem || !strings.Contains(r.stdout, "/registry/secrets/ns/old") {
		t.Fatalf("verify with a value without a recovery copy: %+v", r)
	}
}

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	gcmpb "github.com/tink-crypto/tink-go/v2/proto/aes_gcm_go_proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/kms/envelope"
	"github.com/keywarden/keywarden/test/keystores/vaulttransit"
)

// A secret is something that must never be written by keywarden or kmsctl:
// a plaintext, a key's bytes, a PIN, a token.
type secret struct {
	name string
	b    []byte
}

// transcript holds every byte the binaries wrote (stdout, stderr) and every
// body keywarden served over HTTP, by source, and the secrets they must not
// contain.
type transcript struct {
	mu      sync.Mutex
	parts   []part
	secrets []secret
}

type part struct {
	src string
	b   []byte
}

func (tr *transcript) add(src string, b []byte) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.parts = append(tr.parts, part{src, bytes.Clone(b)})
}

func (tr *transcript) secret(name string, b []byte) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.secrets = append(tr.secrets, secret{name, bytes.Clone(b)})
}

// forms returns the encodings of s that a careless log line or message
// would carry: raw, hex (both cases), Go's and JSON's quoting, Go's
// []byte formatting, and base64 (standard and URL alphabets) at each of
// the three byte alignments, so that s is found inside a longer base64
// blob too (only the characters that depend on s alone are kept).
func forms(s []byte) map[string]string {
	f := map[string]string{
		"raw":       string(s),
		"hex":       hex.EncodeToString(s),
		"HEX":       strings.ToUpper(hex.EncodeToString(s)),
		"%q":        strings.Trim(strconv.Quote(string(s)), `"`),
		"bytes %v":  decimal(s),
		"json text": func() string { b, _ := json.Marshal(string(s)); return strings.Trim(string(b), `"`) }(),
	}
	for name, enc := range map[string]*base64.Encoding{"base64": base64.StdEncoding, "base64url": base64.URLEncoding} {
		for k := range 3 {
			e := enc.EncodeToString(append(make([]byte, k), s...))
			f[fmt.Sprintf("%s@%d", name, k)] = e[(8*k+5)/6 : 8*(k+len(s))/6]
		}
	}
	return f
}

// decimal is how fmt prints a []byte with %v, without the brackets.
func decimal(s []byte) string {
	d := make([]string, len(s))
	for i, c := range s {
		d[i] = strconv.Itoa(int(c))
	}
	return strings.Join(d, " ")
}

// check fails the test for every secret found, in any form, in any part.
func (tr *transcript) check(t *testing.T) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.parts) == 0 || len(tr.secrets) == 0 {
		t.Fatalf("nothing to check: %d outputs, %d secrets", len(tr.parts), len(tr.secrets))
	}
	var n int
	for _, p := range tr.parts {
		n += len(p.b)
	}
	for _, s := range tr.secrets {
		if len(s.b) < 8 {
			t.Fatalf("secret %s is %d bytes: too short to search for without false alarms", s.name, len(s.b))
		}
		for form, needle := range forms(s.b) {
			for _, p := range tr.parts {
				if i := bytes.Index(p.b, []byte(needle)); i >= 0 {
					line := p.b[max(0, bytes.LastIndexByte(p.b[:i], '\n')+1):]
					if j := bytes.IndexByte(line, '\n'); j >= 0 {
						line = line[:j]
					}
					t.Errorf("%s (%s) in %s:\n%s", s.name, form, p.src, line)
				}
			}
		}
	}
	t.Logf("searched %d outputs (%d bytes) for %d secrets in %d forms each", len(tr.parts), n, len(tr.secrets), len(forms([]byte("12345678"))))
}

// run runs a binary with extra environment, records its stdout and
// stderr, and returns stdout. wantErr says whether it is meant to fail.
func (tr *transcript) run(t *testing.T, wantErr bool, env []string, name string, args ...string) string {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(c, filepath.Join(binDir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	src := name + " " + strings.Join(args, " ")
	tr.add(src+" (stdout)", stdout.Bytes())
	tr.add(src+" (stderr)", stderr.Bytes())
	if (err != nil) != wantErr {
		t.Fatalf("%s: %v (want failure: %v)\nstdout: %s\nstderr: %s", src, err, wantErr, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String()
}

func (tr *transcript) kmsctl(t *testing.T, env []string, args ...string) string {
	t.Helper()
	return tr.run(t, false, env, "kmsctl", args...)
}

// random returns n random bytes, recorded as a secret.
func (tr *transcript) random(name string, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	tr.secret(name, b)
	return b
}

// keyIDs parses `kmsctl keys … -o json`.
func keyIDs(t *testing.T, out string) []string {
	t.Helper()
	var vs []struct{ KeyID string }
	if err := json.Unmarshal([]byte(out), &vs); err != nil || len(vs) == 0 {
		t.Fatalf("kmsctl keys output %q: %v", out, err)
	}
	var ids []string
	for _, v := range vs {
		ids = append(ids, v.KeyID)
	}
	return ids
}

// rpcs runs every RPC keywarden serves, the failing ones included, with
// secret plaintexts, and returns the successful Encrypt responses.
func (tr *transcript) rpcs(t *testing.T, p *plugin, round string) []*kmsapi.EncryptResponse {
	t.Helper()
	c := p.client
	st, err := c.Status(ctx(t), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var encs []*kmsapi.EncryptResponse
	for i, pt := range [][]byte{
		tr.random(round+" seed", 32),
		[]byte("kw-canary-plaintext-" + hex.EncodeToString(tr.random(round+" text plaintext (hex part)", 12))),
		tr.random(round+" max-size plaintext", envelope.MaxPlaintext),
	} {
		tr.secret(fmt.Sprintf("%s plaintext %d", round, i), pt)
		enc, err := c.Encrypt(ctx(t), &kmsapi.EncryptRequest{Uid: fmt.Sprintf("%s-enc-%d", round, i), Plaintext: pt})
		if err != nil {
			t.Fatalf("Encrypt %d: %v", i, err)
		}
		dec, err := c.Decrypt(ctx(t), &kmsapi.DecryptRequest{Uid: fmt.Sprintf("%s-dec-%d", round, i), Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations})
		if err != nil || !bytes.Equal(dec.Plaintext, pt) {
			t.Fatalf("Decrypt %d: %v", i, err)
		}
		encs = append(encs, enc)
	}
	// Refused Encrypts: over the size bound, empty.
	over := append(tr.random(round+" oversize plaintext head", 64), make([]byte, envelope.MaxPlaintext)...)
	for i, pt := range [][]byte{over, nil} {
		if _, err := c.Encrypt(ctx(t), &kmsapi.EncryptRequest{Uid: fmt.Sprintf("%s-enc-bad-%d", round, i), Plaintext: pt}); err == nil {
			t.Fatalf("Encrypt of %d bytes accepted", len(pt))
		}
	}
	// Refused Decrypts, each carrying a real ciphertext or annotation.
	e := encs[0]
	ann := e.Annotations[envelope.AnnotationKey]
	id, rootCT, err := envelope.DecodeKEK(ann)
	if err != nil {
		t.Fatal(err)
	}
	badCT := append([]byte(nil), rootCT...)
	badCT[len(badCT)-1] ^= 1
	badAnn, err := envelope.EncodeKEK(id, badCT)
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), e.Ciphertext...)
	flipped[len(flipped)-1] ^= 1
	one := func(a []byte) map[string][]byte { return map[string][]byte{envelope.AnnotationKey: a} }
	for _, bad := range []struct {
		name string
		req  *kmsapi.DecryptRequest
	}{
		{"tampered ciphertext", &kmsapi.DecryptRequest{Ciphertext: flipped, KeyId: e.KeyId, Annotations: e.Annotations}},
		{"tampered wrapped KEK", &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Annotations: one(badAnn)}},
		{"wrong key_id", &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: st.KeyId + "x", Annotations: e.Annotations}},
		{"unknown key_id in annotation", &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: id + "x", Annotations: one(must(envelope.EncodeKEK(id+"x", rootCT)))}},
		{"another KEK's ciphertext", &kmsapi.DecryptRequest{Ciphertext: encs[1].Ciphertext[:len(encs[1].Ciphertext)-1], KeyId: e.KeyId, Annotations: e.Annotations}},
		{"oversize ciphertext", &kmsapi.DecryptRequest{Ciphertext: append(bytes.Clone(e.Ciphertext), make([]byte, 200<<10)...), KeyId: e.KeyId, Annotations: e.Annotations}},
		{"over the message cap", &kmsapi.DecryptRequest{Ciphertext: make([]byte, 1<<20), KeyId: e.KeyId, Annotations: e.Annotations}},
		{"oversize annotation", &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Annotations: one(append(bytes.Clone(ann), make([]byte, 40<<10)...))}},
		{"extra annotation", &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Annotations: map[string][]byte{envelope.AnnotationKey: ann, "x.example.com": e.Ciphertext}}},
		{"no annotation", &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId}},
		{"empty", &kmsapi.DecryptRequest{}},
	} {
		bad.req.Uid = round + "-" + strings.ReplaceAll(bad.name, " ", "-")
		_, err := c.Decrypt(ctx(t), bad.req, grpc.MaxCallSendMsgSize(4<<20))
		if err == nil {
			t.Fatalf("Decrypt %s accepted", bad.name)
		}
		// What the client sees is output too (the apiserver logs it).
		tr.add("Decrypt "+bad.name+" (status)", []byte(status.Convert(err).Message()))
	}
	return encs
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// stop sends SIGTERM, waits, and records everything keywarden wrote.
func (tr *transcript) stop(t *testing.T, p *plugin, name string) {
	t.Helper()
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		tr.add(name+" GET "+path, []byte(httpGet(t, "http://"+p.metrics+path)))
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("keywarden did not exit 20 s after SIGTERM")
	}
	if p.logs.Len() == 0 {
		t.Fatalf("%s wrote nothing at --log-level debug", name)
	}
	if !bytes.Contains(p.logs.Bytes(), []byte(`kms rpc`)) {
		t.Fatalf("%s logged no RPC at debug: the check would search nothing", name)
	}
	tr.add(name+" (stdout+stderr)", p.logs.Bytes())
}

// waitKeyID polls Status until it reports want.
func waitKeyID(t *testing.T, p *plugin, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := p.client.Status(ctx(t), &kmsapi.StatusRequest{})
		if err == nil && st.KeyId == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Status key_id not %s after 10 s: %v %v", want, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNoSecretInLogs runs every RPC against the real keywarden at
// --log-level debug and the kmsctl commands that run offline or against
// that plugin, with known plaintexts, key bytes, a PKCS#11 PIN and a Vault
// token, and searches every byte they wrote for each of them (see forms).
func TestNoSecretInLogs(t *testing.T) {
	t.Run("file", testNoSecretFile)
	t.Run("pkcs11", testNoSecretPKCS11)
	t.Run("vault", testNoSecretVault)
}

func testNoSecretFile(t *testing.T) {
	tr := &transcript{}
	defer tr.check(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "keyset.json")
	uri := "file://" + path
	state := filepath.Join(dir, "state.json")

	// Root key bytes: every key in the keyset, as Tink stores it and raw.
	rootKeys := func() {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var ks struct {
			Key []struct {
				KeyID   uint32
				KeyData struct{ Value string }
			}
		}
		if err := json.Unmarshal(b, &ks); err != nil || len(ks.Key) == 0 {
			t.Fatalf("keyset: %v", err)
		}
		for _, k := range ks.Key {
			ser, err := base64.StdEncoding.DecodeString(k.KeyData.Value)
			if err != nil {
				t.Fatal(err)
			}
			var key gcmpb.AesGcmKey
			if err := proto.Unmarshal(ser, &key); err != nil || len(key.GetKeyValue()) != 32 {
				t.Fatalf("key %d: %v, %d bytes", k.KeyID, err, len(key.GetKeyValue()))
			}
			tr.secret(fmt.Sprintf("root key %d", k.KeyID), key.GetKeyValue())
			tr.secret(fmt.Sprintf("root key %d (Tink serialized)", k.KeyID), ser)
		}
	}
	// Local KEK bytes: unwrapped from the annotations with the keyset.
	localKEKs := func(encs []*kmsapi.EncryptResponse) {
		b, err := file.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		for _, e := range encs {
			id, ct, err := envelope.DecodeKEK(e.Annotations[envelope.AnnotationKey])
			if err != nil {
				t.Fatal(err)
			}
			kek, err := b.Unwrap(context.Background(), keystore.Wrapped{KeyID: id, Ciphertext: ct}, envelope.RootAAD())
			if err != nil {
				t.Fatal(err)
			}
			tr.secret("local KEK under "+id, kek)
		}
	}

	tr.kmsctl(t, nil, "keys", "init", "--keystore", uri)
	rootKeys()
	first := keyIDs(t, tr.kmsctl(t, nil, "keys", "list", "--keystore", uri, "-o", "json"))[0]
	second := keyIDs(t, tr.kmsctl(t, nil, "keys", "add", "--keystore", uri, "-o", "json"))[0]
	rootKeys()
	for _, o := range []string{"table", "yaml", "json"} {
		tr.kmsctl(t, nil, "keys", "list", "--keystore", uri, "-o", o)
	}

	p := start(t, uri, "", "--state-file", state)
	sock := "unix://" + p.sock
	encs := tr.rpcs(t, p, "file round 1")
	tr.kmsctl(t, nil, "status", "--socket", sock, "--metrics-url", "http://"+p.metrics+"/metrics")
	tr.kmsctl(t, nil, "status", "--socket", sock, "-o", "json")
	tr.kmsctl(t, nil, "check", "--socket", sock)
	tr.kmsctl(t, nil, "keys", "promote", "--keystore", uri, "--yes", second)
	waitKeyID(t, p, second)
	encs = append(encs, tr.rpcs(t, p, "file round 2")...)
	localKEKs(encs)
	tr.stop(t, p, "keywarden (json)")

	// A restart adopts the state file; text logs this time.
	p = start(t, uri, "", "--state-file", state, "--log-format", "text")
	sock = "unix://" + p.sock
	encs = tr.rpcs(t, p, "file round 3")
	localKEKs(encs)
	tr.kmsctl(t, nil, "keys", "disable", "--keystore", uri, "--force", first)
	tr.kmsctl(t, nil, "keys", "enable", "--keystore", uri, first)
	tr.kmsctl(t, nil, "keys", "disable", "--keystore", uri, "--force", first)
	tr.kmsctl(t, nil, "keys", "destroy", "--keystore", uri, "--force", "--yes", first)
	// Refusals print their reasons: promote a destroyed version, destroy
	// the primary, a keyset that is not there.
	tr.run(t, true, nil, "kmsctl", "keys", "promote", "--keystore", uri, "--yes", first)
	tr.run(t, true, nil, "kmsctl", "keys", "destroy", "--keystore", uri, "--force", "--yes", second)
	tr.run(t, true, nil, "kmsctl", "keys", "list", "--keystore", "file://"+filepath.Join(dir, "missing.json"))
	tr.kmsctl(t, nil, "check", "--socket", sock)
	// rotate and migrate need kube-apiserver: they get as far as it, with
	// a kubeconfig whose bearer token is a secret too.
	kubeconfig := filepath.Join(dir, "kubeconfig")
	bearer := "kw-bearer-" + hex.EncodeToString(tr.random("kubeconfig token (hex part)", 12))
	tr.secret("kubeconfig token", []byte(bearer))
	kc := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n" +
		"users: [{name: u, user: {token: " + bearer + "}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
	if err := os.WriteFile(kubeconfig, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	tr.run(t, true, nil, "kmsctl", "rotate", "--dry-run", "--keystore", uri, "--socket", sock, "--kubeconfig", kubeconfig,
		"--etcd-endpoints", "http://127.0.0.1:1", "--etcd-timeout", "1s")
	tr.run(t, true, nil, "kmsctl", "migrate", "--kubeconfig", kubeconfig)
	tr.stop(t, p, "keywarden (text)")

	// kmsctl audit over a real etcd holding objects under these keys and
	// a plaintext Secret whose value is a known secret.
	t.Run("audit", func(t *testing.T) {
		endpoint, c := etcdtest.Start(t)
		for i, e := range encs {
			val := append([]byte("k8s:enc:kms:v2:keywarden:"), encryptedObject(tr.random("stored data", 48), e)...)
			if _, err := c.Put(ctx(t), fmt.Sprintf("/registry/secrets/default/s%d", i), string(val)); err != nil {
				t.Fatal(err)
			}
		}
		plain := tr.random("plaintext Secret value", 24)
		obj := fmt.Sprintf(`{"kind":"Secret","apiVersion":"v1","metadata":{"name":"p","namespace":"default"},"data":{"k":%q}}`, base64.StdEncoding.EncodeToString(plain))
		if _, err := c.Put(ctx(t), "/registry/secrets/default/plain", obj); err != nil {
			t.Fatal(err)
		}
		tr.kmsctl(t, nil, "audit", "--etcd-endpoints", endpoint)
		var report struct{ Objects, Plaintext int }
		if err := json.Unmarshal([]byte(tr.kmsctl(t, nil, "audit", "--etcd-endpoints", endpoint, "-o", "json")), &report); err != nil {
			t.Fatal(err)
		}
		if report.Objects != len(encs)+1 || report.Plaintext != 1 {
			t.Fatalf("audit saw %+v, want %d objects, 1 in plaintext", report, len(encs)+1)
		}
		tr.run(t, true, nil, "kmsctl", "audit", "--etcd-endpoints", endpoint, "--fail-on-plaintext", "--fail-on-key", second)
	})
}

// encryptedObject is the KMS v2 EncryptedObject kube-apiserver stores,
// around a response of ours (k8s.io/apiserver's kmsv2 api.proto).
func encryptedObject(data []byte, e *kmsapi.EncryptResponse) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, data)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, e.KeyId)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, e.Ciphertext)
	for k, v := range e.Annotations {
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendBytes(entry, v)
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, entry)
	}
	b = protowire.AppendTag(b, 5, protowire.VarintType)
	return protowire.AppendVarint(b, 1) // HKDF_SHA256_XNONCE_AES_GCM_SEED
}

// requireOrSkip skips, or fails when CI asks for the dependency with env.
func requireOrSkip(t *testing.T, env, msg string) {
	t.Helper()
	if os.Getenv(env) != "" {
		t.Fatalf("%s, and %s is set", msg, env)
	}
	t.Skip(msg)
}

func testNoSecretPKCS11(t *testing.T) {
	const module = "/usr/lib/softhsm/libsofthsm2.so"
	util, err := exec.LookPath("softhsm2-util")
	if _, serr := os.Stat(module); serr != nil || err != nil {
		requireOrSkip(t, "KEYWARDEN_REQUIRE_SOFTHSM", "SoftHSM2 is not installed (apt-get install softhsm2)")
	}
	tr := &transcript{}
	defer tr.check(t)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf) // keywarden and kmsctl inherit it
	pin := "kw-user-pin-" + hex.EncodeToString(tr.random("PIN (hex part)", 8))
	soPIN := "kw-so-pin-" + hex.EncodeToString(tr.random("SO PIN (hex part)", 8))
	tr.secret("PIN", []byte(pin))
	tr.secret("SO PIN", []byte(soPIN))
	if out, err := exec.Command(util, "--init-token", "--free", "--label", "kw-logs", "--so-pin", soPIN, "--pin", pin).CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v: %s", err, out)
	}
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := fmt.Sprintf("pkcs11:token=kw-logs;object=keywarden-root?module-path=%s&pin-source=file:%s", module, pinFile)

	tr.kmsctl(t, nil, "keys", "init", "--keystore", uri)
	first := keyIDs(t, tr.kmsctl(t, nil, "keys", "list", "--keystore", uri, "-o", "json"))[0]
	second := keyIDs(t, tr.kmsctl(t, nil, "keys", "add", "--keystore", uri, "-o", "json"))[0]
	tr.kmsctl(t, nil, "keys", "list", "--keystore", uri)
	p := start(t, uri, "")
	sock := "unix://" + p.sock
	tr.rpcs(t, p, "pkcs11 round 1")
	tr.kmsctl(t, nil, "keys", "promote", "--keystore", uri, "--yes", second)
	waitKeyID(t, p, second)
	tr.rpcs(t, p, "pkcs11 round 2")
	tr.kmsctl(t, nil, "status", "--socket", sock, "--metrics-url", "http://"+p.metrics+"/metrics")
	tr.kmsctl(t, nil, "check", "--socket", sock)
	tr.kmsctl(t, nil, "keys", "disable", "--keystore", uri, "--force", first)
	tr.kmsctl(t, nil, "keys", "enable", "--keystore", uri, first)
	tr.kmsctl(t, nil, "keys", "disable", "--keystore", uri, "--force", first)
	tr.kmsctl(t, nil, "keys", "destroy", "--keystore", uri, "--force", "--yes", first)
	tr.stop(t, p, "keywarden")

	// A wrong PIN in the file: refused, and neither PIN is printed.
	wrong := "kw-wrong-pin-" + hex.EncodeToString(tr.random("wrong PIN (hex part)", 8))
	tr.secret("wrong PIN", []byte(wrong))
	if err := os.WriteFile(pinFile, []byte(wrong+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tr.run(t, true, nil, "kmsctl", "keys", "list", "--keystore", uri)
	tr.run(t, true, nil, "keywarden", "--listen", "unix://"+filepath.Join(t.TempDir(), "k.sock"), "--keystore", uri,
		"--metrics-addr", "", "--log-level", "debug")
}

func testNoSecretVault(t *testing.T) {
	addr, root := os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN")
	if addr == "" || root == "" {
		requireOrSkip(t, "KEYWARDEN_REQUIRE_VAULT", `no Vault dev server: VAULT_ADDR and VAULT_TOKEN are not set (eval "$(test/keystores/servers.sh start vault)")`)
	}
	tr := &transcript{}
	defer tr.check(t)
	tr.secret("Vault root token", []byte(root))
	cfg := vaultapi.DefaultConfig()
	cfg.Address = addr
	admin, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin.SetToken(root)
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	mount := "kw-logs-" + hex.EncodeToString(suffix)
	t.Cleanup(func() { vaulttransit.Teardown(admin, mount, mount) })
	if err := vaulttransit.Setup(admin, mount, mount, true); err != nil {
		t.Fatal(err)
	}
	token := "kw-vault-token-" + hex.EncodeToString(tr.random("Vault token (hex part)", 12))
	tr.secret("Vault token", []byte(token))
	if _, err := admin.Auth().Token().Create(&vaultapi.TokenCreateRequest{ID: token, Policies: []string{mount}, TTL: "1h"}); err != nil {
		t.Fatalf("create token: %v", err)
	}
	t.Cleanup(func() { _ = admin.Auth().Token().RevokeTree(token) })
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(addr, "http://")
	uri := fmt.Sprintf("hcvault://%s/%s/keys/keywarden?tls=off&token-file=%s&key-id-ttl=1s", host, mount, tokenFile)

	tr.kmsctl(t, nil, "keys", "list", "--keystore", uri)
	p := start(t, uri, "")
	sock := "unix://" + p.sock
	tr.rpcs(t, p, "vault round 1")
	second := keyIDs(t, tr.kmsctl(t, nil, "keys", "add", "--keystore", uri, "-o", "json"))[0]
	waitKeyID(t, p, second)
	tr.rpcs(t, p, "vault round 2")
	tr.kmsctl(t, nil, "status", "--socket", sock, "--metrics-url", "http://"+p.metrics+"/metrics")
	tr.kmsctl(t, nil, "check", "--socket", sock)
	tr.kmsctl(t, nil, "keys", "list", "--keystore", uri, "-o", "json")
	tr.stop(t, p, "keywarden")

	// A revoked token: refused, and the token is not printed.
	bad := "kw-bad-token-" + hex.EncodeToString(tr.random("bad Vault token (hex part)", 12))
	tr.secret("bad Vault token", []byte(bad))
	if err := os.WriteFile(tokenFile, []byte(bad+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tr.run(t, true, nil, "kmsctl", "keys", "list", "--keystore", uri)
}

//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	vaultapi "github.com/hashicorp/vault/api"
	lkmsconfig "github.com/nsmithuk/local-kms/src/config"
	lkmsdata "github.com/nsmithuk/local-kms/src/data"
	lkmshandler "github.com/nsmithuk/local-kms/src/handler"
	"github.com/sirupsen/logrus"

	"github.com/keywarden/keywarden/test/e2e/cluster"
	"github.com/keywarden/keywarden/test/keystores/localkms"
	"github.com/keywarden/keywarden/test/keystores/vaulttransit"
)

// keystoreCase is one real keystore the scenario runs keywarden on.
type keystoreCase struct {
	// backend is the keystore's label in keywarden's metrics.
	backend string
	ks      *cluster.Keyset
	// first is the key_id of the root key version the keystore starts with.
	first string
	// rotate makes a new root key version primary through the keystore's
	// own management (kmsctl, or the provider's API) and returns its
	// key_id.
	rotate func(ctx context.Context) (string, error)
	// decryptedUnder, if set, reports whether the keystore server was
	// asked since mark to decrypt under keyID: evidence from the server's
	// side that keywarden really went to it. (keywarden's health probe
	// decrypts under the current key every key-id-ttl; nothing but an
	// unwrap decrypts under the old one.)
	mark           func()
	decryptedUnder func(keyID string) bool
}

// TestKeystores runs keywarden on each real keystore other than the file
// keyset, under the real kube-apiserver and etcd: PKCS#11 on a SoftHSM2
// token, Vault Transit on a Vault dev server, and AWS KMS on local-kms. For
// each: Secrets are stored as KMS v2 values under the keystore's key_id;
// the root key rotates through the keystore's own management and new
// writes carry the new key_id while old Secrets still read; then a cold
// start (kube-apiserver stopped, keywarden killed and started again, the
// apiserver started) decrypts every Secret through the keystore, the old
// version included.
func TestKeystores(t *testing.T) {
	tools := cluster.MustTools(t)
	t.Run("pkcs11", func(t *testing.T) { testKeystore(t, softHSMKeystore(t, tools)) })
	t.Run("vault", func(t *testing.T) { testKeystore(t, vaultKeystore(t, tools)) })
	t.Run("aws", func(t *testing.T) { testKeystore(t, awsKeystore(t, tools)) })
}

func testKeystore(t *testing.T, kc keystoreCase) {
	begin := time.Now()
	c := cluster.Start(t, cluster.Options{Keyset: kc.ks})
	ctx := testCtx(t, 4*time.Minute)
	a, kw := c.APIServer, c.Keywarden
	dStart := time.Since(begin)

	st, err := kw.Status(ctx)
	if err != nil || st.Healthz != "ok" || st.KeyID == "" {
		t.Fatalf("Status = %+v, %v; want healthy with a key_id", st, err)
	}
	k1 := st.KeyID
	if k1 != kc.first {
		t.Fatalf("Status key_id %q, want the keystore's first version %q", k1, kc.first)
	}

	const nsOld, nsNew, n = "ks-old", "ks-new", 20
	ensureNamespace(t, ctx, a, nsOld)
	ensureNamespace(t, ctx, a, nsNew)
	old := putSecrets(t, ctx, a, nsOld, n)
	assertSealed(t, ctx, c.Etcd, c.Provider, secretKey(nsOld, "s-00000"), []byte(old["s-00000"]))
	if ids := storedKeyIDs(t, ctx, c, "/registry/secrets/"+nsOld+"/"); ids[k1] != n || len(ids) != 1 {
		t.Fatalf("stored key_ids %v, want %d under %s", ids, n, k1)
	}

	// Rotate through the keystore itself.
	rot := time.Now()
	k2, err := kc.rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k2 == k1 {
		t.Fatalf("rotation kept key_id %s", k1)
	}
	dStatus := eventually(t, 30*time.Second, 200*time.Millisecond, "Status key_id "+k2, func() error {
		st, err := kw.Status(ctx)
		if err == nil && (st.KeyID != k2 || st.Healthz != "ok") {
			err = fmt.Errorf("Status %+v", st)
		}
		return err
	})
	dWrite := waitForWriteKeyID(t, ctx, c.Etcd, a, c.Provider, nsNew, k2)
	dRotate := time.Since(rot)
	newer := putSecrets(t, ctx, a, nsNew, n)
	assertSealed(t, ctx, c.Etcd, c.Provider, secretKey(nsNew, "s-00000"), []byte(newer["s-00000"]))
	if ids := storedKeyIDs(t, ctx, c, "/registry/secrets/"+nsNew+"/"); ids[k2] != n+1 || len(ids) != 1 {
		t.Fatalf("stored key_ids after rotation %v, want %d (and the canary) under %s", ids, n, k2)
	}
	if ids := storedKeyIDs(t, ctx, c, "/registry/secrets/"+nsOld+"/"); ids[k1] != n || len(ids) != 1 {
		t.Fatalf("old secrets' key_ids %v, want all %d still under %s", ids, n, k1)
	}
	readAll(t, ctx, a, nsOld, old)

	// Cold start: nothing cached anywhere. The apiserver decrypts every
	// seed as it fills its watch cache, and keywarden must unwrap the
	// local KEKs under k1 (no longer primary) and k2 through the keystore.
	cold := time.Now()
	a.Stop()
	kw.Kill()
	if kc.mark != nil {
		kc.mark()
	}
	if err := kw.Start(); err != nil {
		t.Fatal(err)
	}
	dReady, err := a.Start()
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, ctx, a, nsOld, old)
	readAll(t, ctx, a, nsNew, newer)
	m, err := kw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cnt := m.Counts()
	unwrapsOK := m.Sum(cluster.MetricKeystoreOpCount, "backend", kc.backend, "op", "unwrap", "result", "ok")
	if cnt.DecryptFailed != 0 || cnt.DecryptOK == 0 || unwrapsOK < 2 || unwrapsOK != cnt.Unwraps {
		t.Fatalf("after the cold start: %+v, %v successful %s unwraps; want Decrypts, none failed, and at least two unwraps (k1's and k2's local KEKs), all by %s",
			cnt, unwrapsOK, kc.backend, kc.backend)
	}
	if kc.decryptedUnder != nil {
		for _, k := range []string{k1, k2} {
			if !kc.decryptedUnder(k) {
				t.Errorf("the keystore server was not asked to decrypt under %s after the restart", k)
			}
		}
	}
	dCold := time.Since(cold)

	// And the restarted keywarden wraps through the keystore too.
	v := unique("after")
	if err := putSecret(ctx, a, nsNew, "after-restart", map[string][]byte{"v": []byte(v)}); err != nil {
		t.Fatal(err)
	}
	if obj := assertSealed(t, ctx, c.Etcd, c.Provider, secretKey(nsNew, "after-restart"), []byte(v)); obj.KeyID != k2 {
		t.Fatalf("write after the restart stored under %q, want %q", obj.KeyID, k2)
	}
	t.Logf("%s: cluster up in %s; rotation %s → %s: Status in %s, apiserver writes %s later (%s in all); "+
		"cold start %s (apiserver /readyz %s, %v Decrypts, %v keystore unwraps); %s in all",
		kc.backend, dStart.Round(100*time.Millisecond), k1, k2, dStatus.Round(10*time.Millisecond),
		dWrite.Round(100*time.Millisecond), dRotate.Round(100*time.Millisecond), dCold.Round(100*time.Millisecond),
		dReady.Round(100*time.Millisecond), cnt.DecryptOK, cnt.Unwraps, time.Since(begin).Round(100*time.Millisecond))
}

// requireOrSkip skips t with why, or fails it if env is set: CI sets
// KEYWARDEN_REQUIRE_SOFTHSM and KEYWARDEN_REQUIRE_VAULT, so a missing
// keystore there is a failure, never a silent skip.
func requireOrSkip(t *testing.T, env, why string) {
	t.Helper()
	if os.Getenv(env) != "" {
		t.Fatalf("%s is set, but %s", env, why)
	}
	t.Skipf("%s (set %s=1 to make this a failure)", why, env)
}

// softhsmModules are where distributions install the SoftHSM2 module.
var softhsmModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// softHSMKeystore initializes a SoftHSM2 token in a directory of its own
// (SOFTHSM2_CONF, given to keywarden and kmsctl), with the user PIN in a
// 0600 file, and creates the first root key version with `kmsctl keys
// init`. Rotation is `kmsctl keys add` then `kmsctl keys promote`.
func softHSMKeystore(t *testing.T, tools cluster.Tools) keystoreCase {
	ks := softHSMToken(t, tools)
	v1, err := ks.Init(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return keystoreCase{backend: "pkcs11", ks: ks, first: v1.KeyID, rotate: func(ctx context.Context) (string, error) {
		v, err := ks.Add(ctx)
		if err != nil {
			return "", err
		}
		if v.Primary {
			return "", fmt.Errorf("keys add made %s primary at once", v.KeyID)
		}
		return v.KeyID, ks.Promote(ctx, v.KeyID)
	}}
}

// softHSMToken initialises a SoftHSM2 token of its own (a config, token
// directory and PIN file in a temporary directory) and returns the pkcs11
// keystore on it, with no root key version yet (Init makes one).
func softHSMToken(t *testing.T, tools cluster.Tools) *cluster.Keyset {
	const require = "KEYWARDEN_REQUIRE_SOFTHSM"
	module := ""
	for _, p := range softhsmModules {
		if _, err := os.Stat(p); err == nil {
			module = p
			break
		}
	}
	util, err := exec.LookPath("softhsm2-util")
	if module == "" || err != nil {
		requireOrSkip(t, require, fmt.Sprintf("SoftHSM2 is not installed: need libsofthsm2.so in one of %v and softhsm2-util on PATH (apt-get install softhsm2)", softhsmModules))
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	conf := filepath.Join(dir, "softhsm2.conf")
	pinFile := filepath.Join(dir, "pin")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	const pin = "keywarden-e2e-user"
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := "SOFTHSM2_CONF=" + conf
	cmd := exec.Command(util, "--init-token", "--free", "--label", "kw-e2e", "--so-pin", "keywarden-e2e-so", "--pin", pin)
	cmd.Env = append(os.Environ(), env)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v: %s", err, out)
	}
	uri := fmt.Sprintf("pkcs11:token=kw-e2e;object=keywarden-root?module-path=%s&pin-source=file:%s", module, pinFile)
	return cluster.NewKeystore(tools, uri, env)
}

// vaultKeystore mounts a Transit engine of its own on the Vault dev server
// that VAULT_ADDR and VAULT_TOKEN (a root token) name, creates an
// aes256-gcm96 key, and gives keywarden a token file with the policy
// docs/keystores/vault.md documents plus kmsctl's rotate path. Rotation is
// `kmsctl keys add` (Transit rotate: the new version is primary at once).
func vaultKeystore(t *testing.T, tools cluster.Tools) keystoreCase {
	const require = "KEYWARDEN_REQUIRE_VAULT"
	addr, root := os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN")
	if addr == "" || root == "" {
		requireOrSkip(t, require, `no Vault dev server: VAULT_ADDR and VAULT_TOKEN are not set (eval "$(test/keystores/servers.sh start vault)")`)
	}
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "http" || net.ParseIP(u.Hostname()) == nil || !net.ParseIP(u.Hostname()).IsLoopback() {
		t.Fatalf("VAULT_ADDR %q: want http://<loopback IP>:<port>, a dev server", addr)
	}
	cfg := vaultapi.DefaultConfig()
	cfg.Address = addr
	admin, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin.SetToken(root)
	if _, err := admin.Sys().Health(); err != nil {
		requireOrSkip(t, require, fmt.Sprintf("the Vault dev server at %s does not answer: %v", addr, err))
	}
	mount := "kw-e2e-" + strings.ToLower(unique("m")[2:10])
	t.Cleanup(func() { vaulttransit.Teardown(admin, mount, mount) })
	if err := vaulttransit.Setup(admin, mount, mount, true); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{mount}, TTL: "1h"})
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	t.Cleanup(func() { _ = admin.Auth().Token().RevokeTree(tok.Auth.ClientToken) })
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(tok.Auth.ClientToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// key-id-ttl=1s: keywarden reads the key (and so a rotation) within a
	// second, as --check-interval 1s does for the other keystores.
	uri := fmt.Sprintf("hcvault://%s/%s/keys/keywarden?tls=off&token-file=%s&key-id-ttl=1s", u.Host, mount, tokenFile)
	ks := cluster.NewKeystore(tools, uri)
	first, err := ks.Primary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return keystoreCase{backend: "vault", ks: ks, first: first, rotate: func(ctx context.Context) (string, error) {
		v, err := ks.Add(ctx)
		if err != nil {
			return "", err
		}
		if !v.Primary {
			return "", fmt.Errorf("vault keys add returned %+v, want the new version primary", v)
		}
		return v.KeyID, nil
	}}
}

// The account and region local-kms answers for.
const (
	localKMSRegion  = "eu-west-1"
	localKMSAccount = "111122223333"
)

// awsKeystore serves local-kms (a real AWS KMS emulator) from this test
// process on a 127.0.0.1 listener, creates a key and an alias to it, and
// points keywarden at the alias with the endpoint= parameter and static
// credentials in its environment. Rotation is what docs/keystores/aws.md
// teaches: a new key, and the alias moved to it.
func awsKeystore(t *testing.T, tools cluster.Tools) keystoreCase {
	lk := startLocalKMS(t)
	ctx := context.Background()
	newKey := func(ctx context.Context) (string, error) {
		out, err := lk.admin.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("keywarden e2e root")})
		if err != nil {
			return "", fmt.Errorf("local-kms CreateKey: %w", err)
		}
		return *out.KeyMetadata.Arn, nil
	}
	k1, err := newKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const alias = "alias/keywarden-e2e"
	if _, err := lk.admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(k1)}); err != nil {
		t.Fatalf("local-kms CreateAlias: %v", err)
	}
	dir := t.TempDir()
	// Credentials for the SDK's default chain, and nothing from this
	// machine's ~/.aws or instance metadata.
	env := []string{
		"AWS_ACCESS_KEY_ID=AKIDKEYWARDENE2E",
		"AWS_SECRET_ACCESS_KEY=keywarden-e2e",
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_CONFIG_FILE=" + filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(dir, "credentials"),
		"AWS_EC2_METADATA_DISABLED=true",
	}
	uri := fmt.Sprintf("aws-kms://arn:aws:kms:%s:%s:%s?endpoint=%s&key-id-ttl=1s", localKMSRegion, localKMSAccount, alias, lk.endpoint)
	return keystoreCase{
		backend: "awskms",
		ks:      cluster.NewKeystore(tools, uri, env...),
		first:   k1,
		rotate: func(ctx context.Context) (string, error) {
			k2, err := newKey(ctx)
			if err != nil {
				return "", err
			}
			_, err = lk.admin.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(k2)})
			return k2, err
		},
		mark:           lk.resetDecrypts,
		decryptedUnder: lk.decryptedUnder,
	}
}

// localKMS is local-kms served by this test process.
type localKMS struct {
	endpoint string
	admin    *kms.Client

	mu       sync.Mutex
	decrypts map[string]int // Decrypt requests by KeyId since the last reset
}

func (l *localKMS) resetDecrypts() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.decrypts = map[string]int{}
}

func (l *localKMS) decryptedUnder(keyID string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.decrypts[keyID] > 0
}

// startLocalKMS serves local-kms's request handlers, with its LevelDB store
// in a temporary directory and its log in a file there (printed if the test
// fails), on a 127.0.0.1 listener until the test ends. Only the calls
// keywarden and this test make are routed.
func startLocalKMS(t *testing.T) *localKMS {
	dir := t.TempDir()
	lkmsconfig.AWSRegion = localKMSRegion
	lkmsconfig.AWSAccountId = localKMSAccount
	lkmsconfig.DatabasePath = filepath.Join(dir, "db")
	db := lkmsdata.NewDatabase(lkmsconfig.DatabasePath)
	logPath := filepath.Join(dir, "local-kms.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	logger := logrus.New()
	logger.Out = logFile
	logger.Formatter = &logrus.TextFormatter{DisableColors: true, FullTimestamp: true}

	l := &localKMS{decrypts: map[string]int{}}
	handle := func(w http.ResponseWriter, r *http.Request) {
		target := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
		if r.Method != http.MethodPost || !strings.Contains(r.Header.Get("Content-Type"), "json") {
			http.Error(w, "want a POST of JSON", http.StatusBadRequest)
			return
		}
		if target == "Decrypt" {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			var in struct{ KeyId string }
			if json.Unmarshal(body, &in) == nil {
				l.mu.Lock()
				l.decrypts[in.KeyId]++
				l.mu.Unlock()
			}
		}
		resp, ok := localkms.Route(lkmshandler.NewRequestHandler(r, logger, db), target)
		if !ok {
			http.Error(w, "local-kms in the e2e suite does not route "+target, http.StatusNotImplemented)
			return
		}
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(resp.Code)
		_, _ = io.WriteString(w, resp.Body)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(handle), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		db.Close()
		_ = logFile.Close()
		if t.Failed() {
			t.Logf("--- last lines of local-kms (%s):\n%s", logPath, cluster.Tail(logPath, 40))
		}
	})
	l.endpoint = "http://" + ln.Addr().String()
	l.admin = kms.NewFromConfig(aws.Config{
		Region:      localKMSRegion,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDKEYWARDENE2E", "keywarden-e2e", ""),
	}, func(o *kms.Options) { o.BaseEndpoint = aws.String(l.endpoint) })
	return l
}

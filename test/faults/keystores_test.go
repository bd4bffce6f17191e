package faults

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	vaultapi "github.com/hashicorp/vault/api"
	lkmsconfig "github.com/nsmithuk/local-kms/src/config"
	lkmsdata "github.com/nsmithuk/local-kms/src/data"
	lkmshandler "github.com/nsmithuk/local-kms/src/handler"
	"github.com/sirupsen/logrus"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/test/keystores/localkms"
)

// cellKeystore is one cell's own root key: nothing a fault does to it
// reaches another cell.
type cellKeystore struct {
	// uri is what keywarden opens (through the fault proxy where there is
	// one).
	uri string
	// proxy is nil for keystores with no network between keywarden and
	// the key.
	proxy *proxy
	// revoke revokes keywarden's credentials; removeToken removes the
	// PKCS#11 token; retire makes a new root version primary and disables
	// (destroy: and destroys) the one keywarden was using. Nil where the
	// fault is n/a.
	revoke      func(t *testing.T)
	removeToken func(t *testing.T)
	retire      func(t *testing.T, destroy bool)
}

// keystoreKind is one keystore of the matrix.
type keystoreKind struct {
	name string
	// require names the variable that makes a missing keystore a failure.
	require string
	// sequential: its cells must not run at the same time.
	sequential bool
	// missing says why the keystore cannot run here ("" if it can).
	missing func() string
	// na gives the footnote of every fault that does not apply.
	na map[fault]string
	// once lists the faults whose cell cannot be measured a second time
	// (it changes shared state for good: a token's PIN, a token itself).
	once    map[fault]bool
	newCell func(t *testing.T, f fault) *cellKeystore
}

var cellN atomic.Int64

func nextName(prefix string) string { return fmt.Sprintf("%s%d", prefix, cellN.Add(1)) }

// Footnotes, shared by the keystores they apply to.
const (
	naLocal      = "The keyset is a local file that keywarden reads itself: there is no network between them to hang, refuse, delay or throttle."
	naNoCreds    = "The file keystore has no credentials: access is the keyset file's mode and owner, checked when it is opened."
	naPKCS11Only = "Only PKCS#11 has tokens."
	naInProcess  = "The PKCS#11 module is a library inside keywarden and SoftHSM2 is local: there is no network to hang, refuse, delay or throttle. (A network HSM's client library can hang; SoftHSM2 gives no way to make it.)"
	naLocalKMS   = "local-kms checks no credentials (any signature is accepted), so a revoked access key cannot be produced; keystore/awskms classifies AccessDeniedException and UnrecognizedClientException as PermissionDenied."
)

func retireWith(ctx context.Context, t *testing.T, m keystore.Manager, destroy bool) {
	t.Helper()
	vs, err := m.List(ctx)
	if err != nil {
		t.Fatalf("list versions: %v", err)
	}
	i := slices.IndexFunc(vs, func(v keystore.KeyVersion) bool { return v.Primary })
	if i < 0 {
		t.Fatalf("no primary version in %+v", vs)
	}
	old := vs[i].KeyID
	nv, err := m.Add(ctx)
	if err != nil {
		t.Fatalf("add a version: %v", err)
	}
	if err := m.Promote(ctx, nv.KeyID); err != nil {
		t.Fatalf("promote %s: %v", nv.KeyID, err)
	}
	if err := m.Disable(ctx, old); err != nil {
		t.Fatalf("disable %s: %v", old, err)
	}
	if destroy {
		if err := m.Destroy(ctx, old); err != nil {
			t.Fatalf("destroy %s: %v", old, err)
		}
	}
}

func openManager(t *testing.T, uri string) keystore.Manager {
	t.Helper()
	b, err := byuri.Open(context.Background(), uri)
	if err != nil {
		t.Fatalf("open %s for management: %v", redact(uri), err)
	}
	t.Cleanup(func() { _ = b.Close() })
	m, ok := b.(keystore.Manager)
	if !ok {
		t.Fatalf("%s keystore has no management API", b.Name())
	}
	return m
}

// redact keeps a URI's scheme and path for a message; the test's URIs hold
// no secret, but a habit is a habit.
func redact(uri string) string {
	s, _, _ := strings.Cut(uri, "?")
	return s
}

// ---- file ----

var fileKeystore = keystoreKind{
	name:    "file",
	missing: func() string { return "" },
	na: map[fault]string{
		fHang: naLocal, fRefused: naLocal, fLatency: naLocal, fThrottled: naLocal, fServerError: naLocal,
		fCredsRevoked: naNoCreds, fTokenRemoved: naPKCS11Only, fHangPastAge: naLocal,
	},
	newCell: func(t *testing.T, _ fault) *cellKeystore {
		path := filepath.Join(t.TempDir(), "keyset.json")
		uri := "file://" + path
		if _, err := byuri.Init(context.Background(), uri); err != nil {
			t.Fatalf("init keyset: %v", err)
		}
		return &cellKeystore{
			uri: uri,
			retire: func(t *testing.T, destroy bool) {
				retireWith(context.Background(), t, openManager(t, uri), destroy)
			},
		}
	},
}

// ---- PKCS#11 (SoftHSM2) ----

const (
	hsmSOPIN   = "keywarden-faults-so"
	hsmUserPIN = "keywarden-faults-user"
)

var hsm struct {
	module  string // "" if SoftHSM2 is not installed
	why     string
	pinFile string
	// tokens are made before this process loads the module (it would not
	// see later ones): one shared, one whose PIN a cell changes, one a
	// cell removes.
	shared, pin, removable string
	removableDir           string
}

var softhsmPaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

func setupSoftHSM(dir string) error {
	for _, p := range softhsmPaths {
		if fileExists(p) {
			hsm.module = p
			break
		}
	}
	util, _ := exec.LookPath("softhsm2-util") // "" if it is not on PATH
	if hsm.module == "" || util == "" {
		// Not an error here: the pkcs11 cells skip, or fail under
		// KEYWARDEN_REQUIRE_SOFTHSM, with this reason.
		hsm.module = ""
		hsm.why = fmt.Sprintf("SoftHSM2 is not installed: need libsofthsm2.so in one of %v and softhsm2-util on PATH (apt-get install softhsm2)", softhsmPaths)
		return nil
	}
	tokens := filepath.Join(dir, "tokens")
	conf := filepath.Join(dir, "softhsm2.conf")
	hsm.pinFile = filepath.Join(dir, "pin")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		return err
	}
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(hsm.pinFile, []byte(hsmUserPIN+"\n"), 0o600); err != nil {
		return err
	}
	// Inherited by every keywarden this process starts.
	os.Setenv("SOFTHSM2_CONF", conf)
	hsm.shared, hsm.pin, hsm.removable = "kw-faults", "kw-faults-pin", "kw-faults-rm"
	for _, label := range []string{hsm.shared, hsm.pin, hsm.removable} {
		before, _ := os.ReadDir(tokens)
		out, err := exec.Command(util, "--init-token", "--free", "--label", label, "--so-pin", hsmSOPIN, "--pin", hsmUserPIN).CombinedOutput()
		if err != nil {
			return fmt.Errorf("softhsm2-util --init-token %s: %v: %s", label, err, out)
		}
		after, _ := os.ReadDir(tokens)
		for _, e := range after {
			if !slices.ContainsFunc(before, func(o os.DirEntry) bool { return o.Name() == e.Name() }) && label == hsm.removable {
				hsm.removableDir = filepath.Join(tokens, e.Name())
			}
		}
	}
	if hsm.removableDir == "" {
		return fmt.Errorf("no token directory appeared for %s", hsm.removable)
	}
	return nil
}

func hsmURI(token, object string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s", token, object, hsm.module, hsm.pinFile)
}

var pkcs11Keystore = keystoreKind{
	name:       "pkcs11",
	require:    "KEYWARDEN_REQUIRE_SOFTHSM",
	sequential: true,
	missing:    func() string { return hsm.why },
	na: map[fault]string{
		fHang: naInProcess, fRefused: naInProcess, fLatency: naInProcess, fThrottled: naInProcess, fServerError: naInProcess,
		fHangPastAge: naInProcess,
	},
	once: map[fault]bool{fCredsRevoked: true, fTokenRemoved: true},
	newCell: func(t *testing.T, f fault) *cellKeystore {
		token := hsm.shared
		switch f {
		case fCredsRevoked:
			token = hsm.pin
		case fTokenRemoved:
			token = hsm.removable
		}
		uri := hsmURI(token, nextName("root"))
		if _, err := byuri.Init(context.Background(), uri); err != nil {
			t.Fatalf("init PKCS#11 key: %v", err)
		}
		return &cellKeystore{
			uri: uri,
			retire: func(t *testing.T, destroy bool) {
				retireWith(context.Background(), t, openManager(t, uri), destroy)
			},
			// C_SetPIN: the PIN in keywarden's pin file is no longer the
			// user PIN. Sessions already logged in stay logged in (PKCS#11
			// ties login to the session, not to each call).
			revoke: func(t *testing.T) { setPIN(t, token, hsmUserPIN, "keywarden-faults-changed") },
			// The token's directory gone: what a pulled USB token or an HSM
			// partition deleted under a running client looks like to
			// SoftHSM2's file store.
			removeToken: func(t *testing.T) {
				if err := os.RemoveAll(hsm.removableDir); err != nil {
					t.Fatal(err)
				}
			},
		}
	},
}

// ---- AWS KMS (local-kms) ----

const (
	awsRegion  = "eu-west-1"
	awsAccount = "111122223333"
)

var lk struct {
	endpoint string
	admin    *awskms.Client
}

// setupLocalKMS serves local-kms (a real AWS KMS emulator: its handlers
// and LevelDB store) in this process on 127.0.0.1, as keystore/awskms's
// tests do.
func setupLocalKMS(dir string) (func(), error) {
	lkmsconfig.AWSRegion = awsRegion
	lkmsconfig.AWSAccountId = awsAccount
	lkmsconfig.DatabasePath = filepath.Join(dir, "local-kms-db")
	db := lkmsdata.NewDatabase(lkmsconfig.DatabasePath)
	logf := logTo(dir, "local-kms.log")
	logger := logrus.New()
	logger.Out = logf
	handle := func(w http.ResponseWriter, r *http.Request) {
		resp, ok := localkms.Route(lkmshandler.NewRequestHandler(r, logger, db), r.Header.Get("X-Amz-Target"))
		if !ok {
			http.Error(w, "not routed here", http.StatusNotImplemented)
			return
		}
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(resp.Code)
		_, _ = w.Write([]byte(resp.Body))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(handle), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	lk.endpoint = "http://" + ln.Addr().String()
	lk.admin = awskms.NewFromConfig(aws.Config{
		Region:      awsRegion,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDKEYWARDENFAULTS", "keywarden-faults", ""),
	}, func(o *awskms.Options) { o.BaseEndpoint = aws.String(lk.endpoint) })
	return func() { _ = srv.Close(); db.Close(); _ = logf.Close() }, nil
}

var awsKeystore = keystoreKind{
	name:    "aws",
	missing: func() string { return "" },
	na:      map[fault]string{fCredsRevoked: naLocalKMS, fTokenRemoved: naPKCS11Only},
	newCell: func(t *testing.T, _ fault) *cellKeystore {
		ctx := context.Background()
		newKey := func() string {
			out, err := lk.admin.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String("keywarden faults")})
			if err != nil {
				t.Fatalf("local-kms CreateKey: %v", err)
			}
			return *out.KeyMetadata.Arn
		}
		k1 := newKey()
		alias := "alias/" + nextName("kw-faults-")
		if _, err := lk.admin.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(k1)}); err != nil {
			t.Fatalf("local-kms CreateAlias: %v", err)
		}
		p := newProxy(t, lk.endpoint, awsFlavor)
		uri := fmt.Sprintf("aws-kms://arn:aws:kms:%s:%s:%s?endpoint=http://%s&key-id-ttl=%s", awsRegion, awsAccount, alias, p.addr, keyIDTTL)
		return &cellKeystore{
			uri:   uri,
			proxy: p,
			// AWS's own rotation by alias (docs/keystores/aws.md): a new key,
			// the alias moved to it; then the old key disabled, or
			// scheduled for deletion (KMS deletes only after a waiting
			// period; until then the key is PendingDeletion and refuses
			// every use).
			retire: func(t *testing.T, destroy bool) {
				k2 := newKey()
				if _, err := lk.admin.UpdateAlias(ctx, &awskms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(k2)}); err != nil {
					t.Fatalf("UpdateAlias: %v", err)
				}
				if destroy {
					if _, err := lk.admin.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: aws.String(k1), PendingWindowInDays: aws.Int32(7)}); err != nil {
						t.Fatalf("ScheduleKeyDeletion: %v", err)
					}
					return
				}
				if _, err := lk.admin.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: aws.String(k1)}); err != nil {
					t.Fatalf("DisableKey: %v", err)
				}
			},
		}
	},
}

// ---- Vault Transit (dev server) ----

var vault struct {
	why   string
	addr  string // host:port
	admin *vaultapi.Client
	// rootTokenFile lets the management API (the test's, not keywarden's)
	// rotate, configure and trim keys.
	rootTokenFile string
	dir           string
}

// vaultBin is the Vault that test/vault/tools/build.sh installs (or
// KEYWARDEN_VAULT_BIN).
func vaultBin() string {
	if b := os.Getenv("KEYWARDEN_VAULT_BIN"); b != "" {
		return b
	}
	b, _ := filepath.Abs("../vault/tools/bin/vault")
	return b
}

// setupVault starts a Vault dev server of this test's own on a free
// 127.0.0.1 port, with a Transit mount and the policy docs/keystores/vault.md
// gives keywarden.
func setupVault(dir string) func() {
	bin := vaultBin()
	if !fileExists(bin) {
		vault.why = fmt.Sprintf("no vault binary at %s (bash test/vault/tools/build.sh, or set KEYWARDEN_VAULT_BIN)", bin)
		return func() {}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		vault.why = err.Error()
		return func() {}
	}
	vault.addr = ln.Addr().String()
	ln.Close()
	home := filepath.Join(dir, "vault-home")
	_ = os.Mkdir(home, 0o700)
	logf := logTo(dir, "vault.log")
	cmd := exec.Command(bin, "server", "-dev", "-dev-root-token-id=root", "-dev-no-store-token", "-dev-listen-address="+vault.addr)
	cmd.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with this process, even if it dies before its cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		vault.why = fmt.Sprintf("start %s: %v", bin, err)
		return func() {}
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = logf.Close() }
	fail := func(format string, a ...any) func() {
		vault.why = fmt.Sprintf(format, a...) + "; log in " + filepath.Join(dir, "vault.log")
		stop()
		return func() {}
	}
	cfg := vaultapi.DefaultConfig()
	cfg.Address = "http://" + vault.addr
	admin, err := vaultapi.NewClient(cfg)
	if err != nil {
		return fail("vault client: %v", err)
	}
	admin.SetToken("root")
	up := false
	for range 200 {
		if _, err := admin.Sys().Health(); err == nil {
			up = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !up {
		return fail("the vault dev server did not answer in 10s")
	}
	if err := admin.Sys().Mount("transit", &vaultapi.MountInput{Type: "transit"}); err != nil {
		return fail("mount transit: %v", err)
	}
	if err := admin.Sys().PutPolicy("keywarden", `
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
path "transit/keys/*"    { capabilities = ["read"] }
`); err != nil {
		return fail("put policy: %v", err)
	}
	vault.admin = admin
	vault.dir = dir
	vault.rootTokenFile = filepath.Join(dir, "vault-root-token")
	if err := os.WriteFile(vault.rootTokenFile, []byte("root\n"), 0o600); err != nil {
		return fail("%v", err)
	}
	return stop
}

var vaultKeystore = keystoreKind{
	name:    "vault",
	require: "KEYWARDEN_REQUIRE_VAULT",
	missing: func() string { return vault.why },
	na:      map[fault]string{fTokenRemoved: naPKCS11Only},
	newCell: func(t *testing.T, _ fault) *cellKeystore {
		name := nextName("kw")
		if _, err := vault.admin.Logical().Write("transit/keys/"+name, map[string]any{"type": "aes256-gcm96"}); err != nil {
			t.Fatalf("create transit key: %v", err)
		}
		tok, err := vault.admin.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"keywarden"}, TTL: "1h"})
		if err != nil {
			t.Fatalf("create token: %v", err)
		}
		tokenFile := filepath.Join(t.TempDir(), "vault-token")
		if err := os.WriteFile(tokenFile, []byte(tok.Auth.ClientToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p := newProxy(t, "http://"+vault.addr, vaultFlavor)
		query := "?tls=off&key-id-ttl=" + keyIDTTL.String()
		adminURI := fmt.Sprintf("hcvault://%s/transit/keys/%s%s&token-file=%s", vault.addr, name, query, vault.rootTokenFile)
		return &cellKeystore{
			uri:   fmt.Sprintf("hcvault://%s/transit/keys/%s%s&token-file=%s", p.addr, name, query, tokenFile),
			proxy: p,
			revoke: func(t *testing.T) {
				if err := vault.admin.Auth().Token().RevokeTree(tok.Auth.ClientToken); err != nil {
					t.Fatalf("revoke token: %v", err)
				}
			},
			// Transit: rotate, raise min_decryption_version past the old
			// version (disable), trim it (destroy): what kmsctl keys does.
			retire: func(t *testing.T, destroy bool) {
				retireWith(context.Background(), t, openManager(t, adminURI), destroy)
			},
		}
	},
}

// Package rig sets up real root keystores for the benchmarks and their
// tests: a SoftHSM2 token (PKCS#11), AWS KMS emulated by local-kms served in
// this process on a loopback listener, and a Transit key on a Vault dev
// server. Each gives the keystore URI that keywarden's --keystore takes and
// the environment a server process needs to open it. BENCHMARK AND TEST
// ONLY: PINs and tokens are fixed or written to plain files.
package rig

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskmsapi "github.com/aws/aws-sdk-go-v2/service/kms"
	vaultapi "github.com/hashicorp/vault/api"
	lkmsconfig "github.com/nsmithuk/local-kms/src/config"
	lkmsdata "github.com/nsmithuk/local-kms/src/data"
	lkmshandler "github.com/nsmithuk/local-kms/src/handler"
	"github.com/sirupsen/logrus"

	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/test/keystores/localkms"
)

// ErrMissing means a keystore's software is not on this machine (SoftHSM2)
// or its server is not configured (VAULT_ADDR): callers skip it, or fail
// when told it is required.
var ErrMissing = errors.New("keystore server or software missing")

// Keystore is one root keystore, ready: its first key exists.
type Keystore struct {
	// Name is short, for target names: pkcs11, aws, vault.
	Name string
	// URI is what keywarden's --keystore takes.
	URI string
	// Env is what a server process needs in its environment to open URI,
	// as KEY=value.
	Env []string
	// RemoteDecrypts, if not nil, counts the Decrypt requests the keystore
	// server itself has answered (local-kms only: it runs in this process).
	RemoteDecrypts func() int64
	// Remote says whether a call leaves the server process (a network
	// round trip) rather than entering a library (PKCS#11).
	Remote bool

	closers []func() error
}

// Close removes what the rig made on the keystore server and stops what it
// started.
func (k *Keystore) Close() error {
	var errs []error
	for i := len(k.closers) - 1; i >= 0; i-- {
		errs = append(errs, k.closers[i]())
	}
	k.closers = nil
	return errors.Join(errs...)
}

// SoftHSMModulePaths are where distributions install the SoftHSM2 module.
var SoftHSMModulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

const (
	softhsmLabel  = "kwbench"
	softhsmSOPIN  = "kwbench-so"
	softhsmPIN    = "kwbench-user"
	softhsmObject = "root"
)

// SoftHSM makes a SoftHSM2 token in dir (with softhsm2-util) and its first
// root key version (with keywarden's own init). SoftHSM reads its
// configuration from SOFTHSM2_CONF when the module is initialized, and the
// PKCS#11 module is global to a process, so SoftHSM also sets SOFTHSM2_CONF
// in this process's environment: call it once per process, before anything
// here loads the module. Server processes get it from Env.
func SoftHSM(ctx context.Context, dir string) (*Keystore, error) {
	module := ""
	for _, p := range SoftHSMModulePaths {
		if _, err := os.Stat(p); err == nil {
			module = p
			break
		}
	}
	if module == "" {
		return nil, fmt.Errorf("%w: libsofthsm2.so is in none of %v (apt-get install softhsm2)", ErrMissing, SoftHSMModulePaths)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return nil, fmt.Errorf("%w: softhsm2-util: %v", ErrMissing, err)
	}
	tokens := filepath.Join(dir, "softhsm-tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, util, "--init-token", "--free", "--label", softhsmLabel, "--so-pin", softhsmSOPIN, "--pin", softhsmPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("softhsm2-util --init-token: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return nil, err
	}
	// keywarden refuses pin-value=: the PIN goes in a 0600 file.
	pinFile := filepath.Join(dir, "softhsm-pin")
	if err := os.WriteFile(pinFile, []byte(softhsmPIN), 0o600); err != nil {
		return nil, err
	}
	k := &Keystore{
		Name: "pkcs11",
		URI:  fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s", softhsmLabel, softhsmObject, module, pinFile),
		Env:  []string{"SOFTHSM2_CONF=" + conf},
	}
	if _, err := byuri.Init(ctx, k.URI); err != nil {
		return nil, fmt.Errorf("init the SoftHSM root key: %w", err)
	}
	return k, nil
}

// localKMS guards local-kms's package globals (region, account, database
// path): one emulator per process.
var localKMS struct {
	sync.Mutex
	running bool
}

// LocalKMSRegion and LocalKMSAccount are the emulated key's region and
// account.
const (
	LocalKMSRegion  = "eu-west-1"
	LocalKMSAccount = "111122223333"
)

// LocalKMS serves local-kms (github.com/nsmithuk/local-kms, an AWS KMS
// emulator: its request handlers, its LevelDB key store in dir, its AES-GCM
// envelope) on a 127.0.0.1 listener in this process, and creates a
// symmetric key there. The AWS SDK talks to it over HTTP as it would to
// KMS; Env holds static credentials for it (and turns off instance
// metadata lookups). The calls are served through local-kms's own
// handlers (routed by test/keystores/localkms) with a logger that keeps quiet (local-kms logs every call at
// info level). One per process.
func LocalKMS(ctx context.Context, dir string) (*Keystore, error) {
	localKMS.Lock()
	defer localKMS.Unlock()
	if localKMS.running {
		return nil, errors.New("local-kms is already running in this process")
	}
	lkmsconfig.AWSRegion = LocalKMSRegion
	lkmsconfig.AWSAccountId = LocalKMSAccount
	lkmsconfig.DatabasePath = filepath.Join(dir, "local-kms-db")
	db := lkmsdata.NewDatabase(lkmsconfig.DatabasePath)
	log := logrus.New()
	log.SetOutput(os.Stderr)
	log.SetLevel(logrus.ErrorLevel)
	var decrypts atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		target := r.Header.Get("X-Amz-Target")
		if target == "TrentService.Decrypt" {
			decrypts.Add(1)
		}
		resp, ok := localkms.Route(lkmshandler.NewRequestHandler(r, log, db), target)
		if !ok {
			w.WriteHeader(http.StatusNotImplemented)
			return
		}
		w.WriteHeader(resp.Code)
		_, _ = w.Write([]byte(resp.Body))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		db.Close()
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	localKMS.running = true
	endpoint := "http://" + ln.Addr().String()
	k := &Keystore{Name: "aws", Remote: true, RemoteDecrypts: decrypts.Load, Env: []string{
		"AWS_ACCESS_KEY_ID=AKIDKEYWARDENBENCH",
		"AWS_SECRET_ACCESS_KEY=kwbench",
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_EC2_METADATA_DISABLED=true",
	}}
	k.closers = append(k.closers, func() error {
		err := srv.Close()
		db.Close()
		localKMS.Lock()
		localKMS.running = false
		localKMS.Unlock()
		return err
	})
	admin := awskmsapi.NewFromConfig(aws.Config{
		Region:      LocalKMSRegion,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDKEYWARDENBENCH", "kwbench", ""),
	}, func(o *awskmsapi.Options) { o.BaseEndpoint = aws.String(endpoint) })
	out, err := admin.CreateKey(ctx, &awskmsapi.CreateKeyInput{})
	if err != nil {
		_ = k.Close()
		return nil, fmt.Errorf("local-kms CreateKey: %w", err)
	}
	k.URI = "aws-kms://" + aws.ToString(out.KeyMetadata.Arn) + "?endpoint=" + endpoint
	return k, nil
}

// Vault mounts a Transit engine of its own on the Vault dev server at addr
// (a loopback http:// address, as test/keystores/servers.sh starts one),
// creates an aes256-gcm96 key, and writes a token with the least-privilege
// policy docs/keystores/vault.md gives keywarden into dir. rootToken is the
// dev server's root token. Close unmounts the engine.
func Vault(ctx context.Context, addr, rootToken, dir string) (*Keystore, error) {
	if addr == "" || rootToken == "" {
		return nil, fmt.Errorf("%w: VAULT_ADDR and VAULT_TOKEN are not both set (test/keystores/servers.sh start vault)", ErrMissing)
	}
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "http" {
		return nil, fmt.Errorf("VAULT_ADDR %q: want http://127.0.0.1:<port> (a dev server)", addr)
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("VAULT_ADDR %q is not a loopback IP address", addr)
	}
	cfg := vaultapi.DefaultConfig()
	cfg.Address = addr
	admin, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	admin.SetToken(rootToken)
	if _, err := admin.Sys().HealthWithContext(ctx); err != nil {
		return nil, fmt.Errorf("%w: vault at %s: %v", ErrMissing, addr, err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	mount := "kwbench-" + hex.EncodeToString(b)
	if err := admin.Sys().MountWithContext(ctx, mount, &vaultapi.MountInput{Type: "transit"}); err != nil {
		return nil, fmt.Errorf("mount transit: %w", err)
	}
	k := &Keystore{Name: "vault", Remote: true}
	k.closers = append(k.closers, func() error {
		err := admin.Sys().Unmount(mount)
		return errors.Join(err, admin.Sys().DeletePolicy(mount))
	})
	fail := func(err error) (*Keystore, error) {
		_ = k.Close()
		return nil, err
	}
	if _, err := admin.Logical().WriteWithContext(ctx, mount+"/keys/root", map[string]any{"type": "aes256-gcm96"}); err != nil {
		return fail(fmt.Errorf("create key: %w", err))
	}
	policy := strings.ReplaceAll(`
path "MOUNT/encrypt/*" { capabilities = ["update"] }
path "MOUNT/decrypt/*" { capabilities = ["update"] }
path "MOUNT/keys/*"    { capabilities = ["read"] }
`, "MOUNT", mount)
	if err := admin.Sys().PutPolicyWithContext(ctx, mount, policy); err != nil {
		return fail(fmt.Errorf("put policy: %w", err))
	}
	tok, err := admin.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{Policies: []string{mount}, TTL: "4h"})
	if err != nil {
		return fail(fmt.Errorf("create token: %w", err))
	}
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(tok.Auth.ClientToken+"\n"), 0o600); err != nil {
		return fail(err)
	}
	k.URI = "hcvault://" + u.Host + "/" + mount + "/keys/root?tls=off&token-file=" + tokenFile
	return k, nil
}

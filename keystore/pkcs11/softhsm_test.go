//go:build !nopkcs11

package pkcs11

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	p11 "github.com/miekg/pkcs11"
)

// The tests run against a real SoftHSM2. SoftHSM reads SOFTHSM2_CONF once,
// at C_Initialize, and the module is process-global, so TestMain points it at
// a temporary token directory for the whole process, keeps the module
// initialized, and every test makes a token of its own in that directory.

const (
	testSOPIN   = "keywarden-so"
	testUserPIN = "keywarden-user"
	// requireEnv makes a missing SoftHSM fail the run instead of skipping
	// (CI sets it).
	requireEnv = "KEYWARDEN_REQUIRE_SOFTHSM"
)

var softhsm struct {
	module   string // "" if SoftHSM is not installed
	tokenDir string
	mod      *module

	mu sync.Mutex
	n  int
}

// softhsmPaths are where distributions install the SoftHSM2 module.
var softhsmPaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	for _, p := range softhsmPaths {
		if _, err := os.Stat(p); err == nil {
			softhsm.module = p
			break
		}
	}
	if softhsm.module == "" {
		if os.Getenv(requireEnv) != "" {
			fmt.Fprintf(os.Stderr, "%s is set but libsofthsm2.so is in none of %v (apt-get install softhsm2)\n", requireEnv, softhsmPaths)
			return 1
		}
		return m.Run() // every HSM test skips with a message
	}
	dir, err := os.MkdirTemp("", "keywarden-softhsm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	softhsm.tokenDir = filepath.Join(dir, "tokens")
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.Mkdir(softhsm.tokenDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", softhsm.tokenDir)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	softhsm.mod, err = acquireModule(softhsm.module)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load SoftHSM:", err)
		return 1
	}
	defer softhsm.mod.release()
	return m.Run()
}

func requireSoftHSM(tb testing.TB) {
	tb.Helper()
	if softhsm.module == "" {
		tb.Skipf("SoftHSM2 is not installed (apt-get install softhsm2); set %s=1 to make this a failure", requireEnv)
	}
}

// testToken is a freshly initialized SoftHSM token with no objects.
type testToken struct {
	label   string
	dir     string // the token's directory under the token dir
	pinFile string // holds testUserPIN, mode 0600
	uri     string
}

// uriFor names a key label on the token. The PIN comes from a file, as in
// production: the backend refuses pin-value=.
func (tok testToken) uriFor(object string) string {
	return pinURI(tok.label, object, tok.pinFile)
}

func pinURI(token, object, pinFile string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s", token, object, softhsm.module, pinFile)
}

// writePIN writes pin to a new 0600 file and returns its path.
func writePIN(tb testing.TB, pin string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "pin")
	if err := os.WriteFile(p, []byte(pin+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// newToken initializes a token on SoftHSM's free slot through the library
// (softhsm2-util would write it, but this process's SoftHSM would not see it
// until re-initialized).
func newToken(tb testing.TB) testToken {
	tb.Helper()
	requireSoftHSM(tb)
	softhsm.mu.Lock()
	defer softhsm.mu.Unlock()
	softhsm.n++
	label := fmt.Sprintf("kw-test-%d", softhsm.n)
	before, err := os.ReadDir(softhsm.tokenDir)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = softhsm.mod.call(func(c *p11.Ctx) error {
		slots, err := c.GetSlotList(false)
		if err != nil {
			return err
		}
		free, ok := uint(0), false
		for _, s := range slots {
			ti, err := c.GetTokenInfo(s)
			if err == nil && ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
				free, ok = s, true
				break
			}
		}
		if !ok {
			return fmt.Errorf("SoftHSM has no free slot")
		}
		if err := c.InitToken(free, testSOPIN, label); err != nil {
			return fmt.Errorf("C_InitToken: %w", err)
		}
		if slots, err = c.GetSlotList(true); err != nil {
			return err
		}
		for _, s := range slots {
			if ti, err := c.GetTokenInfo(s); err != nil || ti.Label != label {
				continue
			}
			sh, err := c.OpenSession(s, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
			if err != nil {
				return err
			}
			defer func() { _ = c.CloseSession(sh) }()
			if err := c.Login(sh, p11.CKU_SO, testSOPIN); err != nil {
				return fmt.Errorf("SO login: %w", err)
			}
			if err := c.InitPIN(sh, testUserPIN); err != nil {
				return fmt.Errorf("C_InitPIN: %w", err)
			}
			return c.Logout(sh)
		}
		return fmt.Errorf("token %q not found after C_InitToken", label)
	})
	if err != nil {
		tb.Fatalf("create SoftHSM token: %v", err)
	}
	after, err := os.ReadDir(softhsm.tokenDir)
	if err != nil {
		tb.Fatal(err)
	}
	tok := testToken{label: label, pinFile: writePIN(tb, testUserPIN)}
	for _, e := range after {
		if !slices.ContainsFunc(before, func(o os.DirEntry) bool { return o.Name() == e.Name() }) {
			tok.dir = filepath.Join(softhsm.tokenDir, e.Name())
		}
	}
	if tok.dir == "" {
		tb.Fatal("no new token directory after C_InitToken")
	}
	tok.uri = tok.uriFor("root")
	return tok
}

// newBackend makes a token, creates its first root key version and opens it.
func newBackend(tb testing.TB) (*Backend, testToken) {
	tb.Helper()
	tok := newToken(tb)
	ctx := context.Background()
	if _, err := Init(ctx, tok.uri); err != nil {
		tb.Fatalf("Init: %v", err)
	}
	b, err := Open(ctx, tok.uri)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = b.Close() })
	return b, tok
}

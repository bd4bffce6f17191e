package recovery

import (
	"crypto/fips140"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/keywarden/keywarden/keystore"
)

// Under GODEBUG=fips140=only every way to make or read a recovery key is
// refused with ErrFIPSOnly, before any X25519 is touched. Run without
// that setting, the test runs itself again in a child process with it, so
// it is checked on every run.
func TestFIPSOnly(t *testing.T) {
	if !fips140.Enforced() {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFIPSOnly$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "GODEBUG=fips140=only")
		out, err := cmd.CombinedOutput()
		if errors.Is(err, syscall.ENOEXEC) {
			// make test-arm64: an arm64 test binary run by qemu-aarch64-static
			// cannot exec itself without binfmt; make fips covers this mode.
			t.Skipf("cannot re-execute the test binary here (%v): another architecture under an emulator", err)
		}
		if err != nil || !strings.Contains(string(out), "--- PASS: TestFIPSOnly") {
			t.Fatalf("under GODEBUG=fips140=only: %v\n%s", err, out)
		}
		return
	}
	// Files made as a node and an operator outside FIPS-only mode would.
	var pub, priv []byte
	var err error
	fips140.WithoutEnforcement(func() {
		var k *PrivateKey
		if k, err = New(); err != nil {
			return
		}
		if pub, err = k.MarshalPublic(); err != nil {
			return
		}
		priv, err = k.Marshal(nil, fastKDF())
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(); !errors.Is(err, ErrFIPSOnly) || !errors.Is(err, keystore.ErrConfig) {
		t.Errorf("New = %v, want ErrFIPSOnly", err)
	}
	if _, err := ParsePublic(pub); !errors.Is(err, ErrFIPSOnly) {
		t.Errorf("ParsePublic = %v, want ErrFIPSOnly", err)
	}
	if _, err := OpenPublic(write(t, pub, 0o644)); !errors.Is(err, ErrFIPSOnly) {
		t.Errorf("OpenPublic = %v, want ErrFIPSOnly", err)
	}
	if _, err := ParsePrivate(priv, nil); !errors.Is(err, ErrFIPSOnly) {
		t.Errorf("ParsePrivate = %v, want ErrFIPSOnly", err)
	}
}

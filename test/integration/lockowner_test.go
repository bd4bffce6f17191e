package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// keywarden's user, as in the image and the tmpfiles entry.
const nonroot = 65532

// kmsctlAs runs kmsctl as uid:gid nonroot, as the docs' `setpriv --reuid=65532`.
func kmsctlAs(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, "kmsctl"), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nonroot, Gid: nonroot}}
	cmd.Env = append(os.Environ(), "HOME=/")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// keywardenDir is a directory laid out as the tmpfiles entry makes
// /etc/keywarden: 0700, owned by keywarden's user, reachable by it.
func keywardenDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: chowns to uid 65532 and runs kmsctl as it")
	}
	// kmsctl as 65532 must reach the binaries and the directory.
	for _, d := range []string{binDir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	parent := t.TempDir()
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(parent), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "keywarden")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, nonroot, nonroot); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRootRunLeavesUsableLock: a keyset set up and edited as root, then
// handed to keywarden's user as the docs say (chown of the keyset), can be
// edited by that user. Before, the root run left keyset.json.lock root's and
// 0600, and every later kmsctl as 65532 failed with "open lock file:
// permission denied" (issue 12).
func TestRootRunLeavesUsableLock(t *testing.T) {
	dir := keywardenDir(t)
	ks := filepath.Join(dir, "keyset.json")
	uri := "file://" + ks
	kmsctl(t, "keys", "init", "--keystore", uri)
	kmsctl(t, "keys", "add", "--keystore", uri) // as root: takes the lock
	st, err := os.Stat(ks + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Sys().(*syscall.Stat_t); s.Uid != nonroot || s.Gid != nonroot {
		t.Errorf("lock file owned by %d:%d after a root run, want the directory's owner %d:%d", s.Uid, s.Gid, nonroot, nonroot)
	}
	if err := os.Chown(ks, nonroot, nonroot); err != nil {
		t.Fatal(err)
	}
	if out, err := kmsctlAs("keys", "add", "--keystore", uri); err != nil {
		t.Fatalf("kmsctl keys add as %d after a root run: %v\n%s", nonroot, err, out)
	}
	out, err := kmsctlAs("keys", "list", "--keystore", uri)
	if err != nil {
		t.Fatalf("keys list as %d: %v\n%s", nonroot, err, out)
	}
	if n := strings.Count(out, "tink:"); n < 3 {
		t.Errorf("keys list shows %d versions, want 3 (init, add as root, add as %d):\n%s", n, nonroot, out)
	}
}

// TestForeignLockNamesTheFix: a root-owned 0600 lock file that an older
// kmsctl left behind is refused with the file and the chown to run.
func TestForeignLockNamesTheFix(t *testing.T) {
	dir := keywardenDir(t)
	ks := filepath.Join(dir, "keyset.json")
	uri := "file://" + ks
	kmsctl(t, "keys", "init", "--keystore", uri)
	if err := os.Chown(ks, nonroot, nonroot); err != nil {
		t.Fatal(err)
	}
	// Root's and 0600, as an older kmsctl left it (init may have made one).
	_ = os.Remove(ks + ".lock")
	if err := os.WriteFile(ks+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := kmsctlAs("keys", "add", "--keystore", uri)
	if err == nil {
		t.Fatalf("keys add as %d with a root-owned lock file succeeded:\n%s", nonroot, out)
	}
	for _, want := range []string{ks + ".lock", "owned by uid 0", "chown 65532:65532 " + ks + ".lock"} {
		if !strings.Contains(out, want) {
			t.Errorf("error lacks %q:\n%s", want, out)
		}
	}
}

package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestWriteReplacesAndSetsMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.json")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "new" {
		t.Fatalf("content = %q, want %q", got, "new")
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func TestWriteFailsInMissingDir(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "no", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("want error for missing directory")
	}
}

func TestWriteKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	p := filepath.Join(t.TempDir(), "keyset.json")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65532 || st.Gid != 65532 {
		t.Fatalf("owner %d:%d after rewrite, want 65532:65532", st.Uid, st.Gid)
	}
}

// crashEnv names the step at which TestCrashChild kills itself.
const crashEnv = "ATOMICFILE_TEST_CRASH_AT"

// TestCrashChild is not a test on its own: TestCrashAtEachStep runs the test
// binary again with crashEnv set, and this writes the file it names and
// SIGKILLs itself at that step of Write.
func TestCrashChild(t *testing.T) {
	at := os.Getenv(crashEnv)
	if at == "" {
		t.Skip("child process of TestCrashAtEachStep")
	}
	path := os.Getenv(crashEnv + "_PATH")
	SetTestHook(func(p string, s Step) {
		if p == path && s == Step(at) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	})
	if err := Write(path, newContent, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0) // the kill did not happen: the parent fails
}

var (
	oldContent = bytes.Repeat([]byte("old content\n"), 4096)
	newContent = bytes.Repeat([]byte("new, longer content\n"), 4096)
)

// TestCrashAtEachStep kills a writer with SIGKILL at each step of Write and
// checks that the file then holds exactly the old content (before the
// rename) or exactly the new (from the rename on), keeps its mode, and that
// the temp file a crash leaves behind is hidden, 0600, removed by
// RemoveTemps and in the way of no later Write. A process kill, not a power
// cut: what fsync adds is not observable here.
func TestCrashAtEachStep(t *testing.T) {
	for i, step := range Steps {
		t.Run(string(step), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := filepath.Join(dir, "keyset.json")
			if err := os.WriteFile(p, oldContent, 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), crashEnv+"="+string(step), crashEnv+"_PATH="+p)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child was not killed at %s: %v\n%s", step, err, out)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			renamed := i >= slices.Index(Steps, StepRenamed)
			switch {
			case renamed && !bytes.Equal(got, newContent):
				t.Fatalf("after the rename the file is not the new content (%d bytes)", len(got))
			case !renamed && !bytes.Equal(got, oldContent):
				t.Fatalf("before the rename the file is not the old content (%d bytes)", len(got))
			}
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("mode after crash: %v %v", fi.Mode(), err)
			}
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			temps := 0
			for _, e := range ents {
				if e.Name() == "keyset.json" {
					continue
				}
				temps++
				if !strings.HasPrefix(e.Name(), ".keyset.json.tmp-") {
					t.Fatalf("unexpected file %s", e.Name())
				}
				if fi, err := e.Info(); err != nil || fi.Mode().Perm() != 0o600 {
					t.Fatalf("temp file %s mode %v %v: it may hold a copy of the file", e.Name(), fi.Mode(), err)
				}
			}
			if want := map[bool]int{true: 0, false: 1}[renamed]; temps != want {
				t.Fatalf("%d temp files after a crash at %s, want %d", temps, step, want)
			}
			// The next writer is not in the way of the junk, and clears it.
			if err := Write(p, []byte("next"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := RemoveTemps(p); err != nil {
				t.Fatal(err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Fatalf("RemoveTemps left %v", ents)
			}
			if got, _ := os.ReadFile(p); string(got) != "next" {
				t.Fatalf("after the next write: %q", got)
			}
		})
	}
}

func TestRemoveTempsKeepsOthers(t *testing.T) {
	dir := t.TempDir()
	keep := []string{"keyset.json", ".other.json.tmp-1", "keyset.json.tmp-2", ".keyset.json.bak"}
	for _, n := range append(slices.Clone(keep), ".keyset.json.tmp-3", ".keyset.json.tmp-abc") {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveTemps(filepath.Join(dir, "keyset.json")); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(keep)
	if !slices.Equal(names, keep) {
		t.Fatalf("left %v, want %v", names, keep)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/atomicfile"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
)

// crashEnv carries, to TestKeysCrashChild, the step of the keyset write at
// which to die; crashEnv_PATH the keyset, crashEnv_ARGS the command line.
const crashEnv = "KMSCTL_TEST_CRASH_AT"

// TestKeysCrashChild is not a test on its own: TestKeysCrashAtEachStep runs
// the test binary again with crashEnv set, and this runs one kmsctl command
// line and SIGKILLs itself when the keyset write reaches the step named.
func TestKeysCrashChild(t *testing.T) {
	at := os.Getenv(crashEnv)
	if at == "" {
		t.Skip("child process of TestKeysCrashAtEachStep")
	}
	path := os.Getenv(crashEnv + "_PATH")
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(crashEnv+"_ARGS")), &args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(100)
	}
	atomicfile.SetTestHook(func(p string, s atomicfile.Step) {
		if p == path && s == atomicfile.Step(at) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	})
	g := &globals{stdout: os.Stdout, stderr: os.Stderr, stdin: strings.NewReader(""), now: time.Now, args: args}
	os.Exit(g.execute(context.Background(), args))
}

// view is a keyset as kmsctl lists it, comparable.
type view map[string]keystore.KeyVersion

func viewOf(vs []keystore.KeyVersion) view {
	m := view{}
	for _, v := range vs {
		m[v.KeyID] = v
	}
	return m
}

type sealed struct {
	keyID  string
	pt, ct []byte
}

// TestKeysCrashAtEachStep runs keys add, promote, disable, enable and
// destroy on a file keyset in a child process and kills it (SIGKILL) at
// every step of the keyset's write: temp file created, half written,
// written, fsynced, renamed, directory fsynced. After each kill the keyset
// must load, be exactly the old keyset (before the rename: the same bytes)
// or exactly the new one (from the rename on), unwrap every ciphertext
// wrapped before the command whose version the command left enabled, and
// take the next command, which clears the dead write's temp file.
func TestKeysCrashAtEachStep(t *testing.T) {
	ctx := context.Background()
	// The keyset every case starts from: v0 enabled, v1 primary, v2
	// disabled, and a ciphertext wrapped under each.
	base := filepath.Join(t.TempDir(), "keyset.json")
	uri := "file://" + base
	if r := run(t, "", false, "keys", "init", "--keystore", uri); r.code != 0 {
		t.Fatalf("init: %+v", r)
	}
	var cts []sealed
	wrap := func() {
		b, err := file.Open(base)
		if err != nil {
			t.Fatal(err)
		}
		pt := []byte(fmt.Sprintf("local KEK %d", len(cts)))
		w, err := b.Wrap(ctx, pt, []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, sealed{w.KeyID, pt, w.Ciphertext})
	}
	promote := func(id string) {
		if r := run(t, "", false, "keys", "promote", "--keystore", uri, "--yes", id); r.code != 0 {
			t.Fatalf("promote: %+v", r)
		}
	}
	v0 := primary(t, uri)
	wrap()
	v1 := addKey(t, uri)
	promote(v1)
	wrap()
	v2 := addKey(t, uri)
	promote(v2)
	wrap()
	promote(v1)
	if r := run(t, "", false, "keys", "disable", "--keystore", uri, v2); r.code != 0 {
		t.Fatalf("disable: %+v", r)
	}
	baseBytes, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	before := viewOf(listKeys(t, uri))

	with := func(f func(v view)) view {
		v := view{}
		for k, e := range before {
			v[k] = e
		}
		f(v)
		return v
	}
	set := func(v view, id string, f func(*keystore.KeyVersion)) {
		e := v[id]
		f(&e)
		v[id] = e
	}
	cmds := []struct {
		name string
		args []string
		// after is the keyset the command makes; nil for add, whose new
		// version's ID is random (checked by addedOne).
		after view
	}{
		{"add", []string{"keys", "add"}, nil},
		{"promote", []string{"keys", "promote", "--yes", v0}, with(func(v view) {
			set(v, v1, func(e *keystore.KeyVersion) { e.Primary = false })
			set(v, v0, func(e *keystore.KeyVersion) { e.Primary = true })
		})},
		{"disable", []string{"keys", "disable", v0}, with(func(v view) {
			set(v, v0, func(e *keystore.KeyVersion) { e.State = keystore.KeyDisabled })
		})},
		{"enable", []string{"keys", "enable", v2}, with(func(v view) {
			set(v, v2, func(e *keystore.KeyVersion) { e.State = keystore.KeyEnabled })
		})},
		{"destroy", []string{"keys", "destroy", "--force", "--yes", v2}, with(func(v view) { delete(v, v2) })},
	}
	addedOne := func(got view) bool {
		if len(got) != len(before)+1 {
			return false
		}
		for k, e := range before {
			if got[k] != e {
				return false
			}
		}
		for k, e := range got {
			if _, old := before[k]; !old && (e.Primary || e.State != keystore.KeyEnabled) {
				return false
			}
		}
		return true
	}
	renamedAt := slices.Index(atomicfile.Steps, atomicfile.StepRenamed)

	for _, c := range cmds {
		for i, step := range atomicfile.Steps {
			t.Run(c.name+"/"+string(step), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				p := filepath.Join(dir, "keyset.json")
				if err := os.WriteFile(p, baseBytes, 0o600); err != nil {
					t.Fatal(err)
				}
				args := append(slices.Clone(c.args), "--keystore", "file://"+p)
				ab, _ := json.Marshal(args)
				cmd := exec.Command(os.Args[0], "-test.run=^TestKeysCrashChild$", "-test.count=1")
				cmd.Env = append(os.Environ(), crashEnv+"="+string(step), crashEnv+"_PATH="+p, crashEnv+"_ARGS="+string(ab))
				out, err := cmd.CombinedOutput()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("kmsctl %v was not killed at %s: %v\n%s", args, step, err, out)
				}

				// It loads, and is the old keyset or the new, nothing else.
				b, err := file.Open(p)
				if err != nil {
					t.Fatalf("keyset does not load after a kill at %s: %v", step, err)
				}
				vs, err := b.List(ctx)
				if err != nil {
					t.Fatal(err)
				}
				got := viewOf(vs)
				isNew := addedOne(got)
				if c.after != nil {
					isNew = fmt.Sprint(got) == fmt.Sprint(c.after)
				}
				isOld := fmt.Sprint(got) == fmt.Sprint(before)
				if i < renamedAt {
					if raw, _ := os.ReadFile(p); !isOld || !bytes.Equal(raw, baseBytes) {
						t.Fatalf("killed at %s, before the rename, the keyset changed: %v", step, got)
					}
				} else if !isNew {
					t.Fatalf("killed at %s, after the rename, the keyset is not the new one: %v", step, got)
				}

				// Every ciphertext unwraps, unless the command retired its version.
				for _, s := range cts {
					pt, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: s.keyID, Ciphertext: s.ct}, []byte("aad"))
					v, ok := got[s.keyID]
					switch {
					case ok && v.State == keystore.KeyEnabled:
						if err != nil || !bytes.Equal(pt, s.pt) {
							t.Fatalf("ciphertext under %s does not unwrap after a kill at %s: %v", s.keyID, step, err)
						}
					case ok:
						if !errors.Is(err, keystore.ErrKeyDisabled) {
							t.Fatalf("ciphertext under disabled %s: %v", s.keyID, err)
						}
					default:
						if !errors.Is(err, keystore.ErrKeyNotFound) {
							t.Fatalf("ciphertext under destroyed %s: %v", s.keyID, err)
						}
					}
				}

				// The next command works, and clears the dead write's temp file.
				r := run(t, "", false, "keys", "add", "--keystore", "file://"+p)
				if r.code != 0 {
					t.Fatalf("keys add after a kill at %s: %+v", step, r)
				}
				ents, _ := os.ReadDir(dir)
				for _, e := range ents {
					if e.Name() != "keyset.json" && e.Name() != "keyset.json.lock" {
						t.Fatalf("left behind after the next command: %s", e.Name())
					}
				}
				if n := len(listKeys(t, "file://"+p)); n != len(got)+1 {
					t.Fatalf("%d versions after the next add, want %d", n, len(got)+1)
				}
			})
		}
	}
}

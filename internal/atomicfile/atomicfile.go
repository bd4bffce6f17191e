// Package atomicfile writes files so that a reader sees either the old
// content or the new, never a torn mix, even across a crash.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
)

// Step names a point in Write, in order. Crash tests kill a process at each
// one and check that path still holds the old content or the new.
type Step string

// The steps of Write, in the order it reaches them.
const (
	StepCreated   Step = "created"   // the temp file exists, empty
	StepPartial   Step = "partial"   // half the data is in the temp file
	StepWritten   Step = "written"   // all of it, not yet fsynced
	StepSynced    Step = "synced"    // the temp file is fsynced and closed
	StepRenamed   Step = "renamed"   // renamed over path; the directory not yet fsynced
	StepDirSynced Step = "dirsynced" // the directory is fsynced: Write is about to return
)

// Steps lists every Step in order.
var Steps = []Step{StepCreated, StepPartial, StepWritten, StepSynced, StepRenamed, StepDirSynced}

// hook, when set, is called at each Step. Only crash tests set it (in a
// child process they then kill at a chosen step); in production it is nil
// and costs one atomic load per step.
var hook atomic.Pointer[func(path string, s Step)]

// SetTestHook makes Write call fn(path, step) at each Step; nil removes it.
// It exists for crash tests only.
func SetTestHook(fn func(path string, s Step)) {
	if fn == nil {
		hook.Store(nil)
		return
	}
	hook.Store(&fn)
}

func reached(path string, s Step) {
	if fn := hook.Load(); fn != nil {
		(*fn)(path, s)
	}
}

// tempPattern is os.CreateTemp's pattern for path's temp files: hidden,
// beside path, named after it (see RemoveTemps).
func tempPattern(path string) string { return "." + filepath.Base(path) + ".tmp-*" }

// Write replaces path with data: a temp file in the same directory, fsync,
// rename over path, fsync of the directory. The file gets mode perm. If path
// exists, the new file keeps its owner and group, so that root running
// kmsctl on a keyset owned by keywarden's user does not lock keywarden out.
//
// A crash before the rename leaves path as it was, plus a temp file (mode
// 0600, named by tempPattern) that RemoveTemps clears.
func Write(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	owner := -1
	group := -1
	if fi, err := os.Stat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			owner, group = int(st.Uid), int(st.Gid)
		}
	}
	f, err := os.CreateTemp(dir, tempPattern(path))
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	reached(path, StepCreated)
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod temp file: %w", err)
	}
	if owner >= 0 && (owner != os.Geteuid() || group != os.Getegid()) {
		if err = f.Chown(owner, group); err != nil {
			return fmt.Errorf("keep owner of %s: %w", path, err)
		}
	}
	rest := data
	if hook.Load() != nil {
		// Two writes, so that a crash test can stop between them.
		if _, err = f.Write(data[:len(data)/2]); err != nil {
			return fmt.Errorf("write temp file: %w", err)
		}
		rest = data[len(data)/2:]
		reached(path, StepPartial)
	}
	if _, err = f.Write(rest); err != nil {
		return fmt.Errorf("write temp file: %w", err)
	}
	reached(path, StepWritten)
	if err = f.Sync(); err != nil {
		return fmt.Errorf("fsync temp file: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("close temp file: %w", err)
	}
	reached(path, StepSynced)
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	reached(path, StepRenamed)
	if err = syncDir(dir); err != nil {
		return err
	}
	reached(path, StepDirSynced)
	return nil
}

// RemoveTemps removes the temp files that writes of path interrupted by a
// crash left behind (they may hold a copy of an old version of path). Call
// it only while no other Write of path can be in flight, e.g. under the lock
// that serialises writers of path.
func RemoveTemps(path string) error {
	dir := filepath.Dir(path)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	prefix := "." + filepath.Base(path) + ".tmp-"
	var errs []error
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix) || !e.Type().IsRegular() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir for fsync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir: %w", err)
	}
	return nil
}

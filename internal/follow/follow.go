// Package follow is kmsctl's follow mode: a long-running loop that watches
// the key_id keywarden's Status reports and, whenever it is not the key of
// the last rotation followed to the end (a manual promote, or a keystore's
// own automatic rotation), runs the rest of docs/rotation.md for it: wait
// until kube-apiserver writes under it (rotation.WaitPickup), migrate every
// encrypted object, and audit etcd until no object remains under another
// key_id. Each step is recorded in a rotation.State file, logged, and
// counted in Metrics.
//
// It never adds, promotes, disables or destroys a root version: the
// keystore (or an operator) changes the key, follow mode makes the data
// follow. A step that fails is retried on the next poll; a failed audit
// also forgets the migration, so the retry migrates again.
//
// Only one replica may act at a time: the caller runs Follower.Run under
// leader election.
package follow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/rotation"
	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/keystore"
)

// The steps of one followed rotation, as rotation names them.
const (
	StepPickup  = rotation.StepPickup
	StepMigrate = rotation.StepMigrate
	StepAudit   = rotation.StepAudit
)

// Counts are an audit's KMS v2 objects: resource, then key_id, then count.
type Counts map[string]map[string]int

// notUnder counts the objects under a key_id other than keyID.
func (c Counts) notUnder(keyID string) int {
	n := 0
	for _, keys := range c {
		for k, v := range keys {
			if !keystore.SameVersion(k, keyID) {
				n += v
			}
		}
	}
	return n
}

// under counts the objects under keyID.
func (c Counts) under(keyID string) int {
	n := 0
	for _, keys := range c {
		for k, v := range keys {
			if keystore.SameVersion(k, keyID) {
				n += v
			}
		}
	}
	return n
}

// ErrNodesDisagree is what Status returns while the keywardens it asks
// report different key_ids: the promote has not reached every node, and
// nothing may be migrated until it has.
var ErrNodesDisagree = errors.New("keywardens report different key_ids")

// Follower is one replica's follow loop. Status, Pickup, Migrate and Audit
// must be set; each reaches the cluster only when called.
type Follower struct {
	// Status returns the key_id every keywarden serves now, healthy; an
	// error (ErrNodesDisagree while a promote is under way) waits.
	Status func(ctx context.Context) (string, error)
	// Pickup waits until kube-apiserver writes under keyID
	// (rotation.WaitPickup).
	Pickup func(ctx context.Context, keyID string) (string, error)
	// Migrate rewrites every encrypted object, keeping its progress in
	// stateFile (empty: none) and naming any StorageVersionMigrations
	// after svmPrefix; it returns a line of detail.
	Migrate func(ctx context.Context, stateFile, svmPrefix string) (string, error)
	// Audit counts the encrypted objects in etcd.
	Audit func(ctx context.Context) (Counts, error)
	// StatePath, if not empty, keeps the record of the rotation being
	// followed (rotation.State, as kmsctl rotate writes it), so that a
	// restarted or newly elected replica goes on from it; the migration's
	// progress goes next to it.
	StatePath string
	// Poll is the time between Status checks (zero: 10 s); AuditEvery the
	// time between audits once the cluster is under the current key (zero:
	// 10 min), which keep the object metrics fresh and catch objects
	// written under an old key after the fact.
	Poll, AuditEvery time.Duration
	// Metrics, if not nil, get every step's outcome.
	Metrics *Metrics
	// Log gets a structured line per step; nil discards them.
	Log *slog.Logger
	// Now is the clock and Sleep waits (fakes in tests); nil: the real ones.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error

	state     *rotation.State
	lastAudit time.Time
	// followed is the key of the last rotation followed to the end.
	followed string
}

func (f *Follower) now() time.Time {
	if f.Now == nil {
		return time.Now()
	}
	return f.Now()
}

func (f *Follower) log() *slog.Logger {
	if f.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return f.Log
}

func (f *Follower) sleep(ctx context.Context, d time.Duration) error {
	if f.Sleep != nil {
		return f.Sleep(ctx, d)
	}
	return rotation.Sleep(ctx, d)
}

// Run follows until ctx ends, and returns its error. It first reads the
// record at StatePath, if any: a complete rotation there is the key it
// starts from; an unfinished one is resumed if its key is still current.
func (f *Follower) Run(ctx context.Context) error {
	if f.StatePath != "" {
		st, err := rotation.Load(f.StatePath)
		if err != nil {
			return err
		}
		if st != nil {
			f.state = st
			if st.Complete {
				f.followed = st.NewKey
			}
		}
	}
	poll := f.Poll
	if poll == 0 {
		poll = 10 * time.Second
	}
	for {
		f.Cycle(ctx)
		if err := f.sleep(ctx, poll); err != nil {
			return err
		}
	}
}

// Cycle is one poll: check Status, then follow a new key or, when it is
// time, audit. Failures are logged and counted; the next cycle retries.
func (f *Follower) Cycle(ctx context.Context) {
	key, err := f.Status(ctx)
	if err != nil {
		f.Metrics.failed(StepStatus)
		f.log().Warn("follow: waiting for keywarden", "step", StepStatus, "err", err)
		return
	}
	f.Metrics.current(key)
	every := f.AuditEvery
	if every == 0 {
		every = 10 * time.Minute
	}
	switch {
	case key != f.followed:
		f.follow(ctx, key)
	case f.now().Sub(f.lastAudit) >= every:
		c, err := f.audit(ctx, key)
		switch {
		case err != nil:
			f.Metrics.failed(StepAudit)
			f.log().Warn("follow: audit failed; retrying at the next poll", "step", StepAudit, "err", err)
		case c.notUnder(key) == 0:
			f.Metrics.succeeded(StepAudit, f.now())
		default:
			// Written under an old key after the rotation (an apiserver
			// that had not picked the key up, a restored backup): follow
			// the same key again, from the migration.
			f.log().Warn("follow: objects under another key_id than the current one; migrating again", "key_id", key, "objects", c.notUnder(key))
			f.followed = ""
			f.state = f.newState(key)
			f.forgetMigration()
			f.state.Record(rotation.StepResult{Name: StepPickup, Status: rotation.StatusDone, Detail: "already picked up: the current key"})
		}
	}
}

func (f *Follower) newState(key string) *rotation.State {
	old := f.followed
	if old == "" && f.state != nil {
		old = f.state.OldKey
		if f.state.Complete {
			old = f.state.NewKey
		}
	}
	return &rotation.State{Version: 1, Keystore: "follow", OldKey: old, NewKey: key, Started: f.now().UTC()}
}

// follow runs the steps not yet done for key, recording each.
func (f *Follower) follow(ctx context.Context, key string) {
	if f.state == nil || f.state.NewKey != key || f.state.Complete {
		if f.state == nil || f.state.NewKey != key {
			f.log().Info("follow: key_id changed", "old_key_id", f.followed, "key_id", key)
		}
		f.state = f.newState(key)
		f.forgetMigration()
	}
	st := f.state
	steps := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{StepPickup, func(ctx context.Context) (string, error) { return f.Pickup(ctx, key) }},
		{StepMigrate, func(ctx context.Context) (string, error) {
			mig := ""
			if f.StatePath != "" {
				mig = rotation.MigrateStatePath(f.StatePath)
			}
			return f.Migrate(ctx, mig, "kmsctl-follow-"+key8(key))
		}},
		{StepAudit, func(ctx context.Context) (string, error) {
			c, err := f.audit(ctx, key)
			if err != nil {
				return "", err
			}
			if n := c.notUnder(key); n > 0 {
				return "", rotation.Surprise{Msg: fmt.Sprintf("the audit still counts %d objects under other key_ids than %s: migrating again", n, key)}
			}
			return fmt.Sprintf("0 objects under other key_ids; %d under %s", c.under(key), key), nil
		}},
	}
	for _, s := range steps {
		if st.Done(s.name) {
			continue
		}
		t0 := f.now()
		detail, err := s.fn(ctx)
		res := rotation.StepResult{Name: s.name, Status: rotation.StatusDone, Detail: detail, Seconds: f.now().Sub(t0).Seconds()}
		if err != nil {
			res.Status, res.Detail = rotation.StatusFailed, err.Error()
		}
		st.Record(res)
		if err != nil && s.name == StepAudit {
			st.Steps = slices.DeleteFunc(st.Steps, func(o rotation.StepResult) bool { return o.Name == StepMigrate })
			f.forgetMigration()
		}
		f.save()
		if err != nil {
			f.Metrics.failed(s.name)
			f.log().Warn("follow: step failed; retrying at the next poll", "step", s.name, "key_id", key, "err", err)
			return
		}
		f.Metrics.succeeded(s.name, f.now())
		f.log().Info("follow: step done", "step", s.name, "key_id", key, "detail", strings.TrimSpace(detail), "seconds", res.Seconds)
	}
	st.Complete = true
	f.save()
	f.followed = key
	f.Metrics.rotated()
	f.log().Info("follow: rotation followed to the end", "old_key_id", st.OldKey, "key_id", key)
}

// audit runs Audit and exports its counts.
func (f *Follower) audit(ctx context.Context, key string) (Counts, error) {
	c, err := f.Audit(ctx)
	if err != nil {
		return nil, err
	}
	f.lastAudit = f.now()
	f.Metrics.Audited(c, key)
	return c, nil
}

// forgetMigration removes the migration's progress file: a finished one
// would make the next migration a no-op.
func (f *Follower) forgetMigration() {
	if f.StatePath != "" {
		_ = os.Remove(rotation.MigrateStatePath(f.StatePath))
	}
}

func (f *Follower) save() {
	if f.StatePath == "" {
		return
	}
	if err := f.state.Save(f.StatePath); err != nil {
		f.log().Warn("follow: writing the state file", "path", f.StatePath, "err", err)
	}
}

// State is the record of the rotation followed last or now (nil before
// the first).
func (f *Follower) State() *rotation.State { return f.state }

func key8(key string) string { return stored.Digest([]byte(key))[:8] }

// Package rotation is keywarden's root key rotation protocol, the one
// `kmsctl rotate` runs and docs/rotation.md teaches: add a version, promote
// it, wait until keywarden (plugin) and then kube-apiserver (pickup) use
// it, migrate every encrypted object, audit etcd for the old version.
//
// A Runner runs the steps in order and records each in a state file; a run
// that resumes the record skips the steps already done, and a failed audit
// rewinds to migrate. On an HA control plane the add step also puts the new
// version on every other node (Distribute) and the promote step refuses
// until every node has it, then promotes it everywhere (PromoteEverywhere).
// WaitPickup, the pickup step, is also what the end-to-end tests call.
//
// The package prints nothing itself: progress and warnings go to the
// io.Writer its caller gives. Its messages are addressed to the operator of
// kmsctl rotate and name that command's flags.
package rotation

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/atomicfile"
	"github.com/keywarden/keywarden/keystore"
)

// The steps of a rotation, in order.
const (
	StepAdd     = "add"
	StepPromote = "promote"
	StepPlugin  = "plugin"
	StepPickup  = "pickup"
	StepMigrate = "migrate"
	StepAudit   = "audit"
)

// The statuses a step is recorded with.
const (
	StatusDone    = "done"
	StatusFailed  = "failed"
	StatusPlanned = "planned" // a dry run's plan
)

// State is the rotation's state file: which steps are done, so that a
// resumed run goes on after the first surprise. It records keystore URIs
// as the caller's Redact shows them, and Begin compares them so.
type State struct {
	Version  int          `json:"version"`
	Keystore string       `json:"keystore"`
	Nodes    []string     `json:"nodes,omitempty"`
	OldKey   string       `json:"oldKeyID"`
	NewKey   string       `json:"newKeyID,omitempty"`
	Started  time.Time    `json:"started"`
	Steps    []StepResult `json:"steps"`
	Complete bool         `json:"complete"`
}

// StepResult records one step's last run (or plan).
type StepResult struct {
	Name    string  `json:"step"`
	Status  string  `json:"status"` // done, failed, planned
	Detail  string  `json:"detail"`
	Seconds float64 `json:"seconds"`
}

// Done reports whether step is recorded as done.
func (s *State) Done(step string) bool {
	return slices.ContainsFunc(s.Steps, func(r StepResult) bool { return r.Name == step && r.Status == StatusDone })
}

// Record replaces any earlier record of r's step with r, at the end.
func (s *State) Record(r StepResult) {
	s.Steps = slices.DeleteFunc(s.Steps, func(o StepResult) bool { return o.Name == r.Name })
	s.Steps = append(s.Steps, r)
}

// Load reads the state file at p; it returns nil, nil if there is none.
func Load(p string) (*State, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil || s.Version != 1 {
		return nil, fmt.Errorf("rotation state file %s is not one kmsctl wrote (%v)", p, err)
	}
	return &s, nil
}

// Save writes s to p atomically, 0600.
func (s *State) Save(p string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(p, append(b, '\n'), 0o600)
}

// MigrateStatePath is where the migrate step keeps its progress, next to
// the rotation's state file p. A failed audit removes it.
func MigrateStatePath(p string) string { return p + ".migrate.json" }

// Surprise stops a rotation: a check found the cluster other than the next
// step needs (kmsctl exits 3). Fix the cause, then resume.
type Surprise struct{ Msg string }

func (s Surprise) Error() string { return s.Msg }

func surprisef(format string, a ...any) error { return Surprise{fmt.Sprintf(format, a...)} }

// UsageError refuses a rotation as it was asked for: the request conflicts
// with the recorded rotation, the keystore, or the number of
// kube-apiservers (kmsctl exits 2). Nothing was changed.
type UsageError struct{ Err error }

func (u UsageError) Error() string { return u.Err.Error() }

func (u UsageError) Unwrap() error { return u.Err }

func usagef(format string, a ...any) error { return UsageError{fmt.Errorf(format, a...)} }

// Request is what a caller asks of a rotation, checked by Begin before any
// step runs.
type Request struct {
	// Resume goes on with the rotation recorded in the state file.
	Resume bool
	// DryRun changes nothing, so an unfinished rotation does not block it.
	DryRun bool
	// Keystore and Nodes name this node's keystore and the other nodes'
	// (HA). A new rotation records them through Redact; a resumed one
	// must name the same.
	Keystore string
	Nodes    []string
	// OldKey is the version to retire (empty: the primary now); NewKey
	// one already added to take its place (empty: the add step adds one).
	OldKey, NewKey string
	// Versions are the keystore's versions now.
	Versions []keystore.KeyVersion
	// Now stamps a new rotation.
	Now time.Time
	// Redact shows a keystore URI without its secrets (byuri.Redact); nil
	// shows it as it is.
	Redact func(string) string
}

func (r *Request) redact(uri string) string {
	if r.Redact == nil {
		return uri
	}
	return r.Redact(uri)
}

func (r *Request) redactAll(uris []string) []string {
	if uris == nil {
		return nil
	}
	out := make([]string, len(uris))
	for i, u := range uris {
		out[i] = r.redact(u)
	}
	return out
}

// Begin returns the rotation to run: with req.Resume, the one recorded at
// path, which must be unfinished and of the same keystores; without it, a
// new one (not yet saved), which an unfinished record blocks unless
// req.DryRun. Requests that conflict with the record or the keystore's
// versions are UsageErrors.
func Begin(path string, req Request) (*State, error) {
	primary := Primary(req.Versions)
	st, err := Load(path)
	if err != nil {
		return nil, err
	}
	switch {
	case req.Resume && st == nil:
		return nil, usagef("--resume: no rotation recorded in %s", path)
	case req.Resume && st.Complete:
		return nil, usagef("--resume: the rotation in %s is complete", path)
	case req.Resume && req.redact(st.Keystore) != req.redact(req.Keystore):
		return nil, usagef("--resume: %s records keystore %s, not %s", path, req.redact(st.Keystore), req.redact(req.Keystore))
	case req.Resume && !slices.Equal(req.redactAll(st.Nodes), req.redactAll(req.Nodes)):
		return nil, usagef("--resume: %s records --nodes %s, not %s", path, strings.Join(req.redactAll(st.Nodes), ","), strings.Join(req.redactAll(req.Nodes), ","))
	case !req.Resume && !req.DryRun && st != nil && !st.Complete:
		return nil, usagef("a rotation from %s to %s is in progress in %s: add --resume, or remove the file to start over",
			st.OldKey, orNone(st.NewKey), path)
	case !req.Resume:
		st = &State{Version: 1, Keystore: req.redact(req.Keystore), Nodes: req.redactAll(req.Nodes), OldKey: req.OldKey, NewKey: req.NewKey, Started: req.Now}
		if st.OldKey == "" {
			st.OldKey = primary
		}
	}
	if st.OldKey == st.NewKey && st.NewKey != "" {
		return nil, usagef("--old-key and --new-key are both %s", st.NewKey)
	}
	has := func(id string) bool {
		return slices.ContainsFunc(req.Versions, func(v keystore.KeyVersion) bool { return v.KeyID == id })
	}
	if req.NewKey != "" && !has(req.NewKey) {
		return nil, usagef("--new-key %s is not in %s: add it (and distribute it) first", req.NewKey, req.redact(req.Keystore))
	}
	if !has(st.OldKey) {
		return nil, usagef("old key %s is not in %s", st.OldKey, req.redact(req.Keystore))
	}
	return st, nil
}

// Primary returns the primary version among vs, or "" if none is.
func Primary(vs []keystore.KeyVersion) string {
	for _, v := range vs {
		if v.Primary {
			return v.KeyID
		}
	}
	return ""
}

func orNone(s string) string {
	if s == "" {
		return "(none yet)"
	}
	return s
}

package rotation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/migrate"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
)

// newKeyset makes a file keystore with one version, and says its path.
func newKeyset(t *testing.T) (*file.Backend, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keyset.json")
	if _, err := file.Init(p); err != nil {
		t.Fatal(err)
	}
	b, err := file.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	return b, p
}

// nodeCopy is another control-plane node's keystore: a copy of src's
// keyset file at path (as a node's own copy would be).
func nodeCopy(t *testing.T, srcPath string) (*file.Backend, string) {
	t.Helper()
	raw, err := os.ReadFile(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "keyset.json")
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := file.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	return b, p
}

// plugin is a keywarden serving b: Status reports b's primary, as the real
// one does once it has reloaded the keyset.
func plugin(name string, b keystore.Backend) Plugin {
	return Plugin{Socket: name, Status: func(ctx context.Context) (*kmsapi.StatusResponse, error) {
		id, err := b.KeyID(ctx)
		if err != nil {
			return nil, err
		}
		return &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: id}, nil
	}}
}

func primaryOf(t *testing.T, m keystore.Manager) string {
	t.Helper()
	p, err := PrimaryOn(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// cluster stands in for what the Runner reaches through its caller: the
// apiserver for the pickup, the migration and the audit. The audit counts
// objects under the old key until the migration has run clean.
type cluster struct {
	mu                          sync.Mutex
	pickups, migrations, audits int
	pickupErr                   error
	migrateFailed               int64
	leftUnderOld                int // objects the next audit finds under the old key
	migrateStateFile, svmPrefix string
	migrateStateExisted         bool
}

func (c *cluster) runner(t *testing.T, self *file.Backend) *Runner {
	t.Helper()
	r := &Runner{
		Path:          filepath.Join(t.TempDir(), "rotate.json"),
		Keystore:      &Node{URI: "file:///self", Backend: self, Manager: self},
		Plugin:        plugin("unix:///self.sock", self),
		PluginTimeout: 5 * time.Second,
		PluginPoll:    time.Millisecond,
		APIServers:    func(context.Context) (int, error) { return 1, nil },
	}
	r.Pickup = func(_ context.Context, keyID string) (string, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.pickups++
		if c.pickupErr != nil {
			return "", c.pickupErr
		}
		return "picked up " + keyID, nil
	}
	r.Migrate = func(_ context.Context, stateFile, svmPrefix string) (*migrate.Summary, []migrate.SVMResult, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.migrations++
		c.migrateStateFile, c.svmPrefix = stateFile, svmPrefix
		_, err := os.Stat(stateFile)
		c.migrateStateExisted = err == nil
		if err := os.WriteFile(stateFile, []byte("{}"), 0o600); err != nil {
			return nil, nil, err
		}
		s := &migrate.Summary{}
		s.Rewritten, s.Failed = 10, c.migrateFailed
		return s, nil, nil
	}
	r.Audit = func(context.Context) (*audit.Report, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.audits++
		return &audit.Report{KeyIDs: map[string]int{r.State.OldKey: c.leftUnderOld, r.State.NewKey: 10}}, nil
	}
	return r
}

func begin(t *testing.T, r *Runner) {
	t.Helper()
	vs, err := r.Keystore.Manager.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st, err := Begin(r.Path, Request{Keystore: r.Keystore.URI, Versions: vs, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	r.State = st
}

func statuses(t *testing.T, path string) map[string]string {
	t.Helper()
	st, err := Load(path)
	if err != nil || st == nil {
		t.Fatalf("state: %v %v", st, err)
	}
	m := map[string]string{}
	for _, s := range st.Steps {
		m[s.Name] = s.Status
	}
	return m
}

// TestRunSingleNode runs every step on one node: a version is added and
// promoted, the state file records each step done and the rotation
// complete, and the log has one line per step.
func TestRunSingleNode(t *testing.T) {
	ctx := context.Background()
	self, _ := newKeyset(t)
	old := primaryOf(t, self)
	var c cluster
	r := c.runner(t, self)
	var log bytes.Buffer
	r.Log = &log
	begin(t, r)
	if err := r.Run(ctx); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	neu := primaryOf(t, self)
	if neu == old || r.State.NewKey != neu || r.State.OldKey != old || !r.State.Complete {
		t.Fatalf("old %s new %s, state %+v", old, neu, r.State)
	}
	st, err := Load(r.Path)
	if err != nil || !st.Complete || len(st.Steps) != 6 {
		t.Fatalf("saved state: %+v %v", st, err)
	}
	for i, name := range []string{StepAdd, StepPromote, StepPlugin, StepPickup, StepMigrate, StepAudit} {
		if st.Steps[i].Name != name || st.Steps[i].Status != StatusDone {
			t.Fatalf("step %d: %+v", i, st.Steps[i])
		}
	}
	if c.migrateStateFile != MigrateStatePath(r.Path) || !strings.HasPrefix(c.svmPrefix, "kmsctl-rotate-") || len(c.svmPrefix) != len("kmsctl-rotate-")+8 {
		t.Fatalf("migrate called with %q %q", c.migrateStateFile, c.svmPrefix)
	}
	for _, want := range []string{"rotate: add: done (added " + neu + ")", "rotate: promote: done (promoted " + neu + ")",
		"rotate: plugin: done (unix:///self.sock: Status key_id " + neu, "rotate: audit: done (0 objects under " + old} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}

// TestRunResume: a run that stops at the pickup records it failed; a
// resumed run skips the steps done (no second version is added) and goes
// on from the pickup.
func TestRunResume(t *testing.T) {
	ctx := context.Background()
	self, _ := newKeyset(t)
	c := cluster{pickupErr: Surprise{"not yet"}}
	r := c.runner(t, self)
	begin(t, r)
	err := r.Run(ctx)
	var s Surprise
	if !errors.As(err, &s) || s.Msg != "not yet" {
		t.Fatalf("first run: %v", err)
	}
	if got := statuses(t, r.Path); got[StepPromote] != StatusDone || got[StepPickup] != StatusFailed || got[StepMigrate] != "" {
		t.Fatalf("after the stop: %v", got)
	}

	c.pickupErr = nil
	st, err := Load(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	r2 := c.runner(t, self)
	r2.Path, r2.State, r2.Resume = r.Path, st, true
	if err := r2.Run(ctx); err != nil {
		t.Fatal(err)
	}
	vs, _ := self.List(ctx)
	if len(vs) != 2 || c.pickups != 2 || c.migrations != 1 || !r2.State.Complete {
		t.Fatalf("resume: %d versions, %d pickups, %d migrations, %+v", len(vs), c.pickups, c.migrations, r2.State)
	}
}

// TestRunRewind: an audit that still finds objects under the old key stops
// the rotation and forgets the migration, record and progress file, so that
// the resumed run migrates afresh before it audits again.
func TestRunRewind(t *testing.T) {
	ctx := context.Background()
	self, _ := newKeyset(t)
	c := cluster{leftUnderOld: 3}
	r := c.runner(t, self)
	begin(t, r)
	err := r.Run(ctx)
	var s Surprise
	if !errors.As(err, &s) || !strings.Contains(s.Msg, "still counts 3 objects under "+r.State.OldKey) {
		t.Fatalf("audit: %v", err)
	}
	if got := statuses(t, r.Path); got[StepAudit] != StatusFailed || got[StepMigrate] != "" || got[StepPickup] != StatusDone {
		t.Fatalf("after the failed audit: %v", got)
	}
	if _, err := os.Stat(MigrateStatePath(r.Path)); !os.IsNotExist(err) {
		t.Fatalf("the migration's progress file is still there: %v", err)
	}

	c.leftUnderOld = 0
	st, _ := Load(r.Path)
	r2 := c.runner(t, self)
	r2.Path, r2.State, r2.Resume = r.Path, st, true
	if err := r2.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if c.migrations != 2 || c.audits != 2 || c.migrateStateExisted || c.pickups != 1 {
		t.Fatalf("resume: %d migrations (fresh: %v), %d audits, %d pickups", c.migrations, !c.migrateStateExisted, c.audits, c.pickups)
	}
}

func TestRunSurprises(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		set  func(*cluster, *Runner)
		step string // the step recorded failed
		want string
	}{
		{"failed objects", func(c *cluster, _ *Runner) { c.migrateFailed = 2 }, StepMigrate, "2 objects failed to migrate"},
		{"plaintext", func(_ *cluster, r *Runner) {
			r.FailOnPlaintext = true
			r.Audit = func(context.Context) (*audit.Report, error) { return &audit.Report{Plaintext: 1, Unrecognized: 1}, nil }
		}, StepAudit, "2 plaintext objects"},
		{"plugin never reports the key", func(_ *cluster, r *Runner) {
			r.PluginTimeout = 20 * time.Millisecond
			r.NodePlugins = []Plugin{{Socket: "unix:///stuck.sock", Status: func(context.Context) (*kmsapi.StatusResponse, error) {
				return &kmsapi.StatusResponse{Healthz: "ok", KeyId: "stale"}, nil
			}}}
		}, StepPlugin, "keywarden on unix:///stuck.sock did not report key_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c cluster
			self, _ := newKeyset(t)
			r := c.runner(t, self)
			tc.set(&c, r)
			begin(t, r)
			err := r.Run(ctx)
			var s Surprise
			if !errors.As(err, &s) || !strings.Contains(s.Msg, tc.want) {
				t.Fatalf("want a Surprise with %q, got %v", tc.want, err)
			}
			if got := statuses(t, r.Path); got[tc.step] != StatusFailed {
				t.Fatalf("steps: %v", got)
			}
		})
	}
	t.Run("malformed values warn", func(t *testing.T) {
		var c cluster
		self, _ := newKeyset(t)
		r := c.runner(t, self)
		r.Audit = func(context.Context) (*audit.Report, error) {
			return &audit.Report{Malformed: 1, BadAnnotation: 2}, nil
		}
		var log bytes.Buffer
		r.Log = &log
		begin(t, r)
		if err := r.Run(ctx); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log.String(), "warning: the audit counts 1 malformed values and 2 with a bad keywarden annotation") {
			t.Fatalf("log: %s", log.String())
		}
	})
}

// TestRunHA is the two-phase rotation over three nodes: phase 1 copies the
// new version into both other keysets, phase 2 promotes it in all three,
// and every node's keywarden is waited for.
func TestRunHA(t *testing.T) {
	ctx := context.Background()
	self, selfPath := newKeyset(t)
	old := primaryOf(t, self)
	var c cluster
	r := c.runner(t, self)
	for i := range 2 {
		b, _ := nodeCopy(t, selfPath)
		r.Nodes = append(r.Nodes, &Node{URI: fmt.Sprintf("file:///node%d", i+1), Backend: b, Manager: b})
		r.NodePlugins = append(r.NodePlugins, plugin("unix:///node.sock", b))
	}
	begin(t, r)
	if err := r.CheckNodes(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	neu := r.State.NewKey
	if d := r.State.Steps[0].Detail; !strings.Contains(d, "copied to 2 of 2 other nodes") {
		t.Fatalf("add: %q", d)
	}
	if d := r.State.Steps[1].Detail; d != "promoted "+neu+" in 3 keystores (0 already primary), every node has it" {
		t.Fatalf("promote: %q", d)
	}
	if d := r.State.Steps[2].Detail; strings.Count(d, "Status key_id "+neu) != 3 {
		t.Fatalf("plugin: %q", d)
	}
	w, err := self.Wrap(ctx, []byte("kek"), []byte("aad"))
	if err != nil || w.KeyID != neu {
		t.Fatalf("wrap: %+v %v", w, err)
	}
	for _, n := range r.Nodes {
		if p := primaryOf(t, n.Manager); p != neu {
			t.Fatalf("node %s primary %s", n.URI, p)
		}
		if pt, err := n.Backend.Unwrap(ctx, w, []byte("aad")); err != nil || string(pt) != "kek" {
			t.Fatalf("node %s cannot unwrap under %s: %v", n.URI, neu, err)
		}
	}
}

package follow

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keywarden/keywarden/internal/rotation"
	"github.com/keywarden/keywarden/metrics"
)

// cluster is a fake control plane: the key keywarden serves, what
// kube-apiserver has picked up, and the objects in etcd per key.
type cluster struct {
	key, pickedUp string
	statusErr     error
	migrateErr    error
	// objects: resource -> key -> count.
	objects Counts
	// lateWrites are objects an apiserver writes under the old key
	// during the next migration (missed by it).
	lateWrites int
	calls      []string
}

func (c *cluster) follower(t *testing.T, reg prometheus.Registerer) *Follower {
	now := time.Unix(1_700_000_000, 0)
	return &Follower{
		Status: func(context.Context) (string, error) {
			c.calls = append(c.calls, "status")
			return c.key, c.statusErr
		},
		Pickup: func(_ context.Context, key string) (string, error) {
			c.calls = append(c.calls, "pickup "+key)
			c.pickedUp = key
			return "picked up", nil
		},
		Migrate: func(_ context.Context, stateFile, svm string) (string, error) {
			c.calls = append(c.calls, "migrate")
			if c.migrateErr != nil {
				return "", c.migrateErr
			}
			for res, keys := range c.objects {
				n := 0
				for k, v := range keys {
					if k != c.pickedUp {
						n += v
						delete(keys, k)
					}
				}
				keys[c.pickedUp] += n
				if c.lateWrites > 0 {
					keys["old"] += c.lateWrites
					c.lateWrites = 0
				}
				_ = res
			}
			return "rewritten", nil
		},
		Audit: func(context.Context) (Counts, error) {
			c.calls = append(c.calls, "audit")
			out := Counts{}
			for res, keys := range c.objects {
				out[res] = map[string]int{}
				for k, v := range keys {
					if v > 0 {
						out[res][k] = v
					}
				}
			}
			return out, nil
		},
		StatePath:  filepath.Join(t.TempDir(), "follow.json"),
		AuditEvery: time.Hour,
		Metrics:    NewMetrics(reg),
		Now:        func() time.Time { now = now.Add(time.Second); return now },
	}
}

func (c *cluster) took() string {
	s := strings.Join(c.calls, ", ")
	c.calls = nil
	return s
}

func gauge(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				ok := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						ok = true
					}
				}
				if !ok {
					continue next
				}
			}
			total += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return total
}

func TestFollowKeyChange(t *testing.T) {
	c := &cluster{key: "old", pickedUp: "old", objects: Counts{"secrets": {"old": 5}, "configmaps": {"old": 2}}}
	reg := prometheus.NewRegistry()
	f := c.follower(t, reg)
	ctx := context.Background()

	// First cycle, no record: it follows the current key, which changes
	// nothing, and exports the counts.
	f.Cycle(ctx)
	if got, want := c.took(), "status, pickup old, migrate, audit"; got != want {
		t.Fatalf("first cycle: %s, want %s", got, want)
	}
	f.Cycle(ctx)
	if got, want := c.took(), "status"; got != want {
		t.Fatalf("steady cycle: %s, want %s", got, want)
	}

	// The keystore rotates: follow mode picks up, migrates, audits.
	c.key = "new"
	f.Cycle(ctx)
	if got, want := c.took(), "status, pickup new, migrate, audit"; got != want {
		t.Fatalf("after the key change: %s, want %s", got, want)
	}
	st := f.State()
	if !st.Complete || st.OldKey != "old" || st.NewKey != "new" {
		t.Fatalf("state %+v", st)
	}
	if n := gauge(t, reg, "kmsctl_follow_objects_not_current"); n != 0 {
		t.Errorf("objects not current: %v", n)
	}
	if n := gauge(t, reg, "kmsctl_follow_objects", "resource", "secrets", "key_id_hash", metrics.HashKeyID("new")); n != 5 {
		t.Errorf("secrets under new: %v", n)
	}
	if n := gauge(t, reg, "kmsctl_follow_objects", "key_id_hash", metrics.HashKeyID("old")); n != 0 {
		t.Errorf("objects under old: %v", n)
	}
	if n := gauge(t, reg, "kmsctl_follow_rotations_total"); n != 2 {
		t.Errorf("rotations: %v", n)
	}
	if gauge(t, reg, "kmsctl_follow_last_success_timestamp_seconds", "step", "audit") == 0 {
		t.Error("no audit success time")
	}

	// A restarted replica reads the record and does not start over.
	g := c.follower(t, prometheus.NewRegistry())
	g.StatePath = f.StatePath
	g.Sleep = func(context.Context, time.Duration) error { return context.Canceled }
	if err := g.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if got, want := c.took(), "status, audit"; got != want {
		t.Errorf("restarted replica: %s, want %s (only the periodic audit)", got, want)
	}
}

func TestFollowFailures(t *testing.T) {
	c := &cluster{key: "k1", pickedUp: "k1", objects: Counts{"secrets": {"k1": 3}}}
	reg := prometheus.NewRegistry()
	f := c.follower(t, reg)
	ctx := context.Background()
	f.Cycle(ctx)
	c.took()

	// keywardens that disagree: wait, do nothing.
	c.key, c.statusErr = "k2", ErrNodesDisagree
	f.Cycle(ctx)
	if got := c.took(); got != "status" {
		t.Fatalf("disagreeing nodes: %s", got)
	}
	if n := gauge(t, reg, "kmsctl_follow_failures_total", "step", "status"); n != 1 {
		t.Errorf("status failures %v", n)
	}

	// The migration fails: retried at the next poll, without a new pickup.
	c.statusErr, c.migrateErr = nil, errors.New("apiserver down")
	f.Cycle(ctx)
	if got, want := c.took(), "status, pickup k2, migrate"; got != want {
		t.Fatalf("failing migrate: %s, want %s", got, want)
	}
	c.migrateErr = nil
	// This migration misses objects an apiserver writes under the old key
	// meanwhile: the audit fails, and the next poll migrates again.
	c.lateWrites = 2
	f.Cycle(ctx)
	if got, want := c.took(), "status, migrate, audit"; got != want {
		t.Fatalf("retry: %s, want %s", got, want)
	}
	if f.State().Complete || f.State().Done(StepMigrate) {
		t.Fatalf("a failed audit leaves the rotation open and forgets the migration: %+v", f.State())
	}
	if n := gauge(t, reg, "kmsctl_follow_objects_not_current", "resource", "secrets"); n != 2 {
		t.Errorf("not current %v, want 2", n)
	}
	if n := gauge(t, reg, "kmsctl_follow_failures_total", "step", "audit"); n != 1 {
		t.Errorf("audit failures %v", n)
	}
	f.Cycle(ctx)
	if got, want := c.took(), "status, migrate, audit"; got != want {
		t.Fatalf("second retry: %s, want %s", got, want)
	}
	if !f.State().Complete || gauge(t, reg, "kmsctl_follow_objects_not_current") != 0 {
		t.Fatalf("not complete: %+v", f.State())
	}
	rec, err := rotation.Load(f.StatePath)
	if err != nil || !rec.Complete || rec.NewKey != "k2" {
		t.Fatalf("record %+v %v", rec, err)
	}
}

func TestPeriodicAuditFindsOldObjects(t *testing.T) {
	c := &cluster{key: "k1", pickedUp: "k1", objects: Counts{"secrets": {"k1": 3}}}
	f := c.follower(t, prometheus.NewRegistry())
	ctx := context.Background()
	f.Cycle(ctx)
	c.took()
	// A backup restored under k0, an hour later.
	c.objects["secrets"]["k0"] = 4
	f.AuditEvery = time.Nanosecond
	f.Cycle(ctx)
	if got, want := c.took(), "status, audit"; got != want {
		t.Fatalf("periodic audit: %s, want %s", got, want)
	}
	f.Cycle(ctx)
	if got, want := c.took(), "status, migrate, audit"; got != want {
		t.Fatalf("after finding old objects: %s, want %s", got, want)
	}
	if c.objects["secrets"]["k0"] != 0 {
		t.Fatal("not migrated")
	}
}

// TestMetricNames checks MetricNames against what a followed rotation
// exports.
func TestMetricNames(t *testing.T) {
	c := &cluster{key: "k1", pickedUp: "k1", objects: Counts{"secrets": {"k0": 1}}}
	reg := prometheus.NewRegistry()
	f := c.follower(t, reg)
	f.Metrics.SetLeader(true)
	f.Cycle(context.Background())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		got = append(got, mf.GetName())
	}
	want := MetricNames()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("exported %v, MetricNames %v", got, want)
	}
}

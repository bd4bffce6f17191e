// Package migrate rewrites every object of some resources through
// kube-apiserver with no-op updates, so that the apiserver stores each one
// again with its current write provider and key: after a root key rotation,
// nothing is left under the old key.
//
// kube-apiserver skips the etcd write of an update that changes nothing,
// unless the stored value is stale (read with a key other than the current
// one); so a no-op update rewrites exactly the objects that need it, and the
// resourceVersion tells which ones did. Lists are paged; the continue token
// of the last finished page goes to a state file so an interrupted run
// resumes where it stopped.
package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"

	"github.com/keywarden/keywarden/internal/atomicfile"
)

// Defaults.
const (
	DefaultPageSize    = 500
	DefaultConcurrency = 8
	// FieldManager names kmsctl's writes in managedFields (a no-op update
	// changes no field, so it normally records nothing).
	FieldManager = "kmsctl-migrate"
	// maxFailures bounds the failures kept for the summary.
	maxFailures  = 50
	stateVersion = 1
)

// Client is the part of the dynamic client migrate uses; Dynamic adapts a
// dynamic.Interface to it.
type Client interface {
	List(ctx context.Context, gvr schema.GroupVersionResource, opts metav1.ListOptions) (*unstructured.UnstructuredList, error)
	Get(ctx context.Context, gvr schema.GroupVersionResource, namespace, name string) (*unstructured.Unstructured, error)
	Update(ctx context.Context, gvr schema.GroupVersionResource, obj *unstructured.Unstructured, opts metav1.UpdateOptions) (*unstructured.Unstructured, error)
}

// Dynamic narrows a dynamic client to Client.
func Dynamic(d dynamic.Interface) Client { return dynClient{d} }

type dynClient struct{ d dynamic.Interface }

func (c dynClient) List(ctx context.Context, gvr schema.GroupVersionResource, opts metav1.ListOptions) (*unstructured.UnstructuredList, error) {
	return c.d.Resource(gvr).List(ctx, opts)
}

func (c dynClient) Get(ctx context.Context, gvr schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
	return c.d.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
}

func (c dynClient) Update(ctx context.Context, gvr schema.GroupVersionResource, obj *unstructured.Unstructured, opts metav1.UpdateOptions) (*unstructured.Unstructured, error) {
	return c.d.Resource(gvr).Namespace(obj.GetNamespace()).Update(ctx, obj, opts)
}

// ErrState is returned for a state file that belongs to another migration.
var ErrState = errors.New("migration state file does not match")

// Options configures Run.
type Options struct {
	// Server identifies the cluster in the state file (the kubeconfig's
	// server URL): a state file is never resumed against another cluster.
	Server      string
	Targets     []Target
	PageSize    int64
	Concurrency int
	// StateFile, if set, is read at start (resume) and written after each
	// page (mode 0600).
	StateFile string
	// Conflict is the backoff for retries on 409 Conflict (default
	// retry.DefaultBackoff).
	Conflict *wait.Backoff
	// Progress, if set, is called after every object, from one goroutine
	// at a time.
	Progress func(Event)
	Log      *slog.Logger
}

// Event reports progress on one resource.
type Event struct {
	Resource string
	// Total is the number of objects the server estimated at the start of
	// the current list (0 if it gave no estimate); Processed counts this
	// run's objects of the resource.
	Total, Processed int64
	Counts
}

// Counts are the outcomes of rewrites.
type Counts struct {
	// Rewritten objects were stored again (their resourceVersion changed).
	Rewritten int64 `json:"rewritten"`
	// Skipped objects needed no write (already under the current key) or
	// were deleted meanwhile.
	Skipped int64 `json:"skipped"`
	// Failed objects could not be updated; see Summary.Failures.
	Failed int64 `json:"failed"`
}

func (c *Counts) add(o Counts) {
	c.Rewritten += o.Rewritten
	c.Skipped += o.Skipped
	c.Failed += o.Failed
}

// Failure is one object that could not be rewritten.
type Failure struct {
	Resource  string `json:"resource"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Error     string `json:"error"`
}

// Summary is the result of Run, including what earlier runs of the same
// state file did.
type Summary struct {
	Resources []ResourceSummary `json:"resources"`
	Counts
	// Failures lists up to 50 failed objects of this run.
	Failures []Failure    `json:"failures,omitempty"`
	Duration jsonDuration `json:"duration"`
	// Resumed is true if a state file was picked up.
	Resumed bool `json:"resumed"`
}

// ResourceSummary is one resource's outcome.
type ResourceSummary struct {
	Name string `json:"resource"`
	Done bool   `json:"done"`
	Counts
}

type jsonDuration time.Duration

func (d jsonDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).Round(time.Millisecond).String())
}

func (d jsonDuration) String() string { return time.Duration(d).Round(time.Millisecond).String() }

// State is the state file: where each resource's list stopped.
type State struct {
	Version   int                       `json:"version"`
	Server    string                    `json:"server"`
	Order     []string                  `json:"resources"`
	Resources map[string]*ResourceState `json:"progress"`
}

// ResourceState is one resource's progress.
type ResourceState struct {
	// Continue is the continue token after the last finished page.
	Continue string `json:"continue,omitempty"`
	Done     bool   `json:"done"`
	Counts
}

// LoadState reads a state file; a missing file is no state.
func LoadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrState, path, err)
	}
	if s.Version != stateVersion || s.Resources == nil {
		return nil, fmt.Errorf("%w: %s has version %d", ErrState, path, s.Version)
	}
	return &s, nil
}

func (s *State) save(path string) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// Run rewrites every object of opts.Targets. It returns a summary even when
// it fails or ctx ends; the state file then holds where to resume.
func Run(ctx context.Context, c Client, opts Options) (*Summary, error) {
	start := time.Now()
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.Conflict == nil {
		b := retry.DefaultBackoff
		opts.Conflict = &b
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	order := make([]string, len(opts.Targets))
	for i, t := range opts.Targets {
		order[i] = t.Name
	}
	st := &State{Version: stateVersion, Server: opts.Server, Order: order, Resources: map[string]*ResourceState{}}
	sum := &Summary{}
	if opts.StateFile != "" {
		old, err := LoadState(opts.StateFile)
		if err != nil {
			return sum, err
		}
		if old != nil {
			if old.Server != opts.Server || !slices.Equal(old.Order, order) {
				return sum, fmt.Errorf("%w: %s is for %s %v, not %s %v; remove it to start over",
					ErrState, opts.StateFile, old.Server, old.Order, opts.Server, order)
			}
			st, sum.Resumed = old, true
		}
	}
	for _, n := range order {
		if st.Resources[n] == nil {
			st.Resources[n] = &ResourceState{}
		}
	}
	if err := st.save(opts.StateFile); err != nil {
		return sum, fmt.Errorf("writing state file: %w", err)
	}
	m := &migrator{c: c, opts: opts, state: st, sum: sum}
	var err error
	for _, t := range opts.Targets {
		if err = m.resource(ctx, t); err != nil {
			break
		}
	}
	for _, n := range order {
		rs := st.Resources[n]
		sum.Resources = append(sum.Resources, ResourceSummary{Name: n, Done: rs.Done, Counts: rs.Counts})
		sum.add(rs.Counts)
	}
	sum.Duration = jsonDuration(time.Since(start))
	return sum, err
}

type migrator struct {
	c     Client
	opts  Options
	state *State
	sum   *Summary

	mu sync.Mutex // guards sum.Failures and progress calls
}

func (m *migrator) resource(ctx context.Context, t Target) error {
	rs := m.state.Resources[t.Name]
	if rs.Done {
		m.opts.Log.Warn("resource already migrated: the state file records it done; remove the file to migrate again", "resource", t.Name, "stateFile", m.opts.StateFile)
		return nil
	}
	log := m.opts.Log.With("resource", t.Name)
	log.Info("migrating", "resumeFromContinue", rs.Continue != "")
	var total, processed int64
	for {
		list, err := m.c.List(ctx, t.GVR, metav1.ListOptions{Limit: m.opts.PageSize, Continue: rs.Continue})
		if apierrors.IsResourceExpired(err) && rs.Continue != "" {
			// The token outlived etcd's compaction. The server offers an
			// inconsistent continuation from the same key; else start over
			// (rewriting again is harmless: current objects are skipped).
			var se apierrors.APIStatus
			next := ""
			if errors.As(err, &se) {
				next = se.Status().Continue
			}
			log.Warn("continue token expired", "restartFromBeginning", next == "")
			rs.Continue = next
			continue
		}
		if err != nil {
			return fmt.Errorf("listing %s: %w", t.Name, err)
		}
		if total == 0 {
			total = int64(len(list.Items))
			if rc := list.GetRemainingItemCount(); rc != nil {
				total += *rc
			}
		}
		c, err := m.page(ctx, t, list.Items, total, &processed, rs.Counts)
		rs.add(c)
		if err != nil {
			// The page is not finished: keep the previous token, so a resume
			// re-reads it (objects already rewritten are then skipped).
			if serr := m.state.save(m.opts.StateFile); serr != nil {
				log.Error("writing state file", "err", serr)
			}
			return err
		}
		rs.Continue = list.GetContinue()
		rs.Done = rs.Continue == ""
		if err := m.state.save(m.opts.StateFile); err != nil {
			return fmt.Errorf("writing state file: %w", err)
		}
		log.Debug("page done", "objects", len(list.Items), "rewritten", rs.Rewritten, "skipped", rs.Skipped, "failed", rs.Failed)
		if rs.Done {
			log.Info("resource migrated", "rewritten", rs.Rewritten, "skipped", rs.Skipped, "failed", rs.Failed)
			return nil
		}
	}
}

// page rewrites the items of one list page with bounded concurrency.
func (m *migrator) page(ctx context.Context, t Target, items []unstructured.Unstructured, total int64, processed *int64, before Counts) (Counts, error) {
	var (
		c   Counts
		wg  sync.WaitGroup
		sem = make(chan struct{}, m.opts.Concurrency)
	)
	for i := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(obj *unstructured.Unstructured) {
			defer func() { <-sem; wg.Done() }()
			o, err := m.rewrite(ctx, t, obj)
			m.mu.Lock()
			defer m.mu.Unlock()
			if err != nil && ctx.Err() != nil {
				return // interrupted, not failed: the page is redone on resume
			}
			c.add(o)
			if err != nil && len(m.sum.Failures) < maxFailures {
				m.sum.Failures = append(m.sum.Failures, Failure{Resource: t.Name, Namespace: obj.GetNamespace(), Name: obj.GetName(), Error: err.Error()})
			}
			*processed++
			if m.opts.Progress != nil {
				ev := Event{Resource: t.Name, Total: total, Processed: *processed, Counts: before}
				ev.add(c)
				m.opts.Progress(ev)
			}
		}(&items[i])
	}
	wg.Wait()
	return c, ctx.Err()
}

// rewrite updates obj unchanged, refetching it on conflict.
func (m *migrator) rewrite(ctx context.Context, t Target, obj *unstructured.Unstructured) (Counts, error) {
	var out Counts
	err := retry.OnError(*m.opts.Conflict, apierrors.IsConflict, func() error {
		sent := obj.GetResourceVersion()
		got, err := m.c.Update(ctx, t.GVR, obj, metav1.UpdateOptions{FieldManager: FieldManager})
		switch {
		case apierrors.IsConflict(err):
			fresh, gerr := m.c.Get(ctx, t.GVR, obj.GetNamespace(), obj.GetName())
			if gerr != nil {
				return gerr
			}
			obj = fresh
			return err
		case err != nil:
			return err
		case got.GetResourceVersion() != sent:
			out = Counts{Rewritten: 1}
		default:
			out = Counts{Skipped: 1}
		}
		return nil
	})
	if apierrors.IsNotFound(err) {
		return Counts{Skipped: 1}, nil
	}
	if err != nil {
		return Counts{Failed: 1}, err
	}
	return out, nil
}

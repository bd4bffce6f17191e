package migrate

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
)

var secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// fakeCluster is an apiserver for one resource as migrate sees it: paged
// lists with continue tokens, updates that bump the resourceVersion only
// of stale objects (as kube-apiserver skips no-op writes of current ones),
// and injected conflicts, deletions, failures and expired tokens.
type fakeCluster struct {
	mu       sync.Mutex
	objs     map[string]*unstructured.Unstructured // ns/name -> object
	stale    map[string]bool
	rv       int
	updates  map[string]int // ns/name -> update calls
	conflict map[string]int // ns/name -> conflicts still to return
	forbid   map[string]bool
	gone     map[string]bool // deleted after the list
	expire   map[string]bool // continue tokens that come back 410
	lists    []string        // continue tokens asked for
	onUpdate func(key string)
}

func newFakeCluster(n int) *fakeCluster {
	f := &fakeCluster{objs: map[string]*unstructured.Unstructured{}, stale: map[string]bool{}, updates: map[string]int{},
		conflict: map[string]int{}, forbid: map[string]bool{}, gone: map[string]bool{}, expire: map[string]bool{}}
	for i := range n {
		ns, name := "ns"+strconv.Itoa(i%3), fmt.Sprintf("s%03d", i)
		f.rv++
		o := &unstructured.Unstructured{}
		o.SetAPIVersion("v1")
		o.SetKind("Secret")
		o.SetNamespace(ns)
		o.SetName(name)
		o.SetResourceVersion(strconv.Itoa(f.rv))
		f.objs[ns+"/"+name] = o
		f.stale[ns+"/"+name] = true
	}
	return f
}

func (f *fakeCluster) keys() []string {
	var ks []string
	for k := range f.objs {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (f *fakeCluster) client() Client { return f }

func (f *fakeCluster) List(_ context.Context, gvr schema.GroupVersionResource, opts metav1.ListOptions) (*unstructured.UnstructuredList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if gvr != secretsGVR {
		return nil, errors.New("fake: wrong resource")
	}
	f.lists = append(f.lists, opts.Continue)
	if f.expire[opts.Continue] {
		se := apierrors.NewResourceExpired("continue token expired")
		se.ErrStatus.Continue = "inconsistent-" + opts.Continue
		return nil, se
	}
	ks := f.keys()
	start := 0
	if opts.Continue != "" {
		start = sort.SearchStrings(ks, strings.TrimPrefix(opts.Continue, "inconsistent-")) + 1
	}
	end := min(len(ks), start+int(opts.Limit))
	l := &unstructured.UnstructuredList{}
	for _, k := range ks[start:end] {
		l.Items = append(l.Items, *f.objs[k].DeepCopy())
	}
	if end < len(ks) {
		l.SetContinue(ks[end-1])
		rem := int64(len(ks) - end)
		l.SetRemainingItemCount(&rem)
	}
	return l, nil
}

func (f *fakeCluster) Update(_ context.Context, _ schema.GroupVersionResource, obj *unstructured.Unstructured, _ metav1.UpdateOptions) (*unstructured.Unstructured, error) {
	key := obj.GetNamespace() + "/" + obj.GetName()
	if f.onUpdate != nil {
		f.onUpdate(key)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates[key]++
	cur, ok := f.objs[key]
	switch {
	case f.gone[key] || !ok:
		return nil, apierrors.NewNotFound(secretsGVR.GroupResource(), obj.GetName())
	case f.forbid[key]:
		return nil, apierrors.NewForbidden(secretsGVR.GroupResource(), obj.GetName(), errors.New("no"))
	case f.conflict[key] > 0:
		f.conflict[key]--
		f.rv++
		cur.SetResourceVersion(strconv.Itoa(f.rv)) // someone else wrote it
		return nil, apierrors.NewConflict(secretsGVR.GroupResource(), obj.GetName(), errors.New("changed"))
	case obj.GetResourceVersion() != cur.GetResourceVersion():
		return nil, apierrors.NewConflict(secretsGVR.GroupResource(), obj.GetName(), errors.New("stale rv"))
	}
	if f.stale[key] {
		f.stale[key] = false
		f.rv++
		cur.SetResourceVersion(strconv.Itoa(f.rv))
	}
	return cur.DeepCopy(), nil
}

func (f *fakeCluster) Get(_ context.Context, _ schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := ns + "/" + name
	if o, ok := f.objs[key]; ok && !f.gone[key] {
		return o.DeepCopy(), nil
	}
	return nil, apierrors.NewNotFound(secretsGVR.GroupResource(), name)
}

var fastRetry = wait.Backoff{Steps: 4, Duration: 1}

func secretsTarget() []Target {
	return []Target{{Name: "secrets", GVR: secretsGVR, Namespaced: true}}
}

func TestRun(t *testing.T) {
	f := newFakeCluster(25)
	keys := f.keys()
	f.stale[keys[3]] = false // already under the current key
	f.conflict[keys[5]] = 2  // written twice by someone else meanwhile
	f.gone[keys[7]] = true   // deleted after the list
	f.forbid[keys[9]] = true // admission says no
	var events []Event
	sum, err := Run(context.Background(), f.client(), Options{
		Server: "https://c", Targets: secretsTarget(), PageSize: 10, Concurrency: 4, Conflict: &fastRetry,
		StateFile: filepath.Join(t.TempDir(), "state.json"),
		Progress:  func(e Event) { events = append(events, e) },
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Counts{Rewritten: 22, Skipped: 2, Failed: 1}
	if sum.Counts != want || len(sum.Resources) != 1 || !sum.Resources[0].Done {
		t.Fatalf("summary %+v, want %+v", sum, want)
	}
	if len(sum.Failures) != 1 || sum.Failures[0].Namespace+"/"+sum.Failures[0].Name != keys[9] {
		t.Fatalf("failures %+v", sum.Failures)
	}
	if f.updates[keys[5]] != 3 {
		t.Fatalf("conflicted object updated %d times, want 3", f.updates[keys[5]])
	}
	for k, stale := range f.stale {
		if stale && !f.gone[k] && !f.forbid[k] {
			t.Fatalf("%s still stale", k)
		}
	}
	if !slices.Equal(f.lists, []string{"", keys[9], keys[19]}) {
		t.Fatalf("lists %q", f.lists)
	}
	last := events[len(events)-1]
	if len(events) != 25 || last.Total != 25 || last.Processed != 25 || last.Counts != want {
		t.Fatalf("%d events, last %+v", len(events), last)
	}
}

// TestResume interrupts a run mid-page and resumes it from the state file:
// finished pages are not listed or updated again.
func TestResume(t *testing.T) {
	f := newFakeCluster(30)
	state := filepath.Join(t.TempDir(), "state.json")
	ctx, cancel := context.WithCancel(context.Background())
	var n int
	var mu sync.Mutex
	f.onUpdate = func(string) {
		mu.Lock()
		defer mu.Unlock()
		if n++; n == 15 {
			cancel() // in the middle of the second page
		}
	}
	opts := Options{Server: "https://c", Targets: secretsTarget(), PageSize: 10, Concurrency: 1, Conflict: &fastRetry, StateFile: state}
	sum, err := Run(ctx, f.client(), opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: %v", err)
	}
	if sum.Resources[0].Done || sum.Rewritten < 10 {
		t.Fatalf("interrupted summary %+v", sum)
	}
	st, err := LoadState(state)
	if err != nil || st.Resources["secrets"].Continue != f.keys()[9] {
		t.Fatalf("state after interruption: %+v %v", st, err)
	}
	f.onUpdate = nil
	f.lists = nil
	clear(f.updates)
	sum, err = Run(context.Background(), f.client(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Resumed || !sum.Resources[0].Done || sum.Rewritten != 30 || sum.Failed != 0 {
		t.Fatalf("resumed summary %+v", sum)
	}
	if f.lists[0] != f.keys()[9] {
		t.Fatalf("resumed from %q, want after the first page", f.lists[0])
	}
	for _, k := range f.keys()[:10] {
		if f.updates[k] != 0 {
			t.Fatalf("%s of a finished page was updated again", k)
		}
	}
	// A third run finds everything done and does nothing.
	f.lists = nil
	if sum, err = Run(context.Background(), f.client(), opts); err != nil || len(f.lists) != 0 || !sum.Resources[0].Done {
		t.Fatalf("third run: %+v %v lists %q", sum, err, f.lists)
	}
}

func TestExpiredContinue(t *testing.T) {
	f := newFakeCluster(30)
	keys := f.keys()
	f.expire[keys[9]] = true
	sum, err := Run(context.Background(), f.client(), Options{Server: "s", Targets: secretsTarget(), PageSize: 10, Conflict: &fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rewritten != 30 || !slices.Equal(f.lists, []string{"", keys[9], "inconsistent-" + keys[9], keys[19]}) {
		t.Fatalf("summary %+v lists %q", sum, f.lists)
	}
}

func TestStateMismatch(t *testing.T) {
	f := newFakeCluster(3)
	state := filepath.Join(t.TempDir(), "state.json")
	if _, err := Run(context.Background(), f.client(), Options{Server: "https://a", Targets: secretsTarget(), StateFile: state}); err != nil {
		t.Fatal(err)
	}
	_, err := Run(context.Background(), f.client(), Options{Server: "https://b", Targets: secretsTarget(), StateFile: state})
	if !errors.Is(err, ErrState) {
		t.Fatalf("other cluster: %v", err)
	}
}

type fakeDiscovery struct {
	lists []*metav1.APIResourceList
	err   error
}

func (d fakeDiscovery) ServerPreferredResources() ([]*metav1.APIResourceList, error) {
	return d.lists, d.err
}

var rw = metav1.Verbs{"get", "list", "update", "patch", "create", "delete"}

var discoveryLists = []*metav1.APIResourceList{
	{GroupVersion: "v1", APIResources: []metav1.APIResource{
		{Name: "secrets", Namespaced: true, Verbs: rw},
		{Name: "configmaps", Namespaced: true, Verbs: rw},
		{Name: "pods/status", Namespaced: true, Verbs: rw},
		{Name: "bindings", Namespaced: true, Verbs: metav1.Verbs{"create"}},
	}},
	{GroupVersion: "apps/v1", APIResources: []metav1.APIResource{
		{Name: "deployments", Namespaced: true, Verbs: rw},
	}},
	{GroupVersion: "example.com/v2", APIResources: []metav1.APIResource{
		{Name: "widgets", Namespaced: false, Verbs: rw},
	}},
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []string
		wantErr bool
	}{
		{"core", []string{"secrets", "configmaps."}, []string{"secrets", "configmaps"}, false},
		{"groups", []string{"deployments.apps", "widgets.example.com"}, []string{"deployments.apps", "widgets.example.com"}, false},
		{"core wildcard", []string{"*."}, []string{"secrets", "configmaps"}, false},
		{"all", []string{"secrets", "*.*"}, []string{"secrets", "configmaps", "deployments.apps", "widgets.example.com"}, false},
		{"not served", []string{"nope"}, nil, true},
		{"no update verb", []string{"bindings"}, nil, true},
		{"nothing", []string{" "}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := Resolve(fakeDiscovery{lists: discoveryLists}, tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrResource) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, g := range got {
				names = append(names, g.Name)
			}
			if !slices.Equal(names, tt.want) {
				t.Fatalf("got %q, want %q", names, tt.want)
			}
			if got[0].Name == "widgets.example.com" && (got[0].GVR.Version != "v2" || got[0].Namespaced) {
				t.Fatalf("%+v", got[0])
			}
		})
	}
}

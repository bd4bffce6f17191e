package rotation

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

// token is a node whose keystore cannot import (no keystore.Importer), as
// an HSM token's view would be: its versions come by the provider's own
// replication. Here a file keyset behind a wrapper that hides Import.
func token(uri string, b *file.Backend) *Node {
	return &Node{URI: uri, Backend: keystoretest.NewSpy(b), Manager: b}
}

func addVersion(t *testing.T, m keystore.Manager) string {
	t.Helper()
	v, err := m.Add(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v.KeyID
}

// TestDistribute: phase 1 copies into the nodes that can import, leaves a
// node that already has the version alone, and stops (a Surprise, nothing
// promoted) when a node cannot get it or has it disabled.
func TestDistribute(t *testing.T) {
	ctx := context.Background()
	t.Run("copies", func(t *testing.T) {
		self, p := newKeyset(t)
		a, _ := nodeCopy(t, p)
		b, _ := nodeCopy(t, p)
		neu := addVersion(t, self)
		if _, err := b.Import(ctx, self, neu); err != nil {
			t.Fatal(err)
		}
		nodes := []*Node{{URI: "a", Backend: a, Manager: a}, {URI: "b", Backend: b, Manager: b}}
		d, err := Distribute(ctx, self, nodes, neu)
		if err != nil || d != "; copied to 1 of 2 other nodes, present and enabled on all" {
			t.Fatalf("%q %v", d, err)
		}
		for _, n := range nodes {
			if v, ok, err := VersionOn(ctx, n.Manager, neu); err != nil || !ok || v.Primary || v.State != keystore.KeyEnabled {
				t.Fatalf("node %s: %+v %v %v", n.URI, v, ok, err)
			}
		}
	})
	t.Run("a node that cannot import", func(t *testing.T) {
		self, p := newKeyset(t)
		a, _ := nodeCopy(t, p)
		tb, _ := nodeCopy(t, p)
		neu := addVersion(t, self)
		_, err := Distribute(ctx, self, []*Node{{URI: "a", Backend: a, Manager: a}, token("tok", tb)}, neu)
		var s Surprise
		if !errors.As(err, &s) || !strings.Contains(s.Msg, "is not on tok (kmsctl copies versions only between file keystores") {
			t.Fatalf("%v", err)
		}
		// The importing node got it all the same; the token did not.
		if _, ok, _ := VersionOn(ctx, a, neu); !ok {
			t.Fatal("node a was not given the version")
		}
		if _, ok, _ := VersionOn(ctx, tb, neu); ok {
			t.Fatal("the token node was written through a backend that cannot import")
		}
		// Once the token has it (its own replication), phase 1 passes.
		if _, err := tb.Import(ctx, self, neu); err != nil {
			t.Fatal(err)
		}
		if d, err := Distribute(ctx, self, []*Node{{URI: "a", Backend: a, Manager: a}, token("tok", tb)}, neu); err != nil || !strings.Contains(d, "copied to 0 of 2") {
			t.Fatalf("%q %v", d, err)
		}
	})
	t.Run("a source of another kind", func(t *testing.T) {
		self, p := newKeyset(t)
		a, _ := nodeCopy(t, p)
		neu := addVersion(t, self)
		_, err := Distribute(ctx, keystoretest.NewSpy(self), []*Node{{URI: "a", Backend: a, Manager: a}}, neu)
		var s Surprise
		if !errors.As(err, &s) || !strings.Contains(s.Msg, "phase 1 incomplete") || !strings.Contains(s.Msg, "only between file keystores") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("disabled on a node", func(t *testing.T) {
		self, p := newKeyset(t)
		a, _ := nodeCopy(t, p)
		neu := addVersion(t, self)
		if _, err := a.Import(ctx, self, neu); err != nil {
			t.Fatal(err)
		}
		if err := a.Disable(ctx, neu); err != nil {
			t.Fatal(err)
		}
		_, err := Distribute(ctx, self, []*Node{{URI: "a", Backend: a, Manager: a}}, neu)
		var s Surprise
		if !errors.As(err, &s) || !strings.Contains(s.Msg, "phase 1: "+neu+" is disabled on node a") {
			t.Fatalf("%v", err)
		}
	})
}

// TestPromoteEverywhere: phase 2 refuses while any node lacks the version,
// changing nothing, then promotes it in every keystore, this one last.
func TestPromoteEverywhere(t *testing.T) {
	ctx := context.Background()
	self, p := newKeyset(t)
	old := primaryOf(t, self)
	a, _ := nodeCopy(t, p)
	b, _ := nodeCopy(t, p)
	neu := addVersion(t, self)
	if _, err := a.Import(ctx, self, neu); err != nil {
		t.Fatal(err)
	}
	nodes := []*Node{{URI: "a", Backend: a, Manager: a}, {URI: "b", Backend: b, Manager: b}}
	_, err := PromoteEverywhere(ctx, self, nodes, neu)
	var s Surprise
	if !errors.As(err, &s) || !strings.Contains(s.Msg, "refusing to promote "+neu+": it is not an enabled version on b") {
		t.Fatalf("%v", err)
	}
	for _, m := range []keystore.Manager{self, a, b} {
		if primaryOf(t, m) != old {
			t.Fatal("a refused phase 2 promoted")
		}
	}
	if _, err := b.Import(ctx, self, neu); err != nil {
		t.Fatal(err)
	}
	if err := a.Promote(ctx, neu); err != nil { // one node done by hand already
		t.Fatal(err)
	}
	d, err := PromoteEverywhere(ctx, self, nodes, neu)
	if err != nil || d != "promoted "+neu+" in 2 keystores (1 already primary), every node has it" {
		t.Fatalf("%q %v", d, err)
	}
	for _, m := range []keystore.Manager{self, a, b} {
		if primaryOf(t, m) != neu {
			t.Fatal("not promoted everywhere")
		}
	}
}

func TestPlanNodes(t *testing.T) {
	ctx := context.Background()
	self, p := newKeyset(t)
	a, _ := nodeCopy(t, p)
	b, _ := nodeCopy(t, p)
	c, _ := nodeCopy(t, p)
	neu := addVersion(t, self)
	if _, err := b.Import(ctx, self, neu); err != nil {
		t.Fatal(err)
	}
	nodes := []*Node{{URI: "a", Backend: a, Manager: a}, {URI: "b", Backend: b, Manager: b}, token("c", c)}
	got, err := PlanNodes(ctx, nodes, neu)
	want := []string{"a: will be copied", "b: has it", "c: must get it from its token's replication; rotate only checks"}
	if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("%q %v", got, err)
	}
	// Before the add step there is no version to have.
	if got, err := PlanNodes(ctx, nodes[1:2], ""); err != nil || got[0] != "b: will be copied" {
		t.Fatalf("%q %v", got, err)
	}
}

// TestCheckNodes is the preflight: nodes whose keystores or plugins
// disagree stop it (a Surprise); more apiservers than keystores refuse it
// (a UsageError), unless the phases are already done; an apiserver count
// that fails only warns.
func TestCheckNodes(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (*Runner, string) {
		var c cluster
		self, p := newKeyset(t)
		r := c.runner(t, self)
		a, _ := nodeCopy(t, p)
		r.Nodes = []*Node{{URI: "a", Backend: a, Manager: a}}
		r.NodePlugins = []Plugin{plugin("unix:///a.sock", a)}
		begin(t, r)
		return r, primaryOf(t, self)
	}
	t.Run("agree", func(t *testing.T) {
		r, primary := setup(t)
		r.APIServers = func(context.Context) (int, error) { return 2, nil }
		if err := r.CheckNodes(ctx, primary); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("too many apiservers", func(t *testing.T) {
		r, primary := setup(t)
		r.APIServers = func(context.Context) (int, error) { return 3, nil }
		var u UsageError
		if err := r.CheckNodes(ctx, primary); !errors.As(err, &u) || !strings.Contains(err.Error(), "lists 3 apiservers") {
			t.Fatalf("%v", err)
		}
		// Phases done by hand: --new-key already primary changes nothing.
		r.State.NewKey = primary
		r.State.OldKey = "older"
		if err := r.CheckNodes(ctx, primary); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("count fails", func(t *testing.T) {
		r, primary := setup(t)
		var log strings.Builder
		r.Log = &log
		r.APIServers = func(context.Context) (int, error) { return 0, errors.New("no kubeconfig") }
		if err := r.CheckNodes(ctx, primary); err != nil || !strings.Contains(log.String(), "warning: could not count the kube-apiservers (no kubeconfig)") {
			t.Fatalf("%v %q", err, log.String())
		}
	})
	t.Run("diverged keystore", func(t *testing.T) {
		r, primary := setup(t)
		other, _ := newKeyset(t)
		r.Nodes[0] = &Node{URI: "a", Backend: other, Manager: other}
		var s Surprise
		if err := r.CheckNodes(ctx, primary); !errors.As(err, &s) || !strings.Contains(s.Msg, "the nodes' keystores differ") {
			t.Fatalf("%v", err)
		}
		// A resumed rotation has changed the primaries itself: no check.
		r.Resume = true
		if err := r.CheckNodes(ctx, primary); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a node's plugin on another key", func(t *testing.T) {
		r, primary := setup(t)
		other, _ := newKeyset(t)
		r.NodePlugins = []Plugin{plugin("unix:///a.sock", other)}
		var s Surprise
		if err := r.CheckNodes(ctx, primary); !errors.As(err, &s) || !strings.Contains(s.Msg, "keywarden on unix:///a.sock is not healthy on "+primary) {
			t.Fatalf("%v", err)
		}
	})
}

func TestCheckPlugin(t *testing.T) {
	ctx := context.Background()
	var c cluster
	self, _ := newKeyset(t)
	r := c.runner(t, self)
	primary := primaryOf(t, self)
	if err := r.CheckPlugin(ctx, primary); err != nil {
		t.Fatal(err)
	}
	var s Surprise
	if err := r.CheckPlugin(ctx, "tink:7:other"); !errors.As(err, &s) || !strings.Contains(s.Msg, "is not file:///self's primary tink:7:other") {
		t.Fatalf("plugin on another keystore: %v", err)
	}
	r.Resume = true // mid-rotation the plugin may serve either key
	if err := r.CheckPlugin(ctx, "tink:7:other"); err != nil {
		t.Fatal(err)
	}
	spy := keystoretest.NewSpy(self)
	spy.SetErr(keystore.ErrUnavailable)
	r.Plugin = plugin("unix:///self.sock", spy)
	if err := r.CheckPlugin(ctx, primary); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("Status failing: %v", err)
	}
}

// TestCountAPIServers reads the default/kubernetes EndpointSlice: one
// address per apiserver, each counted once.
func TestCountAPIServers(t *testing.T) {
	body := `{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSliceList","metadata":{},"items":[` +
		`{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"kubernetes","namespace":"default"},"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"]},{"addresses":["10.0.0.2"]}]},` +
		`{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"kubernetes-2","namespace":"default"},"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.2","10.0.0.3"]}]}]}`
	empty := `{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSliceList","metadata":{},"items":[]}`
	for name, tc := range map[string]struct {
		body string
		want int
	}{"three": {body, 3}, "none": {empty, 0}} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices" || r.URL.Query().Get("labelSelector") != "kubernetes.io/service-name=kubernetes" {
					http.NotFound(w, r)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			dyn, err := dynamic.NewForConfig(&rest.Config{Host: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			n, err := CountAPIServers(context.Background(), dyn)
			if tc.want == 0 {
				if err == nil {
					t.Fatalf("no addresses: %d, no error", n)
				}
				return
			}
			if err != nil || n != tc.want {
				t.Fatalf("%d %v, want %d", n, err, tc.want)
			}
		})
	}
}

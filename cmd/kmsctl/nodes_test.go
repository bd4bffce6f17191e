package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/internal/rotation"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
)

// haNode is one control-plane node for rotate --nodes tests: its own
// keyset file (a copy of the first node's) and a fake keywarden whose
// Status reports that keyset's primary, as the real one does.
type haNode struct {
	path, uri, sock string
}

func haNodes(t *testing.T, n int) []haNode {
	t.Helper()
	first := newKeyset(t)
	raw, err := os.ReadFile(strings.TrimPrefix(first, "file://"))
	if err != nil {
		t.Fatal(err)
	}
	var nodes []haNode
	for i := range n {
		p := strings.TrimPrefix(first, "file://")
		if i > 0 {
			p = filepath.Join(t.TempDir(), "keyset.json")
			if err := os.WriteFile(p, raw, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		b, err := file.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sock := startPlugin(t, func() *kmsapi.StatusResponse {
			id, err := b.KeyID(context.Background())
			if err != nil {
				return &kmsapi.StatusResponse{Version: "v2", Healthz: err.Error()}
			}
			return &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: id}
		})
		nodes = append(nodes, haNode{path: p, uri: "file://" + p, sock: sock})
	}
	return nodes
}

func haArgs(dir string, nodes []haNode) []string {
	var uris, socks []string
	for _, n := range nodes[1:] {
		uris = append(uris, n.uri)
		socks = append(socks, n.sock)
	}
	return []string{"rotate", "--keystore", nodes[0].uri, "--socket", nodes[0].sock,
		"--nodes", strings.Join(uris, ","), "--node-sockets", strings.Join(socks, ","),
		"--etcd-endpoints", "http://127.0.0.1:1", "--kubeconfig", filepath.Join(dir, "none"),
		"--state-file", filepath.Join(dir, "rotate.json"), "--plugin-timeout", "10s", "--yes"}
}

func stepsDone(t *testing.T, stateFile string) map[string]string {
	t.Helper()
	st, err := rotation.Load(stateFile)
	if err != nil || st == nil {
		t.Fatalf("state: %v %v", st, err)
	}
	m := map[string]string{}
	for _, s := range st.Steps {
		m[s.Name] = s.Status
	}
	return m
}

// TestRotateNodes runs the two-phase HA rotation over three file keysets
// standing for three control-plane nodes, each with its keywarden: the new
// version reaches every keyset, is primary in all, has the same key ID (the
// same key) everywhere, and every node's keywarden reports it. What one
// node wraps under it, every other unwraps. (The pickup step then stops:
// there is no apiserver here.)
func TestRotateNodes(t *testing.T) {
	ctx := context.Background()
	nodes := haNodes(t, 3)
	old := primary(t, nodes[0].uri)
	dir := t.TempDir()
	r := run(t, "", false, haArgs(dir, nodes)...)
	t.Logf("kmsctl rotate --nodes: exit %d\n%s", r.code, r.stderr)
	if !strings.Contains(r.stderr, "HA, two phases") || !strings.Contains(r.stderr, "could not count the kube-apiservers") {
		t.Fatalf("plan and warning: %+v", r)
	}
	done := stepsDone(t, filepath.Join(dir, "rotate.json"))
	if done[rotation.StepAdd] != "done" || done[rotation.StepPromote] != "done" || done[rotation.StepPlugin] != "done" || done[rotation.StepPickup] != "failed" {
		t.Fatalf("steps %v: %+v", done, r)
	}
	neu := primary(t, nodes[0].uri)
	if neu == old {
		t.Fatal("no new primary")
	}
	a, err := file.Open(nodes[0].path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := a.Wrap(ctx, []byte("kek"), []byte("aad"))
	if err != nil || w.KeyID != neu {
		t.Fatalf("wrap: %+v %v", w, err)
	}
	for _, n := range nodes {
		vs := listKeys(t, n.uri)
		if len(vs) != 2 || primary(t, n.uri) != neu || state(t, n.uri, old) != keystore.KeyEnabled {
			t.Fatalf("node %s: %+v", n.uri, vs)
		}
		b, err := file.Open(n.path)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := b.Unwrap(ctx, w, []byte("aad")); err != nil || !bytes.Equal(pt, []byte("kek")) {
			t.Fatalf("node %s cannot unwrap under %s: %v", n.uri, neu, err)
		}
	}
}

// TestRotateNodesRefuses: phase 2 never starts while a node lacks the new
// version, and a node whose keyset differs stops rotate before any change.
func TestRotateNodesRefuses(t *testing.T) {
	t.Run("node lacks the key at promote", func(t *testing.T) {
		nodes := haNodes(t, 3)
		old := primary(t, nodes[0].uri)
		// Phase 1 recorded as done, but the new version reached only node 1.
		neu := addKey(t, nodes[0].uri)
		b0, _ := file.Open(nodes[0].path)
		b1, _ := file.Open(nodes[1].path)
		if _, err := b1.Import(context.Background(), b0, neu); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		args := haArgs(dir, nodes)
		st := rotation.State{Version: 1, Keystore: nodes[0].uri, Nodes: []string{nodes[1].uri, nodes[2].uri}, OldKey: old, NewKey: neu,
			Steps: []rotation.StepResult{{Name: rotation.StepAdd, Status: "done"}}}
		if err := st.Save(filepath.Join(dir, "rotate.json")); err != nil {
			t.Fatal(err)
		}
		r := run(t, "", false, append(args, "--resume")...)
		if r.code != exitProblem || !strings.Contains(r.stderr, "refusing to promote") || !strings.Contains(r.stderr, nodes[2].uri) {
			t.Fatalf("resume: %+v", r)
		}
		for _, n := range nodes {
			if p := primary(t, n.uri); p != old {
				t.Fatalf("node %s promoted %s although node 2 lacks it", n.uri, p)
			}
		}
		// --resume with other --nodes is refused.
		if r := run(t, "", false, append(haArgs(dir, nodes[:2]), "--resume")...); r.code != exitUsage || !strings.Contains(r.stderr, "records --nodes") {
			t.Fatalf("resume with other nodes: %+v", r)
		}
	})
	t.Run("new key disabled on a node", func(t *testing.T) {
		nodes := haNodes(t, 3)
		old := primary(t, nodes[0].uri)
		neu := addKey(t, nodes[0].uri)
		b0, _ := file.Open(nodes[0].path)
		b1, _ := file.Open(nodes[1].path)
		if _, err := b1.Import(context.Background(), b0, neu); err != nil {
			t.Fatal(err)
		}
		if r := run(t, "", false, "keys", "disable", "--keystore", nodes[1].uri, neu); r.code != 0 {
			t.Fatal(r)
		}
		dir := t.TempDir()
		r := run(t, "", false, append(haArgs(dir, nodes), "--new-key", neu)...)
		if r.code != exitProblem || !strings.Contains(r.stderr, "phase 1") {
			t.Fatalf("rotate: %+v", r)
		}
		if done := stepsDone(t, filepath.Join(dir, "rotate.json")); done[rotation.StepAdd] != "failed" || done[rotation.StepPromote] != "" {
			t.Fatalf("steps: %v", done)
		}
		for _, n := range nodes {
			if p := primary(t, n.uri); p != old {
				t.Fatalf("node %s promoted %s in a failed phase 1", n.uri, p)
			}
		}
	})
	t.Run("diverged keysets", func(t *testing.T) {
		nodes := haNodes(t, 2)
		other := newKeyset(t) // another keyset altogether
		nodes[1].uri = other
		before, _ := os.ReadFile(nodes[0].path)
		r := run(t, "", false, haArgs(t.TempDir(), nodes)...)
		if r.code != exitProblem || !strings.Contains(r.stderr, "keystores differ") {
			t.Fatalf("rotate: %+v", r)
		}
		if after, _ := os.ReadFile(nodes[0].path); !bytes.Equal(before, after) || len(listKeys(t, other)) != 1 {
			t.Fatal("rotate changed a keystore before refusing")
		}
	})
	t.Run("node named twice", func(t *testing.T) {
		nodes := haNodes(t, 2)
		nodes[1].uri = nodes[0].uri
		if r := run(t, "", false, haArgs(t.TempDir(), nodes)...); r.code != exitUsage || !strings.Contains(r.stderr, "named twice") {
			t.Fatalf("rotate: %+v", r)
		}
	})
}

// fakeAPIServer serves only the default/kubernetes EndpointSlice, listing
// one address per kube-apiserver, and returns a kubeconfig for it.
func fakeAPIServer(t *testing.T, addrs ...string) string {
	t.Helper()
	var eps []string
	for _, a := range addrs {
		eps = append(eps, `{"addresses":["`+a+`"]}`)
	}
	body := `{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSliceList","metadata":{},"items":[{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",` +
		`"metadata":{"name":"kubernetes","namespace":"default","labels":{"kubernetes.io/service-name":"kubernetes"}},"addressType":"IPv4","endpoints":[` + strings.Join(eps, ",") + `]}]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices" || r.URL.Query().Get("labelSelector") != "kubernetes.io/service-name=kubernetes" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: " + srv.URL + "}}]\nusers: [{name: u, user: {token: x}}]\n" +
		"contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
	if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return kc
}

// TestRotateCountsAPIServers: on a control plane whose kubernetes
// EndpointSlice lists three apiservers, rotate refuses to add and promote
// in fewer than three keystores, changing nothing; with --nodes naming the
// other two it goes ahead; with --new-key already primary (phases done by
// hand) it does not ask.
func TestRotateCountsAPIServers(t *testing.T) {
	nodes := haNodes(t, 3)
	kc := fakeAPIServer(t, "10.0.0.1", "10.0.0.2", "10.0.0.3")
	withKC := func(args []string) []string {
		for i, a := range args {
			if a == "--kubeconfig" {
				args[i+1] = kc
			}
		}
		return args
	}
	old := primary(t, nodes[0].uri)

	// Without --nodes, or with one node of two: refused, nothing changed.
	for _, ns := range [][]haNode{{nodes[0]}, nodes[:2]} {
		var args []string
		if len(ns) == 1 {
			args = withKC([]string{"rotate", "--keystore", nodes[0].uri, "--socket", nodes[0].sock, "--etcd-endpoints", "http://127.0.0.1:1",
				"--kubeconfig", "", "--state-file", filepath.Join(t.TempDir(), "rotate.json"), "--yes"})
		} else {
			args = withKC(haArgs(t.TempDir(), ns))
		}
		r := run(t, "", false, args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, "lists 3 apiservers") {
			t.Fatalf("%d keystores for 3 apiservers: %+v", len(ns), r)
		}
		for _, n := range nodes {
			if vs := listKeys(t, n.uri); len(vs) != 1 {
				t.Fatalf("refused rotate changed %s: %+v", n.uri, vs)
			}
		}
	}
	// Every node named: the guard passes (pickup then fails on the fake).
	dir := t.TempDir()
	r := run(t, "", false, withKC(haArgs(dir, nodes))...)
	if done := stepsDone(t, filepath.Join(dir, "rotate.json")); done[rotation.StepPromote] != "done" || strings.Contains(r.stderr, "apiservers") {
		t.Fatalf("all nodes: %v %+v", done, r)
	}
	neu := primary(t, nodes[0].uri)
	if neu == old {
		t.Fatal("not rotated")
	}
	// Phases done (here by the run above): --new-key NEW on one node passes.
	r = run(t, "", false, withKC([]string{"rotate", "--keystore", nodes[0].uri, "--socket", nodes[0].sock, "--etcd-endpoints", "http://127.0.0.1:1",
		"--kubeconfig", "", "--state-file", filepath.Join(t.TempDir(), "rotate.json"), "--yes", "--new-key", neu, "--old-key", old})...)
	if strings.Contains(r.stderr, "apiservers") || !strings.Contains(r.stderr, "promote: done ("+neu+" was already primary)") {
		t.Fatalf("--new-key already primary: %+v", r)
	}
}

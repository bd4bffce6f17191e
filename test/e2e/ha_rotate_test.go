//go:build e2e

package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// TestHARotateNodes runs `kmsctl rotate --nodes` on a two-node control
// plane (one etcd, two kube-apiservers, each with its own keywarden on its
// own copy of the keyset): the dry run shows the two phases and changes
// nothing; the rotation copies the new version into node b's keyset before
// promoting it anywhere, promotes it on both, waits for both keywardens,
// migrates through node a and audits zero objects under the old key. Both
// keysets then have the same primary, node b's apiserver writes under it,
// and every Secret reads back through both apiservers.
func TestHARotateNodes(t *testing.T) {
	ctx := testCtx(t, 10*time.Minute)
	c, nodes := startTwoNodes(t)
	e, ksA, ksB := c.Etcd, nodes[0].ks, nodes[1].ks
	const provider = cluster.DefaultProvider
	const ns = "ha-rotate"
	ensureNamespace(t, ctx, nodes[0].a, ns)
	want := putSecrets(t, ctx, nodes[0].a, ns, 300)
	k1, err := ksA.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}

	base := []string{"rotate", "--keystore", ksA.URI(), "--socket", nodes[0].kw.Socket,
		"--nodes", ksB.URI(), "--node-sockets", nodes[1].kw.Socket,
		"--kubeconfig", nodes[0].a.Kubeconfig, "--etcd-endpoints", strings.Join(e.Endpoints, ","),
		"--resources", "secrets", "--state-file", filepath.Join(t.TempDir(), "rotate.json"), "--pickup-poll", "2s"}
	r := kmsctlRun(t, ctx, c, append(base, "--dry-run")...)
	if r.code != 0 || !strings.Contains(r.stdout, "phase 1: put it on every other node ("+ksB.URI()+": will be copied)") || !strings.Contains(r.stdout, "phase 2") {
		t.Fatalf("dry run: %+v", r)
	}
	for _, ks := range []*cluster.Keyset{ksA, ksB} {
		if vs, _ := ks.List(ctx); len(vs) != 1 {
			t.Fatalf("dry run changed %s: %+v", ks.URI(), vs)
		}
	}

	start := time.Now()
	r = kmsctlRun(t, ctx, c, append(base, "--yes", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("rotate --nodes: %+v", r)
	}
	t.Logf("rotate --nodes took %s:\n%s", time.Since(start).Round(time.Second), r.stderr)
	var rep struct {
		Rotation struct {
			NewKeyID string
			Complete bool
			Steps    []struct{ Step, Status, Detail string }
		}
		Migrate struct {
			Summary struct{ Rewritten, Failed int }
		}
		Audit struct{ KeyIDs map[string]int }
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	k2 := rep.Rotation.NewKeyID
	if !rep.Rotation.Complete || k2 == "" || k2 == k1 || rep.Migrate.Summary.Rewritten < len(want) || rep.Audit.KeyIDs[k1] != 0 {
		t.Fatalf("report: %s", r.stdout)
	}
	if d := rep.Rotation.Steps[0].Detail; !strings.Contains(d, "copied to 1 of 1 other nodes") {
		t.Fatalf("add step: %q", d)
	}
	for _, ks := range []*cluster.Keyset{ksA, ksB} {
		if p, err := ks.Primary(ctx); err != nil || p != k2 {
			t.Fatalf("%s primary %s %v, want %s", ks.URI(), p, err, k2)
		}
	}
	for _, n := range nodes {
		if st, err := n.kw.Status(ctx); err != nil || st.KeyID != k2 {
			t.Fatalf("keywarden Status %+v %v", st, err)
		}
	}
	// Node b's apiserver picks the new key up too, and both read everything.
	d := waitForWriteKeyID(t, ctx, e, nodes[1].a, provider, ns, k2)
	t.Logf("node b writes under %s %s after the rotation", k2, d.Round(time.Second))
	if n := storedKeyIDs(t, ctx, c, "/registry/secrets/"+ns+"/"); n[k1] != 0 {
		t.Fatalf("stored key_ids: %v", n)
	}
	for _, n := range nodes {
		for name, v := range want {
			got, err := getSecretValue(ctx, n.a, ns, name, "v")
			if err != nil || string(got) != v {
				t.Fatalf("read %s: %q %v", name, got, err)
			}
		}
	}
}

// haNode is one control-plane node of startTwoNodes.
type haNode struct {
	ks *cluster.Keyset
	kw *cluster.Keywarden
	a  *cluster.APIServer
}

// startTwoNodes starts a two-node control plane: one etcd, and on each node
// a keyset (node b's a copy of node a's), a keywarden and a kube-apiserver
// whose provider is that keywarden. The Cluster is node a's.
func startTwoNodes(t *testing.T) (*cluster.Cluster, []*haNode) {
	t.Helper()
	tools := cluster.MustTools(t)
	e := cluster.StartEtcd(t, tools, cluster.EtcdOptions{})
	ksA := cluster.NewKeyset(t, tools)
	ksB, err := ksA.CopyTo(filepath.Join(t.TempDir(), "node-b", "keyset.json"))
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*haNode{{ks: ksA}, {ks: ksB}}
	for _, n := range nodes {
		n.kw = cluster.StartKeywarden(t, tools, cluster.KeywardenOptions{Keyset: n.ks})
		n.a = cluster.StartAPIServer(t, tools, cluster.APIServerOptions{
			EtcdServers: e.Endpoints,
			Providers:   []cluster.Provider{cluster.KMSv2(cluster.DefaultProvider, n.kw.Socket), cluster.Identity()},
		})
	}
	return &cluster.Cluster{Tools: tools, Etcd: e, Keywarden: nodes[0].kw, APIServer: nodes[0].a, Provider: cluster.DefaultProvider}, nodes
}

//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// TestHA runs two control-plane nodes on a 3-member etcd cluster: two
// kube-apiservers, each with its own keywarden and its own copy of one
// keyset. It rotates the root key in two phases (add and distribute
// everywhere, then promote node by node) and checks at every step that a
// write through either apiserver reads back through the other, and that the
// stored key_id is the writer's primary. After migrating through one
// apiserver, every object is under the new key and every stored secret and
// configmap reads through both apiservers.
func TestHA(t *testing.T) {
	tools := cluster.MustTools(t)
	ctx := testCtx(t, 10*time.Minute)
	e := cluster.StartEtcd(t, tools, cluster.EtcdOptions{Members: 3})
	ksA := cluster.NewKeyset(t, tools)
	ksB, err := ksA.CopyTo(filepath.Join(t.TempDir(), "node-b", "keyset.json"))
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		name string
		ks   *cluster.Keyset
		kw   *cluster.Keywarden
		a    *cluster.APIServer
	}
	const provider = cluster.DefaultProvider
	nodes := []*node{{name: "a", ks: ksA}, {name: "b", ks: ksB}}
	for _, n := range nodes {
		n.kw = cluster.StartKeywarden(t, tools, cluster.KeywardenOptions{Keyset: n.ks, StateFile: true})
		n.a = cluster.StartAPIServer(t, tools, cluster.APIServerOptions{
			EtcdServers: e.Endpoints,
			Providers:   []cluster.Provider{cluster.KMSv2(provider, n.kw.Socket), cluster.Identity()},
		})
	}
	const ns = "ha"
	ensureNamespace(t, ctx, nodes[0].a, ns)
	want := map[string]string{}

	// step writes one secret through each apiserver, checks its stored
	// key_id, and reads everything written so far through both.
	step := func(label string, keyIDs ...string) {
		t.Helper()
		for i, n := range nodes {
			name, v := label+"-via-"+n.name, unique(label)
			if err := putSecret(ctx, n.a, ns, name, map[string][]byte{"v": []byte(v)}); err != nil {
				t.Fatalf("%s: write via %s: %v", label, n.name, err)
			}
			want[name] = v
			if obj := assertSealed(t, ctx, e, provider, secretKey(ns, name), []byte(v)); obj.KeyID != keyIDs[i] {
				t.Fatalf("%s: write via %s stored under %q, want %q", label, n.name, obj.KeyID, keyIDs[i])
			}
		}
		for _, n := range nodes {
			for name, v := range want {
				eventually(t, 15*time.Second, 200*time.Millisecond, fmt.Sprintf("%s: read %s via %s", label, name, n.name), func() error {
					got, err := getSecretValue(ctx, n.a, ns, name, "v")
					if err == nil && string(got) != v {
						err = fmt.Errorf("got %q, want %q", got, v)
					}
					return err
				})
			}
		}
		t.Logf("%s: %d secrets read back through both apiservers", label, len(want))
	}
	waitStatus := func(n *node, keyID string) {
		t.Helper()
		eventually(t, 20*time.Second, 200*time.Millisecond, "node "+n.name+" Status key_id "+keyID, func() error {
			st, err := n.kw.Status(ctx)
			if err == nil && (st.KeyID != keyID || st.Healthz != "ok") {
				err = fmt.Errorf("Status %+v", st)
			}
			return err
		})
	}

	k1, err := ksA.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	step("initial", k1, k1)

	// Phase 1: add the new version and distribute it to every node. It is
	// not primary anywhere, so nothing changes yet.
	k2v, err := ksA.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k2 := k2v.KeyID
	if _, err := ksA.CopyTo(ksB.Path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	for _, n := range nodes {
		waitStatus(n, k1)
	}
	step("added", k1, k1)

	// Phase 2: promote node by node. In between, node a writes under k2
	// and node b under k1, and each reads the other's writes because both
	// versions are in both keysets.
	for i, n := range nodes {
		if err := n.ks.Promote(ctx, k2); err != nil {
			t.Fatal(err)
		}
		waitStatus(n, k2)
		d := waitForWriteKeyID(t, ctx, e, n.a, provider, ns, k2)
		t.Logf("node %s writes under the new key %s after promote", n.name, d.Round(time.Second))
		ids := []string{k1, k1}
		for j := 0; j <= i; j++ {
			ids[j] = k2
		}
		step(fmt.Sprintf("promoted-%d", i+1), ids...)
	}

	// Migrate through node a; then nothing may remain under k1 and
	// everything must read through both nodes.
	a := nodes[0].a
	list := kubectl(t, ctx, a, "", "get", "secrets,configmaps", "-A", "-o", "json")
	if _, err := a.Kubectl(ctx, list, "replace", "-f", "-"); err != nil {
		t.Logf("first replace pass: %v", err)
		list = kubectl(t, ctx, a, "", "get", "secrets,configmaps", "-A", "-o", "json")
		kubectl(t, ctx, a, list, "replace", "-f", "-")
	}
	var stored int
	for _, prefix := range []string{"/registry/secrets/", "/registry/configmaps/"} {
		kvs, err := e.List(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			obj, err := cluster.ParseKMSv2(kv.Value, provider)
			if err != nil {
				t.Errorf("%s: %v", kv.Key, err)
			} else if obj.KeyID != k2 {
				t.Errorf("%s still under %q after migration", kv.Key, obj.KeyID)
			}
		}
		stored += len(kvs)
	}
	step("migrated", k2, k2)

	// None unreadable: every stored secret and configmap, not only the
	// test's own, lists through both apiservers (a LIST fails outright if
	// a single object does not decrypt).
	var storedKeys []string
	for _, prefix := range []string{"/registry/secrets/", "/registry/configmaps/"} {
		kvs, err := e.List(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			storedKeys = append(storedKeys, kv.Key)
		}
	}
	for _, n := range nodes {
		out, err := n.a.Kubectl(ctx, "", "get", "secrets,configmaps", "-A", "-o", "json")
		if err != nil {
			t.Fatalf("after migration, reading every secret and configmap via %s: %v", n.name, err)
		}
		var l struct {
			Items []struct {
				Kind     string
				Metadata struct{ Namespace, Name string }
			}
		}
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			t.Fatalf("via %s: kubectl get -o json: %v", n.name, err)
		}
		listed := map[string]bool{}
		for _, it := range l.Items {
			listed["/registry/"+strings.ToLower(it.Kind)+"s/"+it.Metadata.Namespace+"/"+it.Metadata.Name] = true
		}
		for _, k := range storedKeys {
			if !listed[k] {
				t.Errorf("via %s: %s is in etcd but not listed", n.name, k)
			}
		}
		t.Logf("after migration: node %s reads all %d stored secrets and configmaps (%d listed)", n.name, len(storedKeys), len(l.Items))
	}
	for _, n := range nodes {
		m, err := n.kw.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c := m.Counts()
		if c.DecryptFailed != 0 {
			t.Errorf("node %s: %d failed Decrypt RPCs", n.name, int(c.DecryptFailed))
		}
		t.Logf("node %s keywarden: %d Decrypt, %d Encrypt RPCs, %d keystore unwraps", n.name, int(c.DecryptOK), int(c.EncryptOK), int(c.Unwraps))
	}
	t.Logf("after migration: %d stored objects all under %s; %d test secrets readable through both apiservers", stored, k2, len(want))
}

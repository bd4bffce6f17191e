//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// TestRootKeyRotation rotates the root key while keywarden and
// kube-apiserver keep running: `kmsctl keys add` changes nothing visible,
// `kmsctl keys promote` changes keywarden's Status key_id, kube-apiserver
// then writes under the new key_id (decoded from the stored
// EncryptedObject), objects under the old key still read (also after both
// processes restart, so the old version really unwraps), and after
// `kubectl get secrets,configmaps -A -o json | kubectl replace -f -` every
// stored object carries the new key_id.
func TestRootKeyRotation(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx := testCtx(t, 8*time.Minute)
	a, e, kw := c.APIServer, c.Etcd, c.Keywarden
	ks := kw.Keyset()
	k1, err := ks.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := kw.Status(ctx); err != nil || st.KeyID != k1 || st.Healthz != "ok" {
		t.Fatalf("Status = %+v, %v; want healthy with key_id %s", st, err, k1)
	}

	const ns = "rotation"
	ensureNamespace(t, ctx, a, ns)
	old := map[string]string{}
	for i := range 10 {
		name, v := fmt.Sprintf("old-%d", i), unique("old")
		if err := putSecret(ctx, a, ns, name, map[string][]byte{"v": []byte(v)}); err != nil {
			t.Fatal(err)
		}
		if obj := assertSealed(t, ctx, e, c.Provider, secretKey(ns, name), []byte(v)); obj.KeyID != k1 {
			t.Fatalf("%s stored under %q, want %q", name, obj.KeyID, k1)
		}
		old[name] = v
	}

	// Phase 1: add. Nothing changes until the version is primary.
	k2v, err := ks.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k2 := k2v.KeyID
	if k2v.Primary || k2 == k1 {
		t.Fatalf("keys add returned %+v (old primary %s)", k2v, k1)
	}
	time.Sleep(2 * time.Second) // two check intervals
	if st, _ := kw.Status(ctx); st.KeyID != k1 {
		t.Fatalf("after keys add, Status key_id = %q, want still %q", st.KeyID, k1)
	}

	// Phase 2: promote. keywarden notices within its check interval, the
	// apiserver at its next Status call.
	if err := ks.Promote(ctx, k2); err != nil {
		t.Fatal(err)
	}
	dStatus := eventually(t, 20*time.Second, 200*time.Millisecond, "Status key_id "+k2, func() error {
		st, err := kw.Status(ctx)
		if err == nil && (st.KeyID != k2 || st.Healthz != "ok") {
			err = fmt.Errorf("Status %+v", st)
		}
		return err
	})
	dWrite := waitForWriteKeyID(t, ctx, e, a, c.Provider, ns, k2)
	t.Logf("after promote: keywarden Status key_id changed in %s; apiserver writes under it %s later",
		dStatus.Round(time.Millisecond), dWrite.Round(time.Second))

	v := unique("new")
	if err := putSecret(ctx, a, ns, "new", map[string][]byte{"v": []byte(v)}); err != nil {
		t.Fatal(err)
	}
	if obj := assertSealed(t, ctx, e, c.Provider, secretKey(ns, "new"), []byte(v)); obj.KeyID != k2 {
		t.Fatalf("new write stored under %q, want %q", obj.KeyID, k2)
	}
	checkOld := func(when string) {
		t.Helper()
		for name, want := range old {
			got, err := getSecretValue(ctx, a, ns, name, "v")
			if err != nil || string(got) != want {
				t.Fatalf("%s: %s = %q, %v; want %q", when, name, got, err, want)
			}
		}
	}
	checkOld("after promote")
	for name := range old {
		if obj := assertSealed(t, ctx, e, c.Provider, secretKey(ns, name)); obj.KeyID != k1 {
			t.Fatalf("%s was rewritten to %q before migration", name, obj.KeyID)
		}
	}

	// Fresh processes: the old objects' local KEK must now be unwrapped by
	// the keystore under k1, which is no longer primary.
	a.Stop()
	if err := kw.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Start(); err != nil {
		t.Fatal(err)
	}
	checkOld("after restarting keywarden and kube-apiserver")
	m, err := kw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := m.Counts(); n.Unwraps < 1 || n.DecryptFailed != 0 {
		t.Fatalf("after restart: %+v; want keystore unwraps of the k1 KEK and no failed Decrypt", n)
	}

	// Migrate: rewrite everything through the apiserver.
	list := kubectl(t, ctx, a, "", "get", "secrets,configmaps", "-A", "-o", "json")
	if out, err := a.Kubectl(ctx, list, "replace", "-f", "-"); err != nil {
		// An object the apiserver itself changed since the list
		// conflicts; a second pass settles it.
		t.Logf("first replace pass: %v", err)
		list = kubectl(t, ctx, a, "", "get", "secrets,configmaps", "-A", "-o", "json")
		kubectl(t, ctx, a, list, "replace", "-f", "-")
	} else {
		t.Logf("replaced %d objects", strings.Count(out, "replaced"))
	}
	total := 0
	for _, prefix := range []string{"/registry/secrets/", "/registry/configmaps/"} {
		kvs, err := e.List(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			obj, err := cluster.ParseKMSv2(kv.Value, c.Provider)
			if err != nil {
				t.Errorf("%s: %v", kv.Key, err)
			} else if obj.KeyID != k2 {
				t.Errorf("%s still under key_id %q after migration", kv.Key, obj.KeyID)
			}
		}
		total += len(kvs)
	}
	t.Logf("after migration: %d stored objects, all under %s", total, k2)
	checkOld("after migration")
}

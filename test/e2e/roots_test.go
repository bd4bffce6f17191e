//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/kms/envelope"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// MetricRootUnwraps counts local KEKs unwrapped, by the root that served.
const metricRootUnwraps = "keywarden_keystore_root_unwraps_total"

// TestSecondRootSurvivesVaultLoss is issue 14's scenario (a): keywarden
// runs with two roots, a Vault Transit key (primary) and a file keyset,
// and a state file. Secrets are written under a local KEK wrapped under
// both. Then the Vault dev server is replaced by an empty one on the same
// address (its Transit key, and keywarden's token, gone), and keywarden and
// kube-apiserver restart with nothing cached: keywarden adopts its state
// file's KEK through the file root, every Secret reads back byte-identical,
// keystore_root_unwraps_total shows the file root served and Vault none,
// Status is not ok (a down root fails the check; without an ok check since
// start there is no grace) but carries the state file's key_id, and new
// Secrets are still written under that KEK, as in any keystore outage.
// Last, a control: with the file root gone as well, the state file alone
// gives keywarden no KEK.
func TestSecondRootSurvivesVaultLoss(t *testing.T) {
	begin := time.Now()
	tools := cluster.MustTools(t)
	bin, err := cluster.VaultBin()
	if err != nil {
		requireOrSkip(t, "KEYWARDEN_REQUIRE_VAULT", err.Error())
	}
	v := cluster.StartVault(t, tools, bin)
	file := cluster.NewKeyset(t, tools)
	c := cluster.Start(t, cluster.Options{
		Keyset: v.Keyset,
		Keywarden: cluster.KeywardenOptions{
			StateFile: true,
			ExtraArgs: []string{"--keystore", file.URI()},
		},
	})
	ctx := testCtx(t, 6*time.Minute)
	a, kw := c.APIServer, c.Keywarden

	st, err := kw.Status(ctx)
	if err != nil || st.Healthz != "ok" || !strings.HasPrefix(st.KeyID, "roots:2:") {
		t.Fatalf("Status = %+v, %v; want healthy with a roots:2: key_id", st, err)
	}
	k1 := st.KeyID

	// Step 1: Secrets under a local KEK wrapped under both roots.
	const ns, n = "roots", 12
	ensureNamespace(t, ctx, a, ns)
	want := putSecrets(t, ctx, a, ns, n)
	for name, val := range want {
		obj := assertSealed(t, ctx, c.Etcd, c.Provider, secretKey(ns, name), []byte(val))
		if obj.KeyID != k1 {
			t.Fatalf("%s stored under key_id %q, want %q", name, obj.KeyID, k1)
		}
		ann, err := envelope.DecodeAnnotation(obj.Annotations[envelope.AnnotationKey])
		if err != nil {
			t.Fatalf("%s: local KEK annotation: %v", name, err)
		}
		if len(ann.Copies) != 2 || ann.Copies[0].Backend != "vault" || ann.Copies[1].Backend != "file" {
			t.Fatalf("%s: local KEK copies %+v, want one under vault, then one under file", name, ann.Copies)
		}
	}
	if ids := storedKeyIDs(t, ctx, c, "/registry/secrets/"+ns+"/"); ids[k1] != n || len(ids) != 1 {
		t.Fatalf("stored key_ids %v, want all %d under %s", ids, n, k1)
	}

	// Step 2: Vault loses everything; keywarden and the apiserver restart
	// with cold caches.
	a.Stop()
	kw.Stop()
	v.RestartEmpty(t, bin)
	admin, err := v.Admin()
	if err != nil {
		t.Fatal(err)
	}
	if mounts, err := admin.Sys().ListMounts(); err != nil {
		t.Fatal(err)
	} else if _, ok := mounts["transit/"]; ok {
		t.Fatalf("the restarted Vault dev server still has a transit/ mount: %v", keys(mounts))
	}
	if _, err := v.Keyset.Primary(ctx); err == nil {
		t.Fatal("kmsctl still reads the Vault root's key after the restart")
	}
	if err := kw.StartUnready(); err != nil {
		t.Fatal(err)
	}
	if err := a.StartNoWait(); err != nil {
		t.Fatal(err)
	}

	// Step 3: every Secret reads back, through keywarden's Decrypt.
	dRead := eventually(t, 2*time.Minute, time.Second, "every Secret reads after the restart", func() error {
		for name, val := range want {
			got, err := getSecretValue(ctx, a, ns, name, "v")
			if err != nil {
				return err
			}
			if string(got) != val {
				return fmt.Errorf("%s reads %q, want %q", name, got, val)
			}
		}
		return nil
	})

	m, err := kw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cnt := m.Counts()
	fileServed := m.Sum(metricRootUnwraps, "root", "1", "backend", "file")
	vaultServed := m.Sum(metricRootUnwraps, "root", "0", "backend", "vault")
	vaultUnwrapsOK := m.Sum(cluster.MetricKeystoreOpCount, "backend", "vault", "op", "unwrap", "result", "ok")
	vaultUnwrapsFailed := m.Sum(cluster.MetricKeystoreOpCount, "backend", "vault", "op", "unwrap") - vaultUnwrapsOK
	vaultKeyIDFailed := m.Sum(cluster.MetricKeystoreOpCount, "backend", "vault", "op", "key_id") -
		m.Sum(cluster.MetricKeystoreOpCount, "backend", "vault", "op", "key_id", "result", "ok")
	t.Logf("after the restart: %+v; root unwraps: file %v, vault %v; vault unwraps failed %v, key_id reads failed %v",
		cnt, fileServed, vaultServed, vaultUnwrapsFailed, vaultKeyIDFailed)
	if fileServed < 1 || vaultServed != 0 || vaultUnwrapsOK != 0 {
		t.Errorf("%s: file root served %v, vault %v (%v vault unwraps ok); want the file root only", metricRootUnwraps, fileServed, vaultServed, vaultUnwrapsOK)
	}
	if vaultUnwrapsFailed < 1 || vaultKeyIDFailed < 1 {
		t.Errorf("vault: %v failed unwraps, %v failed key_id reads; want the empty Vault asked and refusing", vaultUnwrapsFailed, vaultKeyIDFailed)
	}
	if cnt.DecryptOK == 0 || cnt.DecryptFailed != 0 {
		t.Errorf("Decrypts after the restart: %v ok, %v failed; want some, none failed", cnt.DecryptOK, cnt.DecryptFailed)
	}

	// Status: a down root fails every check (docs/architecture.md, several
	// root keystores: no new KEK can be made), and with no check ok since
	// start there is no grace to spend, so not ok, at once. The key_id is
	// still the state file's, so the apiserver keeps its seed.
	st, err = kw.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Status with Vault empty: %+v", st)
	if st.Healthz == "ok" || st.KeyID != k1 {
		t.Errorf("Status with Vault empty = %+v; want not ok, key_id %s", st, k1)
	}
	if err := kw.Ready(ctx); err == nil {
		t.Error("keywarden /readyz is ok with the primary root unusable")
	}
	logs := cluster.Tail(kw.LogPath, 300)
	for _, line := range []string{"root 0 (vault)", "root keystore did not open", "local KEK unwrapped by a fallback root", "adopted the state file's local KEK with a root keystore down"} {
		if !strings.Contains(logs, line) {
			t.Errorf("keywarden's log does not say %q", line)
		}
	}

	// Step 4: writes go on under the adopted KEK, which stays current (no
	// new KEK can be made without every root).
	fresh := unique("fresh")
	if err := putSecret(ctx, a, ns, "written-while-vault-empty", map[string][]byte{"v": []byte(fresh)}); err != nil {
		t.Fatalf("write with Vault empty: %v", err)
	}
	if obj := assertSealed(t, ctx, c.Etcd, c.Provider, secretKey(ns, "written-while-vault-empty"), []byte(fresh)); obj.KeyID != k1 {
		t.Errorf("write with Vault empty stored under %q, want the adopted KEK's %q", obj.KeyID, k1)
	}
	if got, err := getSecretValue(ctx, a, ns, "written-while-vault-empty", "v"); err != nil || string(got) != fresh {
		t.Errorf("written-while-vault-empty reads %q, %v; want %q", got, err, fresh)
	}
	m, err = kw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const gens = "keywarden_kek_generations_total"
	if adopted, all := m.Sum(gens, "reason", "state"), m.Sum(gens); adopted != 1 || all != 1 {
		t.Errorf("%s: %v adopted from the state file, %v in all since the restart; want the state file's KEK, and no new one", gens, adopted, all)
	}
	// Control: the state file alone is no way around the roots. With the
	// file root gone too, the restarted keywarden adopts nothing, and so
	// has no KEK and no key_id.
	kw.Stop()
	if err := os.Rename(file.Path, file.Path+".away"); err != nil {
		t.Fatal(err)
	}
	if err := kw.StartUnready(); err != nil {
		t.Fatal(err)
	}
	if st, err := kw.Status(ctx); err != nil || st.KeyID != "" || !strings.Contains(st.Healthz, "no local KEK") {
		t.Errorf("Status with both roots unusable = %+v, %v; want no local KEK and no key_id", st, err)
	}
	t.Logf("every Secret read %s after keywarden restarted; %s in all", dRead.Round(100*time.Millisecond),
		time.Since(begin).Round(100*time.Millisecond))
}

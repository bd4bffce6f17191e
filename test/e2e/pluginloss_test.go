//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// TestPluginLoss kills keywarden with SIGKILL under a running
// kube-apiserver: reads keep working (seeds are cached), a write with the
// current seed still works and reads back, /readyz/kms-providers fails
// while /livez stays healthy, and when keywarden restarts on the same
// socket (removing the stale one) readiness recovers. No stored object is
// lost or rewritten.
func TestPluginLoss(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Keywarden: cluster.KeywardenOptions{StateFile: true}})
	ctx := testCtx(t, 8*time.Minute)
	a, e, kw := c.APIServer, c.Etcd, c.Keywarden

	const ns = "loss"
	ensureNamespace(t, ctx, a, ns)
	want := map[string]string{}
	for i := range 20 {
		name, v := fmt.Sprintf("s-%02d", i), unique("before")
		if err := putSecret(ctx, a, ns, name, map[string][]byte{"v": []byte(v)}); err != nil {
			t.Fatal(err)
		}
		want[name] = v
	}
	readAll := func(when string) {
		t.Helper()
		for name, v := range want {
			got, err := getSecretValue(ctx, a, ns, name, "v")
			if err != nil || string(got) != v {
				t.Fatalf("%s: %s = %q, %v; want %q", when, name, got, err, v)
			}
		}
	}
	readAll("before the loss")
	before, err := e.List(ctx, "/registry/secrets/"+ns+"/")
	if err != nil {
		t.Fatal(err)
	}

	kw.Kill()
	t.Log("keywarden killed with SIGKILL")
	readAll("with keywarden dead")

	// A write within three minutes uses the current seed, no plugin call.
	v := unique("during")
	if err := putSecret(ctx, a, ns, "during-outage", map[string][]byte{"v": []byte(v)}); err != nil {
		t.Fatalf("write with keywarden dead: %v", err)
	}
	want["during-outage"] = v
	assertSealed(t, ctx, e, c.Provider, secretKey(ns, "during-outage"), []byte(v))
	readAll("with keywarden dead, after a write")

	var failure string
	dFail := eventually(t, 90*time.Second, time.Second, "/readyz/kms-providers fails", func() error {
		code, body, err := a.Readyz(ctx, "kms-providers")
		if err != nil {
			return err
		}
		if code == http.StatusOK {
			return fmt.Errorf("still HTTP 200")
		}
		failure = cluster.FailingChecks(body)
		return nil
	})
	t.Logf("/readyz/kms-providers failed %s after the kill: %s", dFail.Round(time.Second), failure)
	if code, body, err := a.Readyz(ctx, ""); err != nil || code == http.StatusOK {
		t.Errorf("/readyz = %d, %v with the plugin dead; want a failure", code, err)
	} else {
		t.Logf("/readyz fails on: %s", cluster.FailingChecks(body))
	}
	if code, body, err := a.Livez(ctx, ""); err != nil || code != http.StatusOK {
		t.Errorf("/livez = %d, %v (%s): a dead plugin must not make the apiserver look dead", code, err, cluster.FailingChecks(body))
	}

	if err := kw.Start(); err != nil {
		t.Fatalf("restart keywarden on the stale socket: %v", err)
	}
	dOK := eventually(t, 90*time.Second, time.Second, "/readyz/kms-providers recovers", func() error {
		code, body, err := a.Readyz(ctx, "kms-providers")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("HTTP %d: %s", code, cluster.FailingChecks(body))
		}
		return err
	})
	t.Logf("/readyz/kms-providers recovered %s after keywarden restarted", dOK.Round(time.Second))
	if err := a.WaitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}

	readAll("after recovery")
	v = unique("after")
	if err := putSecret(ctx, a, ns, "after-recovery", map[string][]byte{"v": []byte(v)}); err != nil {
		t.Fatal(err)
	}
	want["after-recovery"] = v
	readAll("after recovery and a write")
	after, err := e.List(ctx, "/registry/secrets/"+ns+"/")
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before)+2 {
		t.Errorf("etcd holds %d secrets in %s, want %d", len(after), ns, len(before)+2)
	}
	stored := map[string][]byte{}
	for _, kv := range after {
		stored[kv.Key] = kv.Value
		if _, err := cluster.ParseKMSv2(kv.Value, c.Provider); err != nil {
			t.Errorf("%s: %v", kv.Key, err)
		}
	}
	for _, kv := range before {
		if !bytes.Equal(stored[kv.Key], kv.Value) {
			t.Errorf("%s: stored value changed across the outage", kv.Key)
		}
	}
}

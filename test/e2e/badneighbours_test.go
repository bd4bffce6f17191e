//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// TestBadNeighbours covers data and plugins that are not what the
// apiserver expects.
//
// identity: objects written before encryption was enabled (identity first)
// stay readable once KMS v2 is first, and are sealed when rewritten.
//
// wrong keyset: keywarden restarted on a different keyset (a wrong root
// key) makes the apiserver's reads fail with an error naming the failed
// decryption, keeps /readyz failing past the 1-minute storage-readiness
// timeout (/livez is only logged: it recovers after that minute), makes
// updates fail instead of overwriting, and leaves every stored byte as it
// was; with the right keyset back, everything reads.
func TestBadNeighbours(t *testing.T) {
	// Encryption not yet enabled: identity writes, kms can already read.
	c := cluster.Start(t, cluster.Options{Providers: func(kw *cluster.Keywarden) []cluster.Provider {
		return []cluster.Provider{cluster.Identity(), cluster.KMSv2(cluster.DefaultProvider, kw.Socket)}
	}})
	ctx := testCtx(t, 8*time.Minute)
	a, e, kw := c.APIServer, c.Etcd, c.Keywarden
	const ns = "neighbours"
	ensureNamespace(t, ctx, a, ns)

	t.Run("identity-written object", func(t *testing.T) {
		v, cm := unique("legacy"), unique("legacy-cm")
		if err := putSecret(ctx, a, ns, "legacy", map[string][]byte{"v": []byte(v)}); err != nil {
			t.Fatal(err)
		}
		kubectl(t, ctx, a, "", "create", "configmap", "legacy", "-n", ns, "--from-literal=v="+cm)
		for key, p := range map[string]string{secretKey(ns, "legacy"): v, configMapKey(ns, "legacy"): cm} {
			raw := rawValue(t, ctx, e, key)
			if sv := stored.Parse(raw); sv.Class != stored.Plaintext || !bytes.Contains(raw, []byte(p)) {
				t.Fatalf("%s: stored as %s; want identity, in clear", key, sv.Label())
			}
		}

		// Enable encryption: KMS v2 first, identity second for old data.
		if err := a.SetProviders(cluster.KMSv2(c.Provider, kw.Socket), cluster.Identity()); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Restart(); err != nil {
			t.Fatal(err)
		}
		if got, err := getSecretValue(ctx, a, ns, "legacy", "v"); err != nil || string(got) != v {
			t.Fatalf("identity-written secret after enabling KMS: %q, %v", got, err)
		}
		if got := kubectl(t, ctx, a, "", "get", "configmap", "legacy", "-n", ns, "-o", "jsonpath={.data.v}"); got != cm {
			t.Fatalf("identity-written configmap after enabling KMS: %q", got)
		}
		if sv := stored.Parse(rawValue(t, ctx, e, secretKey(ns, "legacy"))); sv.Class != stored.Plaintext {
			t.Fatalf("a read rewrote the legacy secret (%s)", sv.Label())
		}
		// Rewrite as-is: the apiserver sees the identity value as stale
		// and stores it through the first provider.
		kubectl(t, ctx, a, kubectl(t, ctx, a, "", "get", "secret,configmap", "legacy", "-n", ns, "-o", "json"), "replace", "-f", "-")
		assertSealed(t, ctx, e, c.Provider, secretKey(ns, "legacy"), []byte(v))
		assertSealed(t, ctx, e, c.Provider, configMapKey(ns, "legacy"), []byte(cm))
		if got, err := getSecretValue(ctx, a, ns, "legacy", "v"); err != nil || string(got) != v {
			t.Fatalf("after rewrite: %q, %v", got, err)
		}
	})

	t.Run("wrong keyset", func(t *testing.T) {
		right := kw.Keyset()
		want := map[string]string{}
		for i := range 5 {
			name, v := fmt.Sprintf("w-%d", i), unique("right")
			if err := putSecret(ctx, a, ns, name, map[string][]byte{"v": []byte(v)}); err != nil {
				t.Fatal(err)
			}
			want[name] = v
		}
		snapshot, err := e.List(ctx, "/registry/secrets/"+ns+"/")
		if err != nil {
			t.Fatal(err)
		}

		// Same socket, a keyset whose root key never sealed anything here.
		a.Stop()
		kw.Stop()
		kw.SetKeyset(cluster.NewKeyset(t, c.Tools))
		if err := kw.Start(); err != nil {
			t.Fatal(err)
		}
		if err := a.StartNoWait(); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		var readErr error
		seen := map[string]bool{}
		eventually(t, 90*time.Second, time.Second, "a read fails with a decryption error", func() error {
			_, readErr = getSecretValue(ctx, a, ns, "w-0", "v")
			switch {
			case readErr == nil:
				return fmt.Errorf("read succeeded under the wrong keyset")
			case !strings.Contains(readErr.Error(), "failed to decrypt"):
				// Before the apiserver has tried etcd it may answer
				// otherwise (storage initialising); note it and retry.
				if !seen[readErr.Error()] {
					seen[readErr.Error()] = true
					t.Logf("meanwhile: %v", readErr)
				}
				return readErr
			}
			return nil
		})
		t.Logf("read under the wrong keyset, %s after start: %v", time.Since(started).Round(time.Second), readErr)
		// The plugin's gRPC code and reason reach the client: the object's
		// root key version is not in this keyset.
		if !strings.Contains(readErr.Error(), "code = NotFound") || !strings.Contains(readErr.Error(), "not found") {
			t.Errorf("read error %q does not carry keywarden's NotFound (unknown key version)", readErr)
		}
		// Health under the wrong keyset. keywarden's Status is fine (its
		// keyset opens), so /readyz/kms-providers passes; what fails is
		// storage. The storage-readiness post-start hook gives up after
		// --storage-initialization-timeout (1 min) and passes from then
		// on, so sample both endpoints every second until 75 s after the
		// apiserver started: /readyz must never answer 200 (its
		// informer-sync check waits for the apiserver's own Secrets
		// informer, which cannot list); /livez is reported as it is.
		type sample struct {
			code    int
			failing string
		}
		var ready, live []sample
		var liveOK time.Duration // first /livez 200, after start
		for time.Since(started) < 75*time.Second || len(ready) < 15 {
			for _, p := range []struct {
				get func(context.Context, string) (int, string, error)
				to  *[]sample
			}{{a.Readyz, &ready}, {a.Livez, &live}} {
				code, body, err := p.get(ctx, "")
				if err != nil {
					t.Fatalf("health under the wrong keyset: %v", err)
				}
				smp := sample{code: code}
				if code != 200 {
					smp.failing = cluster.FailingChecks(body)
				}
				*p.to = append(*p.to, smp)
			}
			if live[len(live)-1].code == 200 && liveOK == 0 {
				liveOK = time.Since(started)
			}
			time.Sleep(time.Second)
		}
		summary := func(ss []sample) string {
			codes, failing := map[int]int{}, map[string]bool{}
			for _, s := range ss {
				codes[s.code]++
				if s.failing != "" {
					failing[s.failing] = true
				}
			}
			return fmt.Sprintf("HTTP codes %v, failing %q", codes, keys(failing))
		}
		t.Logf("under the wrong keyset, %d samples up to %s after start: /readyz %s; /livez %s (first 200 at %s)",
			len(ready), time.Since(started).Round(time.Second), summary(ready), summary(live), liveOK.Round(time.Second))
		for _, s := range ready {
			if s.code == 200 {
				t.Errorf("/readyz answered 200 under the wrong keyset (%s)", summary(ready))
				break
			}
		}

		// An update must read the old object first: it fails, it never
		// overwrites.
		if err := putSecret(ctx, a, ns, "w-1", map[string][]byte{"v": []byte(unique("overwrite"))}); err == nil {
			t.Error("an update succeeded under the wrong keyset")
		} else if !strings.Contains(err.Error(), "failed to decrypt") {
			t.Errorf("update under the wrong keyset: %v; want a decryption failure", err)
		}
		m, err := kw.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := m.Counts()
		notFound := m.Sum(cluster.MetricGRPCHandled, "grpc_method", "Decrypt", "grpc_code", "NotFound")
		t.Logf("keywarden under the wrong keyset: %d Decrypt RPCs OK, %d NotFound, %d failed in all; %d keystore unwraps",
			int(n.DecryptOK), int(notFound), int(n.DecryptFailed), int(n.Unwraps))
		if n.DecryptOK != 0 || notFound == 0 {
			t.Errorf("Decrypt under the wrong keyset: %d OK, %d NotFound; want none OK and NotFound", int(n.DecryptOK), int(notFound))
		}
		assertUnchanged := func(when string) {
			t.Helper()
			for _, kv := range snapshot {
				if raw := rawValue(t, ctx, e, kv.Key); !bytes.Equal(raw, kv.Value) {
					t.Errorf("%s: %s changed in etcd", when, kv.Key)
				}
			}
		}
		assertUnchanged("under the wrong keyset")

		// The right keyset back: everything reads, nothing was lost.
		a.Stop()
		kw.Stop()
		kw.SetKeyset(right)
		if err := kw.Start(); err != nil {
			t.Fatal(err)
		}
		dReady, err := a.Start()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("right keyset back: kube-apiserver ready in %s", dReady.Round(time.Millisecond))
		for name, v := range want {
			if got, err := getSecretValue(ctx, a, ns, name, "v"); err != nil || string(got) != v {
				t.Errorf("with the right keyset again: %s = %q, %v; want %q", name, got, err, v)
			}
		}
		assertUnchanged("after restoring the right keyset")
		if m, err := kw.Metrics(ctx); err != nil {
			t.Fatal(err)
		} else if f := m.Counts().DecryptFailed; f != 0 {
			t.Errorf("%d Decrypt RPCs failed with the right keyset", int(f))
		}
	})
}

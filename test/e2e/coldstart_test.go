//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// TestColdStart writes N Secrets (N = $KEYWARDEN_E2E_COLD_N, default and
// minimum 1000) in batches separated by kube-apiserver restarts, so several
// DEK seeds exist (and keywarden restarts once in between, its state file
// keeping one local KEK): keywarden must have answered at least one Encrypt
// per apiserver start, and etcd must hold the Secrets under at least as many
// distinct encrypted seeds as there were batches. It then restarts keywarden
// (cold KEK cache) and kube-apiserver, measures the time to /readyz, counts
// keywarden's Decrypt RPCs and keystore unwraps during that start-up, and
// checks that every object reads back. The keystore must be called at most
// once per distinct local KEK, however many Decrypts the apiserver sends.
func TestColdStart(t *testing.T) {
	// The scenario is specified for at least 1000 objects: fewer would
	// make the start-up burst (and the one-unwrap-per-KEK bound under it)
	// too small to mean anything. Larger N is allowed.
	const minN = 1000
	n := minN
	if s := os.Getenv("KEYWARDEN_E2E_COLD_N"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < minN {
			t.Fatalf("KEYWARDEN_E2E_COLD_N=%q: want an integer ≥ %d (the cold start is specified for at least %d Secrets; "+
				"unset it for the default)", s, minN, minN)
		}
	}
	const batches = 4
	c := cluster.Start(t, cluster.Options{Keywarden: cluster.KeywardenOptions{StateFile: true}})
	ctx := testCtx(t, 10*time.Minute)
	a, e, kw := c.APIServer, c.Etcd, c.Keywarden

	const ns = "cold"
	ensureNamespace(t, ctx, a, ns)
	want := make(map[string]string, n)
	var encrypts float64 // Encrypt RPCs = seeds made, summed over keywarden runs
	addEncrypts := func() {
		t.Helper()
		m, err := kw.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		encrypts += m.Counts().EncryptOK
	}
	start := time.Now()
	for b := range batches {
		if b > 0 {
			a.Stop()
			if b == batches/2 {
				addEncrypts()
				if err := kw.Restart(); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := a.Start(); err != nil {
				t.Fatal(err)
			}
		}
		lo, hi := b*n/batches, (b+1)*n/batches
		names := make(chan int)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range names {
					name, v := fmt.Sprintf("s-%05d", i), unique("cold")
					err := putSecret(ctx, a, ns, name, map[string][]byte{"v": []byte(v)})
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					want[name] = v
					mu.Unlock()
				}
			}()
		}
		for i := lo; i < hi; i++ {
			names <- i
		}
		close(names)
		wg.Wait()
		if firstErr != nil {
			t.Fatal(firstErr)
		}
	}
	addEncrypts()
	t.Logf("wrote %d secrets in %d batches over %d apiserver starts in %s",
		n, batches, batches, time.Since(start).Round(time.Second))

	// What etcd holds: every object sealed by keywarden, and how many
	// distinct local KEKs a cold start must unwrap.
	keks := map[string]bool{}
	seeds := map[string]int{} // encrypted DEK seed → cold Secrets under it
	objects := 0
	for _, prefix := range []string{"/registry/secrets/", "/registry/configmaps/"} {
		kvs, err := e.List(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			obj, err := cluster.ParseKMSv2(kv.Value, c.Provider)
			if err != nil {
				t.Fatalf("%s: %v", kv.Key, err)
			}
			k, ok, err := obj.KeywardenKEK()
			if !ok || err != nil {
				t.Fatalf("%s: no keywarden KEK annotation (%v)", kv.Key, err)
			}
			keks[k.ID] = true
			if strings.HasPrefix(kv.Key, secretKey(ns, "")) {
				seed, err := encryptedDEKSource(kv.Value, c.Provider)
				if err != nil {
					t.Fatalf("%s: %v", kv.Key, err)
				}
				seeds[string(seed)]++
			}
		}
		objects += len(kvs)
	}
	for i := 0; i < 10; i++ {
		name := fmt.Sprintf("s-%05d", i*n/10)
		assertSealed(t, ctx, e, c.Provider, secretKey(ns, name), []byte(want[name]))
	}
	t.Logf("stored: %d objects (%d secrets) under %d local KEK(s); %d Encrypt RPCs (seeds made) while writing, "+
		"the secrets under %d distinct encrypted seeds",
		objects, n, len(keks), int(encrypts), len(seeds))
	// Several seeds, or the cold start below proves little: each
	// apiserver start makes a fresh seed through keywarden's Encrypt, and
	// each batch is written with its start's seed.
	if encrypts < batches {
		t.Fatalf("keywarden answered %d Encrypt RPCs over %d apiserver starts, want at least one per start (%d): "+
			"the batches were not written under separate DEK seeds", int(encrypts), batches, batches)
	}
	if len(seeds) < batches {
		t.Fatalf("the %d secrets are stored under %d distinct encrypted DEK seeds, want at least %d (one per batch/apiserver start)",
			n, len(seeds), batches)
	}

	// Two cold starts: keywarden adopting its state file (the KEK is
	// unwrapped once at its start-up, before any Decrypt), then keywarden
	// without it (a fresh KEK; the old one is unwrapped on the first
	// Decrypt, all concurrent Decrypts sharing that one keystore call).
	for _, keepState := range []bool{true, false} {
		label := "keywarden with its state file"
		if !keepState {
			label = "keywarden without its state file"
		}
		t.Run(label, func(t *testing.T) {
			a.Stop()
			kw.Stop()
			if !keepState {
				if err := os.Remove(kw.StatePath()); err != nil {
					t.Fatal(err)
				}
			}
			if err := kw.Start(); err != nil {
				t.Fatal(err)
			}
			m0, err := kw.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ready, err := a.Start()
			if err != nil {
				t.Fatal(err)
			}
			m1, err := kw.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			listStart := time.Now()
			list, err := a.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			listTook := time.Since(listStart)
			got := map[string]string{}
			for _, s := range list.Items {
				got[s.Name] = string(s.Data["v"])
			}
			bad := 0
			for name, v := range want {
				if got[name] != v {
					bad++
				}
			}
			if bad > 0 || len(got) != len(want) {
				t.Errorf("%d of %d secrets wrong or missing (listed %d)", bad, len(want), len(got))
			}
			for i := 0; i < 10; i++ {
				name := fmt.Sprintf("s-%05d", i*n/10+1)
				if v, err := getSecretValue(ctx, a, ns, name, "v"); err != nil || string(v) != want[name] {
					t.Errorf("GET %s = %q, %v", name, v, err)
				}
			}
			am, err := a.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			apiDecrypts := am.Sum("apiserver_envelope_encryption_kms_operations_latency_seconds_count",
				"provider_name", c.Provider, "method_name", "/v2.KeyManagementService/Decrypt")
			before, after := m0.Counts(), m1.Counts()
			decrypts := after.DecryptOK - before.DecryptOK
			unwraps := after.Unwraps - before.Unwraps
			t.Logf("/readyz in %s; %d Decrypt RPCs (apiserver counted %d), %d failed; keystore unwraps: %d during start-up, %d before it; "+
				"KEK cache hits %d, misses %d; first LIST of %d secrets %s",
				ready.Round(time.Millisecond), int(decrypts), int(apiDecrypts), int(after.DecryptFailed),
				int(unwraps), int(before.Unwraps), int(after.CacheHits-before.CacheHits),
				int(after.CacheMisses-before.CacheMisses), len(list.Items), listTook.Round(time.Millisecond))

			if after.DecryptFailed != 0 {
				t.Errorf("%d Decrypt RPCs failed", int(after.DecryptFailed))
			}
			if decrypts < float64(batches) {
				t.Errorf("%d Decrypt RPCs at start-up, want at least one per seed (%d batches)", int(decrypts), batches)
			}
			if after.Unwraps > float64(len(keks)) {
				t.Errorf("keystore unwrapped %d times since keywarden started, want at most once per distinct local KEK (%d)",
					int(after.Unwraps), len(keks))
			}
			if !keepState && unwraps < 1 {
				t.Errorf("no keystore unwrap during start-up without the state file: the old KEK cannot have been cached")
			}
			if ready > time.Minute {
				t.Errorf("/readyz took %s", ready)
			}
		})
	}
	if len(keks) != 1 {
		t.Errorf("%d distinct local KEKs in etcd, want 1: the state file should carry the KEK across keywarden restarts", len(keks))
	}
}

// encryptedDEKSource returns the encryptedDEKSource (field 3) of a KMS v2
// value's EncryptedObject: the sealed seed, the same bytes for every object
// written with one seed.
func encryptedDEKSource(v []byte, provider string) ([]byte, error) {
	b, ok := bytes.CutPrefix(v, []byte(cluster.KMSv2Prefix(provider)))
	if !ok {
		return nil, fmt.Errorf("not a KMS v2 value of %s", provider)
	}
	var seed []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		if num == 3 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			seed = v
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
	}
	if len(seed) == 0 {
		return nil, fmt.Errorf("no encryptedDEKSource")
	}
	return seed, nil
}

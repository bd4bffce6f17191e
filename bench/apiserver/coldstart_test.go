//go:build e2e

package apiserver

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/bench"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// TestAPIServerColdStart fills etcd with many DEK seeds, each made by a
// kube-apiserver start, and then times cold starts: the plugin restarted
// (an empty KEK cache), then kube-apiserver started and timed to /readyz,
// which it reaches only after decrypting every seed it meets. Three
// plugins, each with its own apiserver and etcd prefix, measured in
// rotating order round by round: the no-op floor, keywarden with a keystore
// that takes 20 ms a call (kwlab), and the benchmark-only per-call plugin
// on the same slow keystore.
//
// KWBENCH_SEEDS (default 50) seeds; the plugin restarts every
// KWBENCH_SEEDS_PER_KEK (default 10) of them, so keywarden's ciphertexts
// span seeds/per-KEK local KEKs; KWBENCH_SECRETS_PER_SEED (default 5)
// Secrets are written under each seed; KWBENCH_COLD_ROUNDS (default 3)
// rounds.
func TestAPIServerColdStart(t *testing.T) {
	seeds := envInt(t, "KWBENCH_SEEDS", 50)
	perKEK := envInt(t, "KWBENCH_SEEDS_PER_KEK", 10)
	rounds := envInt(t, "KWBENCH_COLD_ROUNDS", 3)
	const delay = 20 * time.Millisecond
	perSeed := envInt(t, "KWBENCH_SECRETS_PER_SEED", 5) // Secrets written under each seed
	gates := gateMode(t)
	out := outDir(t, "coldstart")
	start := time.Now()
	tools := cluster.MustTools(t)
	bins := buildBench(t)
	etcd := cluster.StartEtcd(t, tools, cluster.EtcdOptions{})
	ks := cluster.NewKeyset(t, tools)
	lab := filepath.Join(bins, "kwlab")
	type target struct {
		name string
		pl   *plugin
		a    *cluster.APIServer
		// encrypts counts Encrypt RPCs (seeds made) over plugin restarts.
		encrypts float64
	}
	targets := []*target{
		{name: "floor", pl: newPlugin(t, "floor", filepath.Join(bins, "kwfloor"))},
		{name: "keywarden-slowks", pl: newPlugin(t, "keywarden-slowks", lab, "--keystore", ks.URI(), "--keystore-delay", delay.String())},
		{name: "percall-slowks", pl: newPlugin(t, "percall-slowks", lab, "--keystore", ks.URI(), "--keystore-delay", delay.String(), "--mode", "per-call")},
	}
	ctx := context.Background()
	for _, tg := range targets {
		tg.a = cluster.StartAPIServer(t, tools, cluster.APIServerOptions{
			EtcdServers: etcd.Endpoints, Resources: []string{"secrets"},
			Providers: []cluster.Provider{cluster.KMSv2(tg.name, tg.pl.endpoint()), cluster.Identity()},
			ExtraArgs: []string{"--etcd-prefix=/kwcold-" + tg.name},
		})
		if _, err := tg.a.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cold"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	encrypts := func(tg *target) float64 {
		if tg.pl.http == "" {
			return 0
		}
		b, err := httpGet(ctx, "http://"+tg.pl.http+"/metrics")
		if err != nil {
			t.Error(err)
			return 0
		}
		m, err := cluster.ParseMetrics(strings.NewReader(b))
		if err != nil {
			t.Error(err)
		}
		return m.Sum(cluster.MetricGRPCHandled, "grpc_method", "Encrypt", "grpc_code", "OK")
	}

	// Seeds: one per apiserver start; a new local KEK every perKEK starts.
	// The three targets fill in parallel: this part is not measured.
	var wg sync.WaitGroup
	errs := make([]error, len(targets))
	for i, tg := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = func() error {
				for s := range seeds {
					if s > 0 {
						tg.a.Stop()
						if s%perKEK == 0 {
							tg.encrypts += encrypts(tg)
							if err := tg.pl.restart(); err != nil {
								return err
							}
						}
						if _, err := tg.a.Start(); err != nil {
							return err
						}
					}
					for j := range perSeed {
						_, err := tg.a.Client.CoreV1().Secrets("cold").Create(ctx, &corev1.Secret{
							ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("seed%03d-%d", s, j)},
							Data:       map[string][]byte{"v": []byte(fmt.Sprintf("value %d/%d", s, j))},
						}, metav1.CreateOptions{})
						if err != nil {
							return err
						}
					}
				}
				tg.encrypts += encrypts(tg)
				return nil
			}()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: making seeds: %v", targets[i].name, err)
		}
	}
	t.Logf("made %d seeds per plugin in %s", seeds, time.Since(start).Round(time.Second))

	// What keywarden's ciphertexts in etcd need: distinct local KEKs.
	kvs, err := etcd.List(ctx, "/kwcold-keywarden-slowks/secrets/")
	if err != nil {
		t.Fatal(err)
	}
	keks := map[string]bool{}
	for _, kv := range kvs {
		obj, err := cluster.ParseKMSv2(kv.Value, "keywarden-slowks")
		if err != nil {
			t.Fatalf("%s: %v", kv.Key, err)
		}
		k, ok, err := obj.KeywardenKEK()
		if !ok || err != nil {
			t.Fatalf("%s: no keywarden KEK (%v)", kv.Key, err)
		}
		keks[k.ID] = true
	}
	t.Logf("keywarden-slowks: %d objects, %.0f seeds (Encrypt RPCs), %d distinct local KEKs", len(kvs), targets[1].encrypts, len(keks))

	type round struct {
		Target   string        `json:"target"`
		Round    int           `json:"round"`
		Ready    time.Duration `json:"ready_ns"`
		Decrypts float64       `json:"decrypt_rpcs"`
		Unwraps  float64       `json:"keystore_unwraps"`
	}
	var results []round
	for r := range rounds {
		for k := range targets {
			tg := targets[(k+r)%len(targets)]
			tg.a.Stop()
			if err := tg.pl.restart(); err != nil {
				t.Fatal(err)
			}
			d0, u0, err := tg.pl.counts(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ready, err := tg.a.Start()
			if err != nil {
				t.Fatal(err)
			}
			d1, u1, err := tg.pl.counts(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Every object must read back (not timed).
			l, err := tg.a.Client.CoreV1().Secrets("cold").List(ctx, metav1.ListOptions{})
			if err != nil || len(l.Items) != seeds*perSeed {
				t.Fatalf("%s: list after cold start: %d items, %v", tg.name, len(l.Items), err)
			}
			results = append(results, round{Target: tg.name, Round: r + 1, Ready: ready, Decrypts: d1 - d0, Unwraps: u1 - u0})
			t.Logf("round %d %-18s ready in %8s  decrypt RPCs %4.0f  keystore unwraps %4.0f", r+1, tg.name, ready.Round(time.Millisecond), d1-d0, u1-u0)
		}
	}

	rep := &bench.Report{Floor: "floor", Meta: meta(start, fmt.Sprintf(
		"KWBENCH_SEEDS=%d KWBENCH_SEEDS_PER_KEK=%d KWBENCH_SECRETS_PER_SEED=%d KWBENCH_COLD_ROUNDS=%d go test -tags e2e -run '^TestAPIServerColdStart$' -v -timeout 60m ./bench/apiserver", seeds, perKEK, perSeed, rounds))}
	rep.Meta.Notes = append(rep.Meta.Notes, fmt.Sprintf(
		"%d seeds per plugin (one per kube-apiserver start, %d Secrets each); the plugin restarted every %d seeds. keywarden-slowks' objects span %d distinct local KEKs (read from etcd). Keystore calls take %s more in kwlab.",
		seeds, perSeed, perKEK, len(keks), delay))
	byTarget := func(name string) []round {
		var out []round
		for _, x := range results {
			if x.Target == name {
				out = append(out, x)
			}
		}
		return out
	}
	tbl := bench.Table{Title: "Cold start to /readyz", Header: []string{"target", "ready s (median)", "ready / floor (median of per-round)", "per round s", "Decrypt RPCs per round", "keystore unwraps per round"}}
	floorRounds := byTarget("floor")
	var kwRatio float64
	var kwWorst float64
	for _, tg := range targets {
		rs := byTarget(tg.name)
		var ready, ratio []float64
		var per, dec, unw []string
		for i, x := range rs {
			ready = append(ready, x.Ready.Seconds())
			ratio = append(ratio, bench.Ratio(x.Ready.Seconds(), floorRounds[i].Ready.Seconds()))
			per = append(per, fmt.Sprintf("%.2f", x.Ready.Seconds()))
			dec = append(dec, fmt.Sprintf("%.0f", x.Decrypts))
			unw = append(unw, fmt.Sprintf("%.0f", x.Unwraps))
			if tg.name == "keywarden-slowks" {
				kwWorst = max(kwWorst, x.Unwraps)
			}
		}
		if tg.name == "floor" {
			dec, unw = []string{"–"}, []string{"–"}
		}
		med := bench.Median(ratio)
		if tg.name == "keywarden-slowks" {
			kwRatio = med
		}
		tbl.Rows = append(tbl.Rows, []string{tg.name, fmt.Sprintf("%.2f", bench.Median(ready)), fmt.Sprintf("%.3f", med),
			strings.Join(per, " "), strings.Join(dec, " "), strings.Join(unw, " ")})
	}
	rep.Tables = append(rep.Tables, tbl)
	rep.Checks = append(rep.Checks,
		bench.GateColdStartKeystoreCalls.At(float64(len(keks))).Check(fmt.Sprintf("cold start, keystore +%s: keystore calls (worst round) ≤ distinct local KEKs (%d)", delay, len(keks)), kwWorst, ""),
		bench.GateColdStartReady.Check(fmt.Sprintf("cold start, keystore +%s: time to /readyz / floor plugin's", delay), kwRatio, ""),
	)
	rep.Extra = map[string]float64{"seeds": targets[1].encrypts, "local_keks": float64(len(keks)), "objects": float64(len(kvs))}
	rep.Raw = results
	write(t, out, rep, gates)
}

func httpGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

func meta(start time.Time, command string) bench.Meta {
	m := bench.DefaultMeta(start)
	m.Command = command
	m.Cores = runtime.NumCPU()
	return m
}

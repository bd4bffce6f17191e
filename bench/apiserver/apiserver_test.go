//go:build e2e

package apiserver

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/keywarden/keywarden/bench"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// gateMode is $KWBENCH_GATES: "report" (the default) prints a PASS, FAIL
// or INFO line per gate; "enforce" also fails the test on a failed one.
// Read at the start of a test, so that a bad value fails before an hour of
// measuring.
func gateMode(t *testing.T) bench.GateMode {
	t.Helper()
	m, err := bench.ParseGateMode(os.Getenv("KWBENCH_GATES"))
	if err != nil {
		t.Fatalf("KWBENCH_GATES: %v", err)
	}
	return m
}

// outDir is $KWBENCH_OUT, or a fresh folder under bench/results/tmp.
func outDir(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("KWBENCH_OUT")
	if dir == "" {
		root, err := cluster.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, "bench", "results", "tmp", name+"-"+time.Now().UTC().Format("20060102-150405"))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildBench builds kwfloor and kwlab into a temporary folder.
func buildBench(t *testing.T) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/", "./bench/cmd/kwfloor", "./bench/cmd/kwlab")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// plugin is a KMS v2 plugin process that the test starts itself: the floor
// or kwlab.
type plugin struct {
	name string
	bin  string
	args []string
	sock string
	http string
	log  *os.File
	p    *bench.Process
}

func newPlugin(t *testing.T, name, bin string, args ...string) *plugin {
	t.Helper()
	dir, err := os.MkdirTemp("", "kwbp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	pl := &plugin{name: name, bin: bin, args: args, sock: filepath.Join(dir, "run", "kms.sock"), log: log}
	if strings.HasSuffix(bin, "kwlab") {
		port, err := cluster.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		pl.http = fmt.Sprintf("127.0.0.1:%d", port)
		pl.args = append(pl.args, "--http-addr", pl.http)
	}
	t.Cleanup(func() { pl.stop() })
	if err := pl.start(); err != nil {
		t.Fatal(err)
	}
	return pl
}

func (pl *plugin) endpoint() string { return "unix://" + pl.sock }

func (pl *plugin) start() error {
	args := append([]string{"--listen", pl.endpoint()}, pl.args...)
	p, err := bench.StartProcess(context.Background(), pl.name, pl.sock, pl.http, pl.log, pl.bin, args...)
	pl.p = p
	return err
}

func (pl *plugin) stop() {
	if pl.p != nil {
		_ = pl.p.Stop()
		pl.p = nil
	}
}

func (pl *plugin) restart() error {
	pl.stop()
	return pl.start()
}

// counts reads kwlab's Decrypt RPCs and keystore unwraps.
func (pl *plugin) counts(ctx context.Context) (decrypts, unwraps float64, err error) {
	if pl.http == "" {
		return 0, 0, nil
	}
	spy, err := bench.FetchSpy(ctx, pl.http)
	if err != nil {
		return 0, 0, err
	}
	req, err := httpGet(ctx, "http://"+pl.http+"/metrics")
	if err != nil {
		return 0, 0, err
	}
	m, err := cluster.ParseMetrics(strings.NewReader(req))
	if err != nil {
		return 0, 0, err
	}
	return m.Sum(cluster.MetricGRPCHandled, "grpc_method", "Decrypt"), float64(spy.Unwraps), nil
}

func key32(t *testing.T) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// fastClient is the admin's clientset without client-go's default 5 QPS
// limit: the benchmark measures the server, not the client's throttle.
func fastClient(t *testing.T, a *cluster.APIServer) *kubernetes.Clientset {
	t.Helper()
	cfg := rest.CopyConfig(a.RESTConfig)
	cfg.QPS, cfg.Burst = -1, 0
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAPIServerThroughput creates, gets and lists Secrets of 1 KiB through
// seven kube-apiservers that differ only in their encryption provider
// (identity, aesgcm, aescbc, secretbox, KMS v2 → the no-op floor plugin,
// KMS v2 → keywarden, and KMS v2 → a second floor plugin as an A/A
// control), all on one etcd (each under its own prefix), in
// cycles that rotate the order of the providers. Figures are medians over
// cycles; ratios are medians of per-cycle ratios.
//
// KWBENCH_OBJECTS (default 3000) Secrets per provider, concurrency and
// cycle; KWBENCH_CYCLES (default 5) cycles.
func TestAPIServerThroughput(t *testing.T) {
	n := envInt(t, "KWBENCH_OBJECTS", 3000)
	cycles := envInt(t, "KWBENCH_CYCLES", 5)
	gates := gateMode(t)
	concs := []int{16, 64}
	out := outDir(t, "apiserver")
	start := time.Now()
	tools := cluster.MustTools(t)
	bins := buildBench(t)
	etcd := cluster.StartEtcd(t, tools, cluster.EtcdOptions{})
	kw := cluster.StartKeywarden(t, tools, cluster.KeywardenOptions{Keyset: cluster.NewKeyset(t, tools), CheckInterval: 5 * time.Second})
	fl := newPlugin(t, "floor", filepath.Join(bins, "kwfloor"))
	// fl2 serves kms-floor-2, an A/A control: a second apiserver and floor
	// plugin identical to kms-floor, whose ratio to it is the run's noise.
	fl2 := newPlugin(t, "floor-2", filepath.Join(bins, "kwfloor"))

	type target struct {
		name      string
		providers []cluster.Provider
		a         *cluster.APIServer
		c         *kubernetes.Clientset
		// plugin is the KMS plugin's pid, whose CPU counts with the
		// apiserver's.
		plugin func() int
	}
	targets := []*target{
		{name: "identity", providers: []cluster.Provider{cluster.Identity()}},
		{name: "aesgcm", providers: []cluster.Provider{cluster.AESGCM("k1", key32(t)), cluster.Identity()}},
		{name: "aescbc", providers: []cluster.Provider{cluster.AESCBC("k1", key32(t)), cluster.Identity()}},
		{name: "secretbox", providers: []cluster.Provider{cluster.Secretbox("k1", key32(t)), cluster.Identity()}},
		{name: "kms-floor", providers: []cluster.Provider{cluster.KMSv2("floor", fl.endpoint()), cluster.Identity()}, plugin: func() int { return fl.p.PID() }},
		{name: "kms-keywarden", providers: []cluster.Provider{cluster.KMSv2("keywarden", kw.Socket), cluster.Identity()}, plugin: kw.Pid},
		{name: "kms-floor-2", providers: []cluster.Provider{cluster.KMSv2("floor", fl2.endpoint()), cluster.Identity()}, plugin: func() int { return fl2.p.PID() }},
	}
	names := make([]string, len(targets))
	for i, tg := range targets {
		names[i] = tg.name
		tg.a = cluster.StartAPIServer(t, tools, cluster.APIServerOptions{
			EtcdServers: etcd.Endpoints, Providers: tg.providers, Resources: []string{"secrets"},
			// No periodic compaction: seven apiservers would each compact
			// the shared etcd every 5 minutes, inside measured phases;
			// the test compacts between phases instead.
			ExtraArgs: []string{"--etcd-prefix=/kwbench-" + tg.name, "--etcd-compaction-interval=0"},
		})
		tg.c = fastClient(t, tg.a)
	}
	payload := make([][]byte, 64)
	for i := range payload {
		payload[i] = key32(t)
		payload[i] = append(payload[i], make([]byte, 1024-32)...)
		_, _ = rand.Read(payload[i])
	}
	ops := []string{"create", "get", "list"}
	rec := bench.NewRecorder(ops, concs, names, cycles, 0)
	ctx := context.Background()
	// measure runs one phase and charges it the CPU time of the apiserver
	// and its plugin (server) and of this process (client).
	measure := func(tg *target, l bench.Load, op bench.Op) bench.Sample {
		cpu := func() time.Duration {
			d, _ := bench.ReadCPU(tg.a.Pid())
			if tg.plugin != nil {
				p, _ := bench.ReadCPU(tg.plugin())
				d += p
			}
			return d
		}
		s0, c0 := cpu(), bench.SelfCPU()
		s := bench.Run(ctx, l, op)
		s.ServerCPU, s.ClientCPU = cpu()-s0, bench.SelfCPU()-c0
		return s
	}
	kwCounts := func() cluster.KMSCounts {
		m, err := kw.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m.Counts()
	}
	kw0 := kwCounts()
	// compact makes etcd drop the history the last phase left (Secrets and
	// their tombstones) between phases, so that no apiserver's periodic
	// compaction (switched off above) lands inside a measured phase.
	compact := func() {
		out, err := etcd.Etcdctl(ctx, "endpoint", "status", "-w", "json")
		if err != nil {
			t.Fatal(err)
		}
		var st []struct {
			Status struct {
				Header struct {
					Revision int64 `json:"revision"`
				} `json:"header"`
			} `json:"Status"`
		}
		if err := json.Unmarshal(out, &st); err != nil || len(st) == 0 {
			t.Fatalf("etcdctl endpoint status: %v: %s", err, out)
		}
		if _, err := etcd.Etcdctl(ctx, "compact", "--physical", strconv.FormatInt(st[0].Status.Header.Revision, 10)); err != nil {
			t.Fatal(err)
		}
		if _, err := etcd.Etcdctl(ctx, "defrag"); err != nil {
			t.Fatal(err)
		}
	}
	// Cycle -1 is an unrecorded warm-up (caches, connections, JIT of the
	// apiservers' first requests) with fewer objects. Within a cycle the
	// providers take turns per operation (every provider creates, then every
	// provider gets, then lists), so that two providers compared are measured
	// seconds apart, not minutes; the order rotates every cycle and
	// concurrency.
	warm := min(n, 300)
	name := func(i int) string { return fmt.Sprintf("s-%05d", i) }
	for cycle := -1; cycle < cycles; cycle++ {
		n := n
		record := func(target, op string, conc, cycle int, s bench.Sample) {
			if cycle >= 0 {
				report(t, rec, target, op, conc, cycle, s)
			}
		}
		if cycle < 0 {
			n = warm
		}
		for ci, conc := range concs {
			ns := fmt.Sprintf("bench-%d-%d", cycle+1, conc)
			order := make([]*target, len(targets))
			for k := range targets {
				order[k] = targets[(k+max(cycle, 0)*len(concs)+ci)%len(targets)]
				if _, err := order[k].c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			for _, tg := range order {
				secrets := tg.c.CoreV1().Secrets(ns)
				s := measure(tg, bench.Load{Concurrency: conc, Ops: n}, func(ctx context.Context, _, i int) error {
					_, err := secrets.Create(ctx, &corev1.Secret{
						ObjectMeta: metav1.ObjectMeta{Name: name(i)},
						Data:       map[string][]byte{"v": payload[i%len(payload)]},
					}, metav1.CreateOptions{})
					return err
				})
				record(tg.name, "create", conc, cycle, s)
			}
			for _, tg := range order {
				secrets := tg.c.CoreV1().Secrets(ns)
				s := measure(tg, bench.Load{Concurrency: conc, Ops: n}, func(ctx context.Context, _, i int) error {
					_, err := secrets.Get(ctx, name((i*7919)%n), metav1.GetOptions{})
					return err
				})
				record(tg.name, "get", conc, cycle, s)
			}
			for _, tg := range order {
				secrets := tg.c.CoreV1().Secrets(ns)
				// LISTs of the whole namespace, conc at once, one per caller.
				s := measure(tg, bench.Load{Concurrency: conc, Ops: conc}, func(ctx context.Context, _, _ int) error {
					l, err := secrets.List(ctx, metav1.ListOptions{})
					if err == nil && len(l.Items) != n {
						err = fmt.Errorf("list returned %d secrets, want %d", len(l.Items), n)
					}
					return err
				})
				record(tg.name, "list", conc, cycle, s)
			}
			for _, tg := range order {
				if err := tg.c.CoreV1().Secrets(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			compact()
		}
	}
	kw1 := kwCounts()
	r := &bench.Report{
		Extra: map[string]float64{
			"keywarden_encrypt_rpcs":   kw1.EncryptOK - kw0.EncryptOK,
			"keywarden_decrypt_rpcs":   kw1.DecryptOK + kw1.DecryptFailed - kw0.DecryptOK - kw0.DecryptFailed,
			"keywarden_keystore_calls": kw1.Unwraps + kw1.Wraps - kw0.Unwraps - kw0.Wraps,
		},
		Floor: "kms-floor", Sweep: rec.Result(400), SweepTitle: "kube-apiserver: Secrets of 1 KiB",
		Meta: meta(start, fmt.Sprintf("KWBENCH_OBJECTS=%d KWBENCH_CYCLES=%d go test -tags e2e -run '^TestAPIServerThroughput$' -v -timeout 60m ./bench/apiserver", n, cycles)),
	}
	r.Meta.Notes = append(r.Meta.Notes,
		fmt.Sprintf("Seven kube-apiservers (%s), one etcd (kms-floor-2 is an A/A control: a second apiserver and floor plugin identical to kms-floor); each cycle runs create (%d Secrets of 1 KiB), get (%d) and list (%s LISTs of the namespace) at each concurrency, the providers taking turns per operation in an order that rotates every cycle and concurrency, after one unrecorded warm-up cycle of %d Secrets. The apiservers' periodic etcd compaction is off; the test compacts and defragments etcd between concurrencies, outside the measured phases.", tools.KubeAPIServer, n, n, "one per caller", warm),
		"'calls/s' is requests per second; list figures are whole-namespace LISTs. Server CPU is the kube-apiserver's plus, for KMS, its plugin's; client CPU is this test process's (client-go).",
		fmt.Sprintf("During all the cycles keywarden answered %.0f Encrypt and %.0f Decrypt RPCs and made %.0f keystore calls: kube-apiserver caches its DEK seed, so Secret traffic does not reach the plugin.",
			r.Extra["keywarden_encrypt_rpcs"], r.Extra["keywarden_decrypt_rpcs"], r.Extra["keywarden_keystore_calls"]))
	for _, tg := range targets {
		if tg.name != "kms-floor" {
			if err := r.Compare(tg.name, "kms-floor"); err != nil {
				t.Fatal(err)
			}
		}
		if tg.name != "identity" {
			if err := r.Compare(tg.name, "identity"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, op := range []string{"create", "get"} {
		for _, c := range concs {
			cmp := r.Comparison("kms-keywarden", "kms-floor", op, c)
			r.Checks = append(r.Checks, bench.GateAPIServerThroughput.Check(fmt.Sprintf("apiserver %s throughput, keywarden / floor plugin, concurrency %d", op, c),
				cmp.TputRatio, "per-cycle: "+fmtRatios(cmp.TputRatios)))
		}
	}
	for _, op := range []string{"create", "get"} {
		for _, c := range concs {
			cmp := r.Comparison("kms-keywarden", "kms-floor", op, c)
			r.Checks = append(r.Checks, bench.GateAPIServerThroughput.Check(fmt.Sprintf("apiserver %s CPU-bound throughput (from CPU per request), keywarden / floor plugin, concurrency %d", op, c),
				cmp.BoundRatio, "per-cycle: "+fmtRatios(cmp.BoundRatios)))
		}
	}
	for _, op := range []string{"create", "get"} {
		for _, c := range concs {
			cmp := r.Comparison("kms-floor-2", "kms-floor", op, c)
			r.Checks = append(r.Checks, bench.Info(fmt.Sprintf("(A/A control, not a target) apiserver %s throughput, second floor plugin / floor plugin, concurrency %d", op, c),
				cmp.TputRatio, "×", "the noise of this run; per-cycle: "+fmtRatios(cmp.TputRatios)))
		}
	}
	for _, c := range concs {
		cmp := r.Comparison("kms-floor", "identity", "create", c)
		r.Checks = append(r.Checks, bench.Info(fmt.Sprintf("(reference, not a target) apiserver create throughput, KMS v2 floor plugin / identity, concurrency %d", c),
			cmp.TputRatio, "×", "the apiserver's own KMS v2 cost"))
	}
	write(t, out, r, gates)
}

func report(t *testing.T, rec *bench.Recorder, target, op string, conc, cycle int, s bench.Sample) {
	t.Helper()
	if s.Errors > 0 {
		t.Fatalf("%s %s c=%d: %d errors, first: %v", target, op, conc, s.Errors, s.FirstErr)
	}
	sum := rec.Add(target, op, conc, s, 0)
	t.Logf("cycle %d %-14s %-6s c=%-2d %8.0f/s p50 %8s p99 %8s", cycle+1, target, op, conc, sum.Throughput,
		sum.P50.Round(10*time.Microsecond), sum.P99.Round(10*time.Microsecond))
}

func fmtRatios(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(s, " ")
}

// write writes r's results into dir, then a PASS, FAIL or INFO line per
// check; under KWBENCH_GATES=enforce a failed gate fails the test.
func write(t *testing.T, dir string, r *bench.Report, gates bench.GateMode) {
	t.Helper()
	r.Meta.Duration = time.Since(r.Meta.Start)
	var err error
	if r.Plots, err = bench.WritePlots(dir, r); err != nil {
		t.Fatal(err)
	}
	if err := bench.WriteJSON(filepath.Join(dir, "results.json"), r); err != nil {
		t.Fatal(err)
	}
	var md strings.Builder
	if err := bench.WriteMarkdown(&md, r); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("results in %s\n%s", dir, md.String())
	var v strings.Builder
	failed := bench.Verdict(&v, r.Checks)
	t.Logf("gates (KWBENCH_GATES=%s):\n%s", gates.String(), v.String())
	if err := gates.Enforce(failed); err != nil {
		t.Error(err)
	}
}

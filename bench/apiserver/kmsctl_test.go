//go:build e2e

package apiserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// BenchmarkKmsctl times `kmsctl migrate` and `kmsctl audit` over
// KWBENCH_MIGRATE_OBJECTS (default 10000) Secrets of 1 KiB against a real
// kube-apiserver, etcd and keywarden (test/e2e/cluster): before each
// migrate the root key is rotated (add, promote, wait until kube-apiserver
// writes under it) so that every Secret needs rewriting. Figures are wall
// time of the kmsctl process, as an operator sees it (start-up, discovery,
// LIST pages and updates), reported as objects/s. Migrate runs at the
// default --qps 50, unlimited (--qps -1, default --concurrency 8), and
// unlimited with --concurrency 32. kmsctl is built from this
// tree. Run once:
//
//	go test -tags e2e -run '^$' -bench BenchmarkKmsctl -benchtime 1x -timeout 60m ./bench/apiserver
func BenchmarkKmsctl(b *testing.B) {
	n := 10000
	if s := os.Getenv("KWBENCH_MIGRATE_OBJECTS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("KWBENCH_MIGRATE_OBJECTS=%q: want a positive integer", s)
		}
	}
	ctx := context.Background()
	kmsctl := buildKmsctl(b)
	c := cluster.Start(b, cluster.Options{Keywarden: cluster.KeywardenOptions{CheckInterval: time.Second}})
	a, ks := c.APIServer, c.Keywarden.Keyset()
	const ns, canaryNS = "kmsctl-bench", "kmsctl-bench-canary"
	for _, name := range []string{ns, canaryNS} {
		if _, err := a.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	t0 := time.Now()
	createSecrets(b, ctx, a, ns, n)
	b.Logf("created %d Secrets in %s", n, time.Since(t0).Round(time.Second))
	etcdArgs := []string{"--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ",")}

	// rotate adds and promotes a root version and waits until kube-apiserver
	// writes a canary Secret under it.
	rotate := func(b *testing.B) string {
		t0 := time.Now()
		v, err := ks.Add(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := ks.Promote(ctx, v.KeyID); err != nil {
			b.Fatal(err)
		}
		for i := 0; ; i++ {
			if time.Since(t0) > 5*time.Minute {
				b.Fatalf("kube-apiserver did not pick up %s in 5 minutes", v.KeyID)
			}
			_, _, _ = a.Readyz(ctx, "kms-providers") // makes it ask Status sooner
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "canary", Namespace: canaryNS}, StringData: map[string]string{"i": strconv.Itoa(i)}}
			if _, err := a.Client.CoreV1().Secrets(canaryNS).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
				if _, err := a.Client.CoreV1().Secrets(canaryNS).Create(ctx, s, metav1.CreateOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			raw, ok, err := c.Etcd.Get(ctx, "/registry/secrets/"+canaryNS+"/canary")
			if err != nil || !ok {
				b.Fatalf("canary in etcd: %v %v", ok, err)
			}
			if obj, err := cluster.ParseKMSv2(raw, c.Provider); err == nil && obj.KeyID == v.KeyID {
				b.Logf("rotated to %s; kube-apiserver picked it up after %s", v.KeyID, time.Since(t0).Round(time.Second))
				return v.KeyID
			}
			time.Sleep(2 * time.Second)
		}
	}
	runKmsctl := func(b *testing.B, out any, args ...string) time.Duration {
		cmd := exec.CommandContext(ctx, kmsctl, append(args, "-o", "json")...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		t0 := time.Now()
		err := cmd.Run()
		d := time.Since(t0)
		if err != nil {
			b.Fatalf("kmsctl %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
		}
		if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
			b.Fatalf("kmsctl %s printed %q: %v", strings.Join(args, " "), stdout.Bytes(), err)
		}
		return d
	}
	type migrateOut struct {
		Summary struct{ Rewritten, Skipped, Failed int }
	}
	type auditOut struct {
		Objects int
		KeyIDs  map[string]int
		Seconds float64
	}
	migrate := func(qps string, extra ...string) func(b *testing.B) {
		return func(b *testing.B) {
			var objects int
			var took time.Duration
			for range b.N {
				b.StopTimer()
				key := rotate(b)
				b.StartTimer()
				var m migrateOut
				took += runKmsctl(b, &m, append([]string{"migrate", "--kubeconfig", a.Kubeconfig, "--resources", "secrets", "--qps", qps}, extra...)...)
				b.StopTimer()
				if m.Summary.Failed != 0 || m.Summary.Rewritten < n {
					b.Fatalf("migrate: %+v, want %d rewritten", m.Summary, n)
				}
				objects += m.Summary.Rewritten + m.Summary.Skipped
				var au auditOut
				runKmsctl(b, &au, append([]string{"audit", "--resources", "secrets"}, etcdArgs...)...)
				if au.KeyIDs[key] != au.Objects {
					b.Fatalf("after migrate, %d of %d Secrets are under %s: %v", au.KeyIDs[key], au.Objects, key, au.KeyIDs)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(objects)/took.Seconds(), "objects/s")
			b.ReportMetric(float64(objects/b.N), "objects")
			b.Logf("migrate --qps %s %s: %d objects in %s", qps, strings.Join(extra, " "), objects, took.Round(time.Millisecond))
		}
	}
	b.Run("migrate/qps=50-default", migrate("50"))
	b.Run("migrate/qps=unlimited", migrate("-1"))
	// What bounds the unlimited run: the default 8 updates in flight.
	b.Run("migrate/qps=unlimited,concurrency=32", migrate("-1", "--concurrency", "32"))
	b.Run("audit", func(b *testing.B) {
		var objects int
		var took time.Duration
		for range b.N {
			var au auditOut
			took += runKmsctl(b, &au, append([]string{"audit", "--resources", "secrets"}, etcdArgs...)...)
			if au.Objects < n {
				b.Fatalf("audit counted %d Secrets, want at least %d", au.Objects, n)
			}
			objects += au.Objects
		}
		b.ReportMetric(float64(objects)/took.Seconds(), "objects/s")
		b.ReportMetric(float64(objects/b.N), "objects")
		b.Logf("audit: %d objects in %s", objects, took.Round(time.Millisecond))
	})
}

// buildKmsctl builds kmsctl from this tree into a temporary folder.
func buildKmsctl(b *testing.B) string {
	b.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/kmsctl", "./cmd/kmsctl")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return dir + "/kmsctl"
}

// createSecrets creates n Secrets of 1 KiB in ns, 32 at a time, without
// client-go's rate limit.
func createSecrets(b *testing.B, ctx context.Context, a *cluster.APIServer, ns string, n int) {
	b.Helper()
	cfg := rest.CopyConfig(a.RESTConfig)
	cfg.QPS, cfg.Burst = -1, 0
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	secrets := cs.CoreV1().Secrets(ns)
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, 1024)
			_, _ = rand.Read(payload)
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				_, err := secrets.Create(ctx, &corev1.Secret{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%05d", i)},
					Data:       map[string][]byte{"v": payload},
				}, metav1.CreateOptions{})
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
}

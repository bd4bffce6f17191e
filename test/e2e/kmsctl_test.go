//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// kmsctlResult is one run of the real kmsctl binary.
type kmsctlResult struct {
	code           int
	stdout, stderr string
}

// kmsctlRun runs kmsctl with stdin not a terminal (as in CI).
func kmsctlRun(t *testing.T, ctx context.Context, c *cluster.Cluster, args ...string) kmsctlResult {
	t.Helper()
	cmd := exec.CommandContext(ctx, c.Tools.Kmsctl, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := kmsctlResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("kmsctl %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("kmsctl %s: exit %d", strings.Join(args, " "), r.code)
	return r
}

// putSecrets writes n secrets name-00000… in ns with 8 writers and returns
// their values.
func putSecrets(t *testing.T, ctx context.Context, a *cluster.APIServer, ns string, n int) map[string]string {
	t.Helper()
	want := map[string]string{}
	var mu sync.Mutex
	var firstErr error
	names := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range names {
				name, v := fmt.Sprintf("s-%05d", i), unique("kmsctl")
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
	for i := range n {
		names <- i
	}
	close(names)
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	return want
}

// storedKeyIDs counts the stored values under prefixes by KMS v2 key_id,
// decoding etcd's bytes independently of kmsctl (etcdctl, not the etcd
// client); any value that is not KMS v2 fails the test.
func storedKeyIDs(t *testing.T, ctx context.Context, c *cluster.Cluster, prefixes ...string) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, p := range prefixes {
		kvs, err := c.Etcd.List(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			obj, err := cluster.ParseKMSv2(kv.Value, c.Provider)
			if err != nil {
				t.Fatalf("%s: %v", kv.Key, err)
			}
			n[obj.KeyID]++
		}
	}
	return n
}

// readAll reads every secret of want through the API and compares values.
func readAll(t *testing.T, ctx context.Context, a *cluster.APIServer, ns string, want map[string]string) {
	t.Helper()
	l, err := a.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range l.Items {
		got[s.Name] = string(s.Data["v"])
	}
	for name, v := range want {
		if got[name] != v {
			t.Fatalf("secret %s/%s reads %q, want %q", ns, name, got[name], v)
		}
	}
}

// TestKmsctlRotate runs `kmsctl rotate` against the real control plane over
// 1000 secrets: --dry-run changes nothing; a run that stops at the pickup
// step prints a resume hint; --resume finishes without adding another
// version; etcd (read with etcdctl) then holds nothing under the old key;
// kmsctl audit agrees; the old version is disabled and destroyed with the
// audit's blessing; and after kube-apiserver and keywarden restart with
// cold caches, every secret still reads back.
func TestKmsctlRotate(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx := testCtx(t, 12*time.Minute)
	a, kw := c.APIServer, c.Keywarden
	ks := kw.Keyset()
	k1, err := ks.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "kmsctl-rotate"
	ensureNamespace(t, ctx, a, ns)
	start := time.Now()
	want := putSecrets(t, ctx, a, ns, 1000)
	t.Logf("wrote 1000 secrets in %s", time.Since(start).Round(time.Second))
	if n := storedKeyIDs(t, ctx, c, "/registry/secrets/"+ns+"/"); n[k1] != 1000 {
		t.Fatalf("before rotation: %v", n)
	}

	if r := kmsctlRun(t, ctx, c, "status", "--socket", kw.Socket, "--metrics-url", kw.MetricsURL+"/metrics", "-o", "json"); r.code != 0 ||
		!strings.Contains(r.stdout, `"rootKeyMatchesStatus": true`) {
		t.Fatalf("status: %+v", r)
	}

	state := filepath.Join(t.TempDir(), "rotate.json")
	etcdArgs := []string{"--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ",")}
	base := append([]string{"rotate", "--keystore", ks.URI(), "--socket", kw.Socket, "--kubeconfig", a.Kubeconfig,
		"--resources", "secrets,configmaps", "--state-file", state, "--pickup-poll", "2s"}, etcdArgs...)

	// Dry run: a plan and an audit, no change.
	r := kmsctlRun(t, ctx, c, append(base, "--dry-run", "-o", "json")...)
	var plan struct {
		Rotation struct {
			Steps []struct{ Step, Status string }
		}
		Audit struct{ KeyIDs map[string]int }
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &plan) != nil || len(plan.Rotation.Steps) != 6 || plan.Audit.KeyIDs[k1] < 1000 {
		t.Fatalf("dry run: %+v", r)
	}
	if vs, _ := ks.List(ctx); len(vs) != 1 {
		t.Fatalf("dry run changed the keyset: %+v", vs)
	}
	if _, err := os.Stat(state); err == nil {
		t.Fatal("dry run wrote a state file")
	}

	// A first run that stops at pickup: its canary namespace does not exist.
	r = kmsctlRun(t, ctx, c, append(base, "--yes", "--canary-namespace", "no-such-namespace")...)
	if r.code == 0 || !strings.Contains(r.stderr, "--resume") || !strings.Contains(r.stderr, "rotation stopped") {
		t.Fatalf("stopped run: %+v", r)
	}
	vs, err := ks.List(ctx)
	if err != nil || len(vs) != 2 {
		t.Fatalf("after the stopped run: %+v %v", vs, err)
	}
	k2, err := ks.Primary(ctx)
	if err != nil || k2 == k1 {
		t.Fatalf("primary after the stopped run: %s %v", k2, err)
	}
	// Without --resume, an unfinished rotation blocks a new one.
	if r := kmsctlRun(t, ctx, c, append(base, "--yes")...); r.code != 2 || !strings.Contains(r.stderr, "in progress") {
		t.Fatalf("second rotation over an unfinished one: %+v", r)
	}

	// Resume: pickup, migrate, audit.
	start = time.Now()
	r = kmsctlRun(t, ctx, c, append(base, "--yes", "--resume", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("resumed rotation: %+v", r)
	}
	t.Logf("resumed rotation took %s:\n%s", time.Since(start).Round(time.Second), r.stderr)
	var rep struct {
		Rotation struct {
			OldKeyID, NewKeyID string
			Complete           bool
			Steps              []struct{ Step, Status, Detail string }
		}
		Migrate struct {
			Summary struct{ Rewritten, Failed int }
		}
		Audit struct{ KeyIDs map[string]int }
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Rotation.Complete || rep.Rotation.OldKeyID != k1 || rep.Rotation.NewKeyID != k2 || rep.Migrate.Summary.Rewritten < 1000 ||
		rep.Migrate.Summary.Failed != 0 || rep.Audit.KeyIDs[k1] != 0 {
		t.Fatalf("report: %s", r.stdout)
	}
	if vs, _ := ks.List(ctx); len(vs) != 2 {
		t.Fatalf("resume added a version: %+v", vs)
	}

	// Independent check: every stored secret and configmap is under k2.
	n := storedKeyIDs(t, ctx, c, "/registry/secrets/", "/registry/configmaps/")
	if n[k1] != 0 || n[k2] < 1000 || len(n) != 1 {
		t.Fatalf("stored key_ids after rotation: %v", n)
	}
	if r := kmsctlRun(t, ctx, c, append([]string{"audit", "--resources", "secrets,configmaps", "--fail-on-key", k1, "--fail-on-plaintext"}, etcdArgs...)...); r.code != 0 {
		t.Fatalf("audit gate: %+v", r)
	}

	// Retire k1 with the audit's blessing.
	if r := kmsctlRun(t, ctx, c, "keys", "disable", "--keystore", ks.URI(), k1); r.code != 0 {
		t.Fatalf("disable: %+v", r)
	}
	// destroy audits every value under the prefix itself (--resources would
	// be ignored, with a warning): the live audit is the gate.
	d := kmsctlRun(t, ctx, c, append([]string{"keys", "destroy", "--keystore", ks.URI(), "--yes", k1}, etcdArgs...)...)
	if d.code != 0 {
		t.Fatalf("destroy: %+v", d)
	}
	if strings.Contains(d.stderr, "ignored") {
		t.Fatalf("destroy warned about ignored flags: %s", d.stderr)
	}

	// Cold caches: nothing may need k1 any more.
	a.Stop()
	if err := kw.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Start(); err != nil {
		t.Fatal(err)
	}
	readAll(t, ctx, a, ns, want)
}

// TestKmsctlMigrateResume kills `kmsctl migrate` (SIGKILL) in the middle
// and runs it again: the second run resumes from the state file's continue
// token (it does not start over), and afterwards nothing is left under the
// old key.
func TestKmsctlMigrateResume(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx := testCtx(t, 10*time.Minute)
	a, e, kw := c.APIServer, c.Etcd, c.Keywarden
	ks := kw.Keyset()
	k1, err := ks.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const ns, total = "kmsctl-migrate", 600
	ensureNamespace(t, ctx, a, ns)
	want := putSecrets(t, ctx, a, ns, total)
	k2v, err := ks.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Promote(ctx, k2v.KeyID); err != nil {
		t.Fatal(err)
	}
	k2 := k2v.KeyID
	waitForWriteKeyID(t, ctx, e, a, c.Provider, ns, k2)

	state := filepath.Join(t.TempDir(), "migrate.json")
	args := []string{"migrate", "--kubeconfig", a.Kubeconfig, "--resources", "secrets", "--state-file", state, "--page-size", "50"}

	// A slow first run (10 updates/s), killed after a few pages.
	cmd := exec.CommandContext(ctx, c.Tools.Kmsctl, append(args, "--qps", "10", "--burst", "1", "--concurrency", "2")...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type progress struct {
		Continue  string
		Done      bool
		Rewritten int
		Skipped   int
	}
	readState := func() (progress, error) {
		b, err := os.ReadFile(state)
		if err != nil {
			return progress{}, err
		}
		var s struct{ Progress map[string]progress }
		if err := json.Unmarshal(b, &s); err != nil {
			return progress{}, fmt.Errorf("state file does not parse: %w", err)
		}
		return s.Progress["secrets"], nil
	}
	eventually(t, 2*time.Minute, 200*time.Millisecond, "three pages in the state file", func() error {
		p, err := readState()
		if err == nil && (p.Continue == "" || p.Rewritten < 150) {
			err = fmt.Errorf("progress %+v", p)
		}
		return err
	})
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	first, err := readState()
	if err != nil || first.Done {
		t.Fatalf("state after kill -9: %+v %v", first, err)
	}
	t.Logf("killed after %d rewritten, continue token saved", first.Rewritten)

	r := kmsctlRun(t, ctx, c, append(args, "--qps", "-1", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("resumed migrate: %+v", r)
	}
	var out struct {
		Summary struct {
			Resumed                    bool
			Rewritten, Skipped, Failed int
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatal(err)
	}
	second, _ := readState()
	redone := second.Rewritten + second.Skipped - first.Rewritten - first.Skipped
	if !out.Summary.Resumed || !second.Done || !strings.Contains(r.stderr, "resumeFromContinue=true") || redone >= total {
		t.Fatalf("second run did not resume: summary %+v, first %+v, second %+v (%d objects in the second run)\n%s", out.Summary, first, second, redone, r.stderr)
	}
	t.Logf("second run handled %d of %d secrets (rewritten %d, skipped %d overall)", redone, total, out.Summary.Rewritten, out.Summary.Skipped)

	if n := storedKeyIDs(t, ctx, c, "/registry/secrets/"); n[k1] != 0 || n[k2] < total {
		t.Fatalf("stored key_ids after migrate: %v", n)
	}
	readAll(t, ctx, a, ns, want)
}

// TestKmsctlMigrateSVM: kube-apiserver 1.37 serves
// storagemigration.k8s.io/v1 by default, so --via=svm finds it and creates
// a StorageVersionMigration, which kube-controller-manager's storage
// version migrator carries out. First without the controller: kmsctl must
// fail with a clear message rather than wait forever. Then with it: every
// Secret moves to the new key.
func TestKmsctlMigrateSVM(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx := testCtx(t, 8*time.Minute)
	a := c.APIServer
	if out := kubectl(t, ctx, a, "", "api-resources", "--api-group", "storagemigration.k8s.io", "-o", "name"); !strings.Contains(out, "storageversionmigrations") {
		t.Fatalf("storagemigration.k8s.io not served: %q", out)
	}
	r := kmsctlRun(t, ctx, c, "migrate", "--via", "svm", "--kubeconfig", a.Kubeconfig, "--resources", "secrets", "--svm-start-timeout", "10s")
	if r.code != 1 || !strings.Contains(r.stderr, "kube-controller-manager") {
		t.Fatalf("without a controller: %+v", r)
	}
	if out := kubectl(t, ctx, a, "", "get", "storageversionmigrations", "-o", "name"); !strings.Contains(out, "kmsctl-migrate-secrets") {
		t.Fatalf("no StorageVersionMigration created: %q", out)
	}
	kubectl(t, ctx, a, "", "delete", "storageversionmigrations", "--all")
	startKCM(t, c.Tools.KubeControllerManager, a)
	ks := c.Keywarden.Keyset()
	k1, _ := ks.Primary(ctx)
	const ns = "kmsctl-svm"
	ensureNamespace(t, ctx, a, ns)
	want := putSecrets(t, ctx, a, ns, 200)
	k2v, err := ks.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Promote(ctx, k2v.KeyID); err != nil {
		t.Fatal(err)
	}
	waitForWriteKeyID(t, ctx, c.Etcd, a, c.Provider, ns, k2v.KeyID)
	r = kmsctlRun(t, ctx, c, "migrate", "--via", "svm", "--kubeconfig", a.Kubeconfig, "--resources", "secrets", "-o", "json")
	if r.code != 0 || !strings.Contains(r.stdout, `"condition": "Succeeded"`) {
		t.Fatalf("svm migrate: %+v", r)
	}
	if n := storedKeyIDs(t, ctx, c, "/registry/secrets/"); n[k1] != 0 {
		t.Fatalf("stored key_ids after svm migrate: %v", n)
	}
	readAll(t, ctx, a, ns, want)
}

// startKCM runs kube-controller-manager with just the garbage collector
// (which the migrator needs) and the storage version migrator, as the
// harness runs its own processes: its own process group, SIGKILLed if the
// test binary dies, stopped with its group at cleanup.
func startKCM(t *testing.T, bin string, a *cluster.APIServer) {
	t.Helper()
	dir := t.TempDir()
	cluster.StartProcess(t, "kube-controller-manager", filepath.Join(dir, "kcm.log"), bin,
		"--kubeconfig", a.Kubeconfig, "--authentication-kubeconfig", a.Kubeconfig, "--authorization-kubeconfig", a.Kubeconfig,
		"--controllers", "garbage-collector-controller,storage-version-migrator-controller", "--leader-elect=false",
		"--secure-port", "0", "--cert-dir", dir)
}

//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden/metrics"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// follower is one `kmsctl follow` process, its JSON log lines and its
// metrics address.
type follower struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	addr chan string
	url  string
	done chan struct{}
}

func startFollower(t *testing.T, ctx context.Context, c *cluster.Cluster, name string, extra ...string) *follower {
	t.Helper()
	args := append([]string{"follow", "--socket", c.Keywarden.Socket, "--kubeconfig", c.APIServer.Kubeconfig,
		"--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ","), "--resources", "secrets,configmaps",
		"--state-file", filepath.Join(t.TempDir(), "follow.json"), "--metrics-addr", "127.0.0.1:0", "--log-format", "json",
		"--poll", "1s", "--pickup-poll", "2s", "--audit-interval", "5s",
		"--lease-namespace", "default", "--lease-name", "kmsctl-follow-e2e", "--identity", name,
		"--lease-duration", "6s", "--renew-deadline", "4s", "--retry-period", "1s"}, extra...)
	f := &follower{name: name, cmd: exec.CommandContext(ctx, c.Tools.Kmsctl, args...), addr: make(chan string, 1), done: make(chan struct{})}
	stderr, err := f.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l map[string]any
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				l = map[string]any{"msg": sc.Text()}
			}
			f.mu.Lock()
			f.logs = append(f.logs, l)
			f.mu.Unlock()
			if l["msg"] == "serving metrics" {
				f.addr <- fmt.Sprint(l["addr"])
			}
		}
		_ = f.cmd.Wait()
	}()
	t.Cleanup(func() { f.stop(); f.dump(t) })
	select {
	case a := <-f.addr:
		f.url = "http://" + a + "/metrics"
	case <-f.done:
		t.Fatalf("kmsctl follow %s exited before serving metrics", name)
	case <-time.After(30 * time.Second):
		t.Fatalf("kmsctl follow %s did not serve metrics in 30s", name)
	}
	return f
}

// stop sends SIGTERM (follow releases its lease) and waits.
func (f *follower) stop() {
	if f.cmd.Process != nil {
		_ = f.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-f.done:
	case <-time.After(20 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.done
	}
}

func (f *follower) dump(t *testing.T) {
	if !t.Failed() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.logs {
		b, _ := json.Marshal(l)
		t.Logf("follow %s: %s", f.name, b)
	}
}

// stepsDone lists the "step done" log lines as "step key_id".
func (f *follower) stepsDone() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, l := range f.logs {
		if l["msg"] == "follow: step done" {
			out = append(out, fmt.Sprintf("%s %s", l["step"], l["key_id"]))
		}
	}
	return out
}

// metric sums the samples of name whose labels include every pair in
// labels ("k=v"); found is false if there is none.
func (f *follower) metric(t *testing.T, name string, labels ...string) (sum float64, found bool) {
	t.Helper()
	resp, err := http.Get(f.url)
	if err != nil {
		t.Fatalf("follow %s: GET /metrics: %v", f.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		ok := true
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if !strings.Contains(l, k+`="`+v+`"`) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		fs := strings.Fields(l)
		x, err := strconv.ParseFloat(fs[len(fs)-1], 64)
		if err != nil {
			t.Fatalf("follow %s: %q: %v", f.name, l, err)
		}
		sum, found = sum+x, true
	}
	return sum, found
}

// TestKmsctlFollow runs two `kmsctl follow` replicas on one cluster: one
// takes the lease and follows a promote end to end (pickup, migrate,
// audit) until its metrics show no object under the old key_id; the other
// stands by and does nothing, then takes over when the first stops.
func TestKmsctlFollow(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx := testCtx(t, 12*time.Minute)
	a, kw := c.APIServer, c.Keywarden
	ks := kw.Keyset()
	k1, err := ks.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "kmsctl-follow"
	ensureNamespace(t, ctx, a, ns)
	want := putSecrets(t, ctx, a, ns, 200)

	fa := startFollower(t, ctx, c, "follow-a")
	fb := startFollower(t, ctx, c, "follow-b")
	var leader, standby *follower
	eventually(t, time.Minute, time.Second, "one replica leads", func() error {
		la, _ := fa.metric(t, "kmsctl_follow_leader")
		lb, _ := fb.metric(t, "kmsctl_follow_leader")
		switch {
		case la == 1 && lb == 0:
			leader, standby = fa, fb
		case lb == 1 && la == 0:
			leader, standby = fb, fa
		default:
			return fmt.Errorf("leader gauges %v and %v", la, lb)
		}
		return nil
	})
	t.Logf("%s leads, %s stands by", leader.name, standby.name)
	// Its first cycle follows the key it finds: every secret already under k1.
	eventually(t, 3*time.Minute, time.Second, "the first audit", func() error {
		if n, _ := leader.metric(t, "kmsctl_follow_rotations_total"); n < 1 {
			return fmt.Errorf("rotations_total %v", n)
		}
		return nil
	})
	if n, _ := leader.metric(t, "kmsctl_follow_objects", "resource=secrets", "key_id_hash="+metrics.HashKeyID(k1)); n < 200 {
		t.Fatalf("objects under k1 before the promote: %v", n)
	}

	// The rotation: add and promote, as docs/rotation.md does for the file
	// keystore; follow mode does the rest.
	v2, err := ks.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k2 := v2.KeyID
	promoted := time.Now()
	if err := ks.Promote(ctx, k2); err != nil {
		t.Fatal(err)
	}
	eventually(t, 6*time.Minute, 2*time.Second, "follow mode rotates to k2", func() error {
		if n, _ := leader.metric(t, "kmsctl_follow_current_key_info", "key_id_hash="+metrics.HashKeyID(k2)); n != 1 {
			return fmt.Errorf("current key not k2 yet")
		}
		if n, _ := leader.metric(t, "kmsctl_follow_rotations_total"); n < 2 {
			return fmt.Errorf("rotations_total %v (steps done: %v)", n, leader.stepsDone())
		}
		return nil
	})
	t.Logf("followed the promote in %s: %v", time.Since(promoted).Round(time.Second), leader.stepsDone())
	for _, s := range []string{"pickup", "migrate", "audit"} {
		found := false
		for _, d := range leader.stepsDone() {
			found = found || d == s+" "+k2
		}
		if !found {
			t.Errorf("no %s step done for k2 in the leader's log: %v", s, leader.stepsDone())
		}
	}
	if n, ok := leader.metric(t, "kmsctl_follow_objects_not_current"); !ok || n != 0 {
		t.Errorf("objects not under the current key: %v (exported %v)", n, ok)
	}
	if n, _ := leader.metric(t, "kmsctl_follow_objects", "key_id_hash="+metrics.HashKeyID(k1)); n != 0 {
		t.Errorf("objects under k1 after the rotation: %v", n)
	}
	if n, _ := leader.metric(t, "kmsctl_follow_objects", "resource=secrets", "key_id_hash="+metrics.HashKeyID(k2)); n < 200 {
		t.Errorf("secrets under k2: %v", n)
	}
	for _, s := range []string{"migrate", "audit"} {
		if ts, _ := leader.metric(t, "kmsctl_follow_last_success_timestamp_seconds", "step="+s); ts < float64(promoted.Unix()) {
			t.Errorf("last %s success %v, before the promote", s, ts)
		}
	}
	// Independent of follow mode: etcd holds nothing under k1.
	if n := storedKeyIDs(t, ctx, c, "/registry/secrets/", "/registry/configmaps/"); n[k1] != 0 || n[k2] < 200 {
		t.Fatalf("stored key_ids after follow mode: %v", n)
	}
	// The standby did nothing.
	if d := standby.stepsDone(); len(d) != 0 {
		t.Errorf("the standby acted: %v", d)
	}
	if n, _ := standby.metric(t, "kmsctl_follow_rotations_total"); n != 0 {
		t.Errorf("the standby's rotations_total %v", n)
	}

	// The leader stops (SIGTERM releases the lease): the standby takes
	// over and finds the cluster under k2.
	leader.stop()
	eventually(t, 3*time.Minute, time.Second, "the standby takes over", func() error {
		if l, _ := standby.metric(t, "kmsctl_follow_leader"); l != 1 {
			return fmt.Errorf("not leading")
		}
		if n, _ := standby.metric(t, "kmsctl_follow_rotations_total"); n < 1 {
			return fmt.Errorf("rotations_total %v", n)
		}
		return nil
	})
	if n, ok := standby.metric(t, "kmsctl_follow_objects_not_current"); !ok || n != 0 {
		t.Errorf("new leader: objects not under the current key %v (exported %v)", n, ok)
	}
	readAll(t, ctx, a, ns, want)
}

// TestKmsctlFollowNodes is follow mode on a two-node control plane (one
// etcd, two kube-apiservers, each with its own keywarden and keyset copy),
// with --node-sockets naming node b's keywarden. The new version is added
// on both nodes and promoted on node a only: follow mode must wait (its
// Status step fails with the nodes' disagreement, nothing is picked up or
// migrated) rather than migrate under a key node b could not yet write
// under. Once node b promotes too, it follows the rotation to the end, and
// every Secret reads back through both apiservers.
func TestKmsctlFollowNodes(t *testing.T) {
	ctx := testCtx(t, 10*time.Minute)
	c, nodes := startTwoNodes(t)
	ksA, ksB := nodes[0].ks, nodes[1].ks
	const ns = "follow-nodes"
	ensureNamespace(t, ctx, c.APIServer, ns)
	want := putSecrets(t, ctx, c.APIServer, ns, 100)
	k1, err := ksA.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}

	f := startFollower(t, ctx, c, "follow-nodes", "--node-sockets", nodes[1].kw.Socket)
	eventually(t, 3*time.Minute, time.Second, "the first audit", func() error {
		if n, _ := f.metric(t, "kmsctl_follow_rotations_total"); n < 1 {
			return fmt.Errorf("rotations_total %v", n)
		}
		return nil
	})

	// Phase 1 of docs/rotation.md's HA steps: the new version on both
	// nodes (node b gets a copy of node a's keyset), not yet primary.
	v2, err := ksA.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k2 := v2.KeyID
	if _, err := ksA.CopyTo(ksB.Path); err != nil {
		t.Fatal(err)
	}
	// Phase 2 on node a only.
	if err := ksA.Promote(ctx, k2); err != nil {
		t.Fatal(err)
	}
	before, _ := f.metric(t, "kmsctl_follow_failures_total", "step=status")
	eventually(t, time.Minute, time.Second, "follow mode sees the nodes disagree", func() error {
		if n, _ := f.metric(t, "kmsctl_follow_failures_total", "step=status"); n < before+3 {
			return fmt.Errorf("status failures %v (from %v)", n, before)
		}
		return nil
	})
	if !f.logged("keywardens report different key_ids") {
		t.Errorf("follow mode's status failures do not name the disagreement")
	}
	for _, d := range f.stepsDone() {
		if strings.HasSuffix(d, " "+k2) {
			t.Fatalf("follow mode acted on k2 while node b had not promoted it: %v", f.stepsDone())
		}
	}
	if n, _ := f.metric(t, "kmsctl_follow_current_key_info", "key_id_hash="+metrics.HashKeyID(k2)); n != 0 {
		t.Fatalf("follow mode reports k2 current while the nodes disagree")
	}
	if n := storedKeyIDs(t, ctx, c, "/registry/secrets/"+ns+"/"); n[k1] < 100 {
		t.Fatalf("objects moved off k1 while the nodes disagree: %v", n)
	}

	// Phase 2 on node b: follow mode takes it from there.
	if err := ksB.Promote(ctx, k2); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	eventually(t, 6*time.Minute, 2*time.Second, "follow mode rotates to k2", func() error {
		if n, _ := f.metric(t, "kmsctl_follow_rotations_total"); n < 2 {
			return fmt.Errorf("rotations_total %v (steps done: %v)", n, f.stepsDone())
		}
		return nil
	})
	t.Logf("followed the promote in %s once both nodes had it: %v", time.Since(promoted).Round(time.Second), f.stepsDone())
	if n, ok := f.metric(t, "kmsctl_follow_objects_not_current"); !ok || n != 0 {
		t.Errorf("objects not under the current key: %v (exported %v)", n, ok)
	}
	if n := storedKeyIDs(t, ctx, c, "/registry/secrets/", "/registry/configmaps/"); n[k1] != 0 || n[k2] < 100 {
		t.Fatalf("stored key_ids after follow mode: %v", n)
	}
	for _, n := range nodes {
		readAll(t, ctx, n.a, ns, want)
	}
}

// logged reports whether any log line's message or error contains s.
func (f *follower) logged(s string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.logs {
		if strings.Contains(fmt.Sprint(l["msg"]), s) || strings.Contains(fmt.Sprint(l["err"]), s) {
			return true
		}
	}
	return false
}

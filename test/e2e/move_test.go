//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// moveSection is the docs/rotation.md section TestMoveKeystore runs.
const moveSection = "## Moving to another keystore"

// moveSkip is the marker on that section's shell blocks, which the node
// test skips because this test runs them.
const moveSkip = "<!-- not run by the node test: the keystore move runs in test/e2e TestMoveKeystore -->"

var shFence = regexp.MustCompile("(?m)^[ \t]*```sh\n((?s:.*?))^[ \t]*```")

// moveBlock is one ```sh block of the section and the "### " step it is in.
type moveBlock struct {
	step, text string
}

// moveBlocks returns the shell blocks of docs/rotation.md's keystore move,
// each checked to carry the node test's skip marker.
func moveBlocks(t *testing.T) []moveBlock {
	t.Helper()
	s := repoFile(t, "docs", "rotation.md")
	i := strings.Index(s, "\n"+moveSection+"\n")
	if i < 0 {
		t.Fatalf("docs/rotation.md has no %q section", moveSection)
	}
	s = s[i+1:]
	if j := strings.Index(s[len(moveSection):], "\n## "); j >= 0 {
		s = s[:len(moveSection)+j+1]
	}
	var out []moveBlock
	for _, m := range shFence.FindAllStringSubmatchIndex(s, -1) {
		if !strings.HasSuffix(strings.TrimSpace(s[max(0, m[0]-300):m[0]]), moveSkip) {
			t.Errorf("docs/rotation.md, %s: a sh block lacks %q just above it:\n%s", moveSection, moveSkip, s[m[2]:m[3]])
		}
		step := ""
		if h := strings.LastIndex(s[:m[0]], "\n### "); h >= 0 {
			step = strings.TrimSpace(strings.SplitN(s[h+5:], "\n", 2)[0])
		}
		out = append(out, moveBlock{step: step, text: s[m[2]:m[3]]})
	}
	return out
}

// docRunner runs document blocks with bash, one after another, in dir,
// each seeing env and the shell variables the blocks before it set.
type docRunner struct {
	dir  string
	env  []string
	vars []string
}

func (r *docRunner) run(t *testing.T, ctx context.Context, text string) (string, error) {
	t.Helper()
	state := filepath.Join(r.dir, "vars.sh")
	keep := "true" // with no names, declare -p would print every variable, readonly ones too
	if len(r.vars) > 0 {
		keep = "declare -p " + strings.Join(r.vars, " ")
	}
	script := fmt.Sprintf("set -eo pipefail\nas65532() { \"$@\"; }\nif [ -f %[1]s ]; then source %[1]s; fi\n%[2]s\n{ %[3]s 2>/dev/null || true; } > %[1]s.tmp\nmv %[1]s.tmp %[1]s\n",
		state, text, keep)
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), r.env...)
	out, err := cmd.CombinedOutput()
	t.Logf("bash:\n%s\n--> %v\n%s", strings.TrimSpace(text), err, tailText(string(out), 30))
	return string(out), err
}

func (r *docRunner) get(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("bash", "-c", fmt.Sprintf("source %s; printf %%s \"${%s:-}\"", filepath.Join(r.dir, "vars.sh"), name)).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func tailText(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestMoveKeystore moves keywarden's root of trust from the file keystore
// to PKCS#11 (a SoftHSM2 token) under the real kube-apiserver and etcd,
// by running the shell blocks of docs/rotation.md's "Moving to another
// keystore" in order with bash, the test doing the keywarden restarts the
// document asks for in between (and restarting kube-apiserver with them,
// so that every read decrypts afresh). After each restart every Secret
// written so far reads back unchanged; the sole-key audit fails before
// the migration and passes after it; after the last migration the audit
// counts nothing under the old root; and with the old keyset deleted and
// keywarden and kube-apiserver restarted, every Secret still reads.
func TestMoveKeystore(t *testing.T) {
	begin := time.Now()
	tools := cluster.MustTools(t)
	ctx := testCtx(t, 10*time.Minute)
	hsm := softHSMToken(t, tools)
	file := cluster.NewKeyset(t, tools)
	old, err := file.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	blocks := moveBlocks(t)
	c := cluster.Start(t, cluster.Options{Keyset: file})
	a, kw := c.APIServer, c.Keywarden

	dir := t.TempDir()
	for _, f := range []string{"/var/tmp/kmsctl-migrate-move-1.json", "/var/tmp/kmsctl-migrate-move-2.json"} {
		_ = os.Remove(f)
		t.Cleanup(func() { _ = os.Remove(f) })
	}
	r := &docRunner{dir: dir, vars: []string{"OLD", "NEW", "OLD_VERSIONS"}, env: append([]string{
		"PATH=" + filepath.Dir(tools.Kmsctl) + ":" + os.Getenv("PATH"),
		"OLD_KS=" + file.URI(),
		"NEW_KS=" + hsm.URI(),
		"SOCK=" + kw.Socket,
		"METRICS=" + kw.MetricsURL,
		"ETCD=" + strings.Join(c.Etcd.Endpoints, ","),
		"ETCD_CA=", "ETCD_CERT=", "ETCD_KEY=",
		"ENC=" + a.EncryptionConfigPath(),
		"KUBECONFIG=" + a.Kubeconfig,
	}, hsm.Env...)}
	// The first block sets the variables the test sets: check it names
	// every one.
	if len(blocks) == 0 {
		t.Fatal("no blocks")
	}
	for _, kv := range r.env[1:] {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "SOFTHSM2_") {
			continue
		}
		if !strings.Contains(blocks[0].text, name+"=") {
			t.Errorf("the section's first block does not set %s:\n%s", name, blocks[0].text)
		}
	}
	if !strings.Contains(blocks[0].text, "as65532()") {
		t.Errorf("the section's first block does not define as65532")
	}

	batches := map[string]map[string]string{}
	put := func(ns string) {
		ensureNamespace(t, ctx, a, ns)
		batches[ns] = putSecrets(t, ctx, a, ns, 15)
	}
	readEvery := func(when string) {
		t.Helper()
		for ns, want := range batches {
			readAll(t, ctx, a, ns, want)
		}
		t.Logf("%s: %d batches of Secrets read back", when, len(batches))
	}
	// restart restarts keywarden with roots (in order) and kube-apiserver
	// cold, and waits until the apiserver writes under keywarden's new
	// key_id, which it returns.
	restart := func(roots ...*cluster.Keyset) string {
		t.Helper()
		a.Stop()
		kw.Stop()
		kw.SetKeyset(cluster.NewKeystore(tools, roots[0].URI(), hsm.Env...))
		var extra []string
		for _, ks := range roots[1:] {
			extra = append(extra, "--keystore", ks.URI())
		}
		kw.SetExtraArgs(extra...)
		if err := kw.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Start(); err != nil {
			t.Fatal(err)
		}
		st, err := kw.Status(ctx)
		if err != nil || st.Healthz != "ok" {
			t.Fatalf("Status after the restart: %+v, %v", st, err)
		}
		waitForWriteKeyID(t, ctx, c.Etcd, a, c.Provider, "move-canary", st.KeyID)
		return st.KeyID
	}
	auditJSON := func(args ...string) (kmsctlResult, *audit.Report) {
		t.Helper()
		res := kmsctlRun(t, ctx, c, append([]string{"audit", "--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ","), "--resources", "*.*", "-o", "json"}, args...)...)
		var rep audit.Report
		if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
			t.Fatalf("audit JSON: %v: %s %s", err, res.stdout, res.stderr)
		}
		return res, &rep
	}

	ensureNamespace(t, ctx, a, "move-canary")
	put("move-a") // under the file root alone
	if ids := storedKeyIDs(t, ctx, c, "/registry/secrets/move-a/"); ids[old] != 15 {
		t.Fatalf("stored key_ids %v, want 15 under %s", ids, old)
	}

	next := 1
	runStep := func(prefix string, want ...string) string {
		t.Helper()
		if next >= len(blocks) {
			t.Fatalf("docs/rotation.md, %s: no block left for step %s", moveSection, prefix)
		}
		b := blocks[next]
		next++
		if !strings.HasPrefix(b.step, prefix) {
			t.Fatalf("docs/rotation.md, %s: block %d is in step %q, want step %s", moveSection, next-1, b.step, prefix)
		}
		for _, w := range want {
			if !strings.Contains(b.text, w) {
				t.Fatalf("docs/rotation.md, step %s: the block lacks %q:\n%s", b.step, w, b.text)
			}
		}
		out, err := r.run(t, ctx, b.text)
		if err != nil {
			t.Fatalf("docs/rotation.md, step %s: %v\n%s", b.step, err, out)
		}
		return out
	}

	// 1. Add the new root second.
	runStep("1.", "kmsctl keys init", `OLD=`, `NEW=`)
	if got := r.get(t, "OLD"); got != old {
		t.Fatalf("step 1 set OLD=%q, want the file keyset's primary %q", got, old)
	}
	newKey := r.get(t, "NEW")
	if p, err := hsm.Primary(ctx); err != nil || p != newKey || newKey == "" {
		t.Fatalf("step 1 set NEW=%q; the token's primary is %q (%v)", newKey, p, err)
	}
	k1 := restart(file, hsm)
	if !strings.HasPrefix(k1, "roots:2:") {
		t.Fatalf("key_id with two roots %q, want roots:2:…", k1)
	}
	readEvery("after adding the new root")
	put("move-b") // under a KEK wrapped under both

	// 2. Promote it.
	runStep("2.", "kmsctl status")
	k2 := restart(hsm, file)
	if !strings.HasPrefix(k2, "roots:2:") || k2 == k1 {
		t.Fatalf("key_id after reordering %q, want another roots:2:… than %q", k2, k1)
	}
	readEvery("after promoting the new root")
	out := runStep("2.", "keystore_root_unwraps_total")
	if !strings.Contains(out, `backend="pkcs11+file"`) {
		t.Fatalf("step 2's metrics show no root_key_info with backend pkcs11+file:\n%s", out)
	}
	m, err := kw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The apiserver's cold start unwrapped the move-b KEK through the new
	// root (now root 0) and the file-only KEK through the old (root 1).
	if n := m.Sum("keywarden_keystore_root_unwraps_total", "root", "0", "backend", "pkcs11"); n < 1 {
		t.Fatalf("root 0 (pkcs11) unwrapped %v local KEKs after the promotion, want at least one", n)
	}
	if n := m.Sum("keywarden_keystore_root_unwraps_total", "root", "1", "backend", "file"); n < 1 {
		t.Fatalf("root 1 (file) unwrapped %v local KEKs, want the pre-move KEK's", n)
	}
	put("move-c")

	// Before the migration the sole-key gate must fail: move-a is under
	// the file root alone.
	if res, rep := auditJSON("--fail-on-sole-key", old); res.code != 3 || rep.SoleUse(old) < 15 {
		t.Fatalf("sole-key audit before migrate: exit %d, SoleUse %d; want exit 3 and at least 15", res.code, rep.SoleUse(old))
	}

	// 3. Migrate; 4. the sole-key audit passes.
	runStep("3.", "kmsctl migrate")
	runStep("4.", "--fail-on-sole-key", "OLD_VERSIONS=")
	if got := r.get(t, "OLD_VERSIONS"); strings.TrimSpace(got) != old {
		t.Fatalf("step 4's OLD_VERSIONS = %q, want %q", got, old)
	}
	if res, rep := auditJSON("--fail-on-sole-key", old); res.code != 0 || rep.SoleUse(old) != 0 || rep.InUse(old) == 0 {
		t.Fatalf("sole-key audit after migrate: exit %d, SoleUse %d, InUse %d; want exit 0, 0 and objects still with a copy under it",
			res.code, rep.SoleUse(old), rep.InUse(old))
	}

	// 5. Drop the old root.
	k3 := restart(hsm)
	if k3 != newKey {
		t.Fatalf("key_id with the new root alone %q, want its own %q", k3, newKey)
	}
	readEvery("after dropping the old root")
	put("move-d")

	// 6. Migrate again; the audit counts nothing under the old root.
	runStep("6.", "kmsctl migrate", "--fail-on-key", "audit-after-move.json")
	b, err := os.ReadFile(filepath.Join(dir, "audit-after-move.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep audit.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.InUse(old) != 0 || rep.KeyIDs[old] != 0 || rep.KeyIDs[newKey] == 0 {
		t.Fatalf("audit after the move: InUse(old) %d, key_ids %v; want nothing under %s", rep.InUse(old), rep.KeyIDs, old)
	}
	for _, k := range rep.LocalKEKs {
		if k.RootKeyID != newKey || len(k.Roots) > 0 {
			t.Fatalf("audit after the move: local KEK %+v, want every one under %s alone", k, newKey)
		}
	}
	if next != len(blocks) {
		t.Fatalf("docs/rotation.md, %s: %d blocks, the test ran %d", moveSection, len(blocks), next)
	}
	if res := kmsctlRun(t, ctx, c, "audit", "--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ","), "--resources", "*.*", "--fail-on-key", old); res.code != 0 {
		t.Fatalf("audit --fail-on-key %s: exit %d\n%s%s", old, res.code, res.stdout, res.stderr)
	}

	// As the document says, keys disable will not take this audit as
	// evidence: it counts nothing under another version of the old
	// keystore, which is its sign of a wrong etcd.
	if res := kmsctlRun(t, ctx, c, "keys", "disable", "--keystore", file.URI(), "--audit-report", filepath.Join(dir, "audit-after-move.json"), old); res.code != 3 ||
		!strings.Contains(res.stderr, "no object under any other version") {
		t.Fatalf("keys disable with the audit after the move: exit %d, %s; want exit 3 naming the missing other versions", res.code, res.stderr)
	}

	// Retire the old keystore: the keyset is gone, and a cold start of
	// both reads everything through the token.
	if err := os.Remove(file.Path); err != nil {
		t.Fatal(err)
	}
	a.Stop()
	kw.Stop()
	if err := kw.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Start(); err != nil {
		t.Fatal(err)
	}
	readEvery("after deleting the old keyset")
	t.Logf("TestMoveKeystore: %s", time.Since(begin).Round(time.Second))
}

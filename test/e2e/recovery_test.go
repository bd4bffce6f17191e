//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// docCommand returns the first line of docs/disaster-recovery.md that
// starts with prefix (in a code block or in backticks), split into words:
// the test runs the operators' command line, so the docs cannot drift.
func docCommand(t *testing.T, prefix string) []string {
	t.Helper()
	doc := []byte(repoFile(t, "docs", "disaster-recovery.md"))
	re := regexp.MustCompile("(?m)(?:^|`)(" + regexp.QuoteMeta(prefix) + "[^`\n]*)")
	m := re.FindSubmatch(doc)
	if m == nil {
		t.Fatalf("docs/disaster-recovery.md has no command %q", prefix)
	}
	return strings.Fields(string(m[1]))
}

// kmsctlIn runs kmsctl in dir (the docs' relative file names resolve
// there) and fails the test on a non-zero exit.
func kmsctlIn(t *testing.T, ctx context.Context, tools cluster.Tools, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(ctx, tools.Kmsctl, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kmsctl %s: %v: %s\n%s", strings.Join(args, " "), err, stderr.Bytes(), out)
	}
	t.Logf("kmsctl %s: ok", strings.Join(args, " "))
	return out
}

// TestRecoverFromSnapshot is issue 14's scenario (b): keywarden seals every
// local KEK to a recovery public key (`kmsctl recovery init`, as
// docs/disaster-recovery.md writes it); secrets and configmaps of varied
// shapes are written through kube-apiserver; an etcd snapshot is saved;
// keywarden and kube-apiserver stop and the root keyset and keywarden's
// state file are deleted. `kmsctl recover --snapshot` with the private
// keyset alone (etcd is not read again) then verifies every value and
// writes manifests byte-identical to what was written, which
// `kubectl apply --server-side -R -f` restores into a fresh cluster (new
// etcd, new keywarden with new root keys).
func TestRecoverFromSnapshot(t *testing.T) {
	ctx := testCtx(t, 8*time.Minute)
	tools := cluster.MustTools(t)
	work := t.TempDir()
	if err := os.WriteFile(filepath.Join(work, "pass.txt"), []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// 1. The recovery keyset, with the docs' command (plus a passphrase
	// file: stdin is not a terminal).
	initCmd := docCommand(t, "kmsctl recovery init")[1:]
	kmsctlIn(t, ctx, tools, work, append(initCmd, "--passphrase-file", "pass.txt")...)
	pub := filepath.Join(work, "recovery.pub.json")
	if _, err := os.Stat(filepath.Join(work, "recovery.private.json")); err != nil {
		t.Fatal(err)
	}

	// 2. keywarden with a file keystore and the recovery public key.
	c := cluster.Start(t, cluster.Options{Keywarden: cluster.KeywardenOptions{
		StateFile: true,
		ExtraArgs: []string{"--recovery-public-key", "file://" + pub},
	}})
	a := c.APIServer
	const ns = "recover-me"
	ensureNamespace(t, ctx, a, ns)

	crt, key := selfSigned(t)
	bin := make([]byte, 4096)
	_, _ = rand.Read(bin)
	large := make([]byte, 700<<10) // 700 KiB of random bytes
	_, _ = rand.Read(large)
	want := map[string]*corev1.Secret{
		"binary": {Data: map[string][]byte{"blob": bin, "nul": {0, 0, 0xff, 0}}},
		"empty":  {Data: map[string][]byte{"empty": {}, "v": []byte(unique("e"))}},
		"large":  {Data: map[string][]byte{"large": large}},
		"many": {Data: map[string][]byte{
			"a": []byte(unique("a")), "b.txt": []byte(unique("b")), "c_c": []byte("line1\nline2\n"),
			"d-json": []byte(`{"k":"v","n":[1,2]}`), "e": []byte("  leading and trailing  "),
		}},
		"tls": {Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": crt, "tls.key": key}},
		"labelled": {
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "x"}, Annotations: map[string]string{"note": "kept"}},
			Data:       map[string][]byte{"v": []byte(unique("l"))},
		},
	}
	for name, s := range want {
		s.Name, s.Namespace = name, ns
		if _, err := a.Client.CoreV1().Secrets(ns).Create(ctx, s.DeepCopy(), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create secret %s: %v", name, err)
		}
	}
	wantCM := map[string]string{"k": unique("cm"), "multi": "a\nb\n"}
	cmBin := map[string][]byte{"bin": bin[:64]}
	if _, err := a.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cm", Namespace: ns}, Data: wantCM, BinaryData: cmBin,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Every value under the scopes is KMS v2 (checked by ParseKMSv2,
	// independently of kmsctl); the apiserver's own configmaps count too.
	var kms int
	for _, p := range []string{"/registry/secrets/", "/registry/configmaps/"} {
		kvs, err := c.Etcd.List(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			if _, err := cluster.ParseKMSv2(kv.Value, c.Provider); err != nil {
				t.Fatalf("%s: %v", kv.Key, err)
			}
			kms++
		}
	}
	if kms < len(want)+1 {
		t.Fatalf("%d KMS v2 values in etcd, want at least %d", kms, len(want)+1)
	}

	// 3. The snapshot.
	snap := filepath.Join(work, "snapshot.db")
	if _, err := c.Etcd.Etcdctl(ctx, "snapshot", "save", snap); err != nil {
		t.Fatal(err)
	}

	// 4. No keystore remains: stop everything, delete the root keyset and
	// keywarden's state (the wrapped local KEK).
	a.Stop()
	c.Keywarden.Stop()
	for _, f := range []string{c.Keywarden.Keyset().Path, c.Keywarden.StatePath()} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("expected %s to exist before deleting it: %v", f, err)
		}
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Keywarden.Start(); err == nil {
		t.Fatal("keywarden started without its keyset")
	}

	// 5. Verify, then recover, from the snapshot alone: the docs' recover
	// command, with --verify in place of --out-dir DIR --write-plaintext
	// (as the docs say --verify works with --snapshot).
	recoverCmd := docCommand(t, "kmsctl recover --private-key recovery.private.json --snapshot")[1:]
	var verifyCmd []string
	for i := 0; i < len(recoverCmd); i++ {
		switch recoverCmd[i] {
		case "--out-dir":
			i++
		case "--write-plaintext":
		default:
			verifyCmd = append(verifyCmd, recoverCmd[i])
		}
	}
	verifyCmd = append(verifyCmd, "--verify", "--passphrase-file", "pass.txt", "-o", "json")
	var rep struct {
		Objects, Decrypted, NoRecoveryCopy, Failed, Written int
		NotKMSv2                                            int `json:"notKMSv2"`
	}
	if err := json.Unmarshal(kmsctlIn(t, ctx, tools, work, verifyCmd...), &rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("verify: %d objects, %d decrypted", rep.Objects, rep.Decrypted)
	if rep.Objects != kms || rep.Decrypted != kms || rep.NoRecoveryCopy != 0 || rep.Failed != 0 || rep.NotKMSv2 != 0 || rep.Written != 0 {
		t.Fatalf("verify: %+v, want %d objects all decrypted, none written", rep, kms)
	}
	out := kmsctlIn(t, ctx, tools, work, append(recoverCmd, "--passphrase-file", "pass.txt", "-o", "json")...)
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Decrypted != kms || rep.Written != kms {
		t.Fatalf("recover: %+v, want %d decrypted and written", rep, kms)
	}
	if bytes.Contains(out, want["many"].Data["a"]) {
		t.Fatal("kmsctl recover printed plaintext")
	}
	outDir := ""
	for i, w := range recoverCmd {
		if w == "--out-dir" && i+1 < len(recoverCmd) {
			outDir = filepath.Join(work, recoverCmd[i+1])
		}
	}
	var files int
	err := filepath.Walk(outDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() {
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("%s: mode %v, want 0700", p, fi.Mode().Perm())
			}
			return nil
		}
		files++
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", p, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files != kms {
		t.Fatalf("%d files in %s, want %d", files, outDir, kms)
	}
	for name, w := range want {
		b, err := os.ReadFile(filepath.Join(outDir, "secrets", ns, name+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var got corev1.Secret
		if err := yaml.UnmarshalStrict(b, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Kind != "Secret" || got.APIVersion != "v1" || got.Name != name || got.Namespace != ns || got.UID != "" || got.ResourceVersion != "" {
			t.Errorf("manifest %s: kind %q apiVersion %q name %q ns %q uid %q rv %q", name, got.Kind, got.APIVersion, got.Name, got.Namespace, got.UID, got.ResourceVersion)
		}
		compareSecret(t, "manifest", w, &got)
	}
	b, err := os.ReadFile(filepath.Join(outDir, "configmaps", ns, "cm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var gotCM corev1.ConfigMap
	if err := yaml.UnmarshalStrict(b, &gotCM); err != nil {
		t.Fatal(err)
	}
	compareConfigMap(t, "manifest", wantCM, cmBin, &gotCM)

	// 6. A fresh cluster (new etcd, new keywarden, new root keys):
	// kubectl apply --server-side -R -f as the docs write it.
	c2 := cluster.Start(t, cluster.Options{})
	a2 := c2.APIServer
	ensureNamespace(t, ctx, a2, ns)
	// (--server-side: a client-side apply's last-applied-configuration
	// annotation refuses the 700 KiB Secret.)
	apply := docCommand(t, "kubectl apply --server-side -R -f recovered/secrets")[1:]
	cmApply := slices.Clone(apply)
	for i, w := range apply {
		if strings.HasPrefix(w, "recovered/secrets") {
			apply[i] = filepath.Join(work, w, ns)
			cmApply[i] = filepath.Join(outDir, "configmaps", ns)
		}
	}
	kubectl(t, ctx, a2, "", apply...)
	kubectl(t, ctx, a2, "", cmApply...)
	l, err := a2.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != len(want) {
		t.Fatalf("fresh cluster has %d secrets in %s, want %d", len(l.Items), ns, len(want))
	}
	for i := range l.Items {
		got := &l.Items[i]
		w, ok := want[got.Name]
		if !ok {
			t.Fatalf("fresh cluster has unexpected secret %s", got.Name)
		}
		compareSecret(t, "fresh cluster", w, got)
	}
	cm, err := a2.Client.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	compareConfigMap(t, "fresh cluster", wantCM, cmBin, cm)
	// And the fresh cluster stores them under its own keywarden.
	assertSealed(t, ctx, c2.Etcd, c2.Provider, secretKey(ns, "large"), large[:64])
}

func compareSecret(t *testing.T, where string, want, got *corev1.Secret) {
	t.Helper()
	wantType := want.Type
	if wantType == "" {
		wantType = corev1.SecretTypeOpaque
	}
	if got.Type != wantType {
		t.Errorf("%s: secret %s type %q, want %q", where, got.Name, got.Type, wantType)
	}
	if len(got.Data) != len(want.Data) {
		t.Errorf("%s: secret %s has keys %v, want %v", where, got.Name, keys(got.Data), keys(want.Data))
	}
	for k, v := range want.Data {
		g, ok := got.Data[k]
		if !ok || !bytes.Equal(g, v) {
			t.Errorf("%s: secret %s key %s differs (present %t, %d bytes, want %d)", where, got.Name, k, ok, len(g), len(v))
		}
	}
	for k, v := range want.Labels {
		if got.Labels[k] != v {
			t.Errorf("%s: secret %s label %s = %q, want %q", where, got.Name, k, got.Labels[k], v)
		}
	}
	for k, v := range want.Annotations {
		if got.Annotations[k] != v {
			t.Errorf("%s: secret %s annotation %s = %q, want %q", where, got.Name, k, got.Annotations[k], v)
		}
	}
}

func compareConfigMap(t *testing.T, where string, data map[string]string, bin map[string][]byte, got *corev1.ConfigMap) {
	t.Helper()
	if len(got.Data) != len(data) || len(got.BinaryData) != len(bin) {
		t.Errorf("%s: configmap keys %v %v", where, keys(got.Data), keys(got.BinaryData))
	}
	for k, v := range data {
		if got.Data[k] != v {
			t.Errorf("%s: configmap key %s = %q, want %q", where, k, got.Data[k], v)
		}
	}
	for k, v := range bin {
		if !bytes.Equal(got.BinaryData[k], v) {
			t.Errorf("%s: configmap binary key %s differs", where, k)
		}
	}
}

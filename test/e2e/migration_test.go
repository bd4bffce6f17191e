//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mockv1 "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/testing/v1beta1"
	mockv2 "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/testing/v2"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// migrationMarker starts the comment above each sh block of
// docs/migration.md: the blocks this test runs.
const migrationMarker = "<!-- run by test/e2e TestMigrateToKeywarden"

// migrationBlocks returns docs/migration.md's sh blocks, each checked to
// carry migrationMarker just above it.
func migrationBlocks(t *testing.T) []string {
	t.Helper()
	s := repoFile(t, "docs", "migration.md")
	var out []string
	for _, m := range shFence.FindAllStringSubmatchIndex(s, -1) {
		above := strings.TrimSpace(s[max(0, m[0]-200):m[0]])
		if i := strings.LastIndex(above, "\n"); i >= 0 {
			above = above[i+1:]
		}
		if !strings.HasPrefix(above, migrationMarker) {
			t.Errorf("docs/migration.md: a sh block lacks %q just above it:\n%s", migrationMarker, s[m[2]:m[3]])
		}
		out = append(out, s[m[2]:m[3]])
	}
	return out
}

// oldProvider is one provider an operator migrates to keywarden from.
type oldProvider struct {
	name     string
	template string // in deploy/encryption
	prefix   string // of the values it writes
	start    []byte // the EncryptionConfiguration before the move: it alone, and identity
	fill     func(template string) string
	run      func(t *testing.T) (stop func()) // the old plugin, for KMS; nil for a static key
}

// TestMigrateToKeywarden runs docs/migration.md for each provider a
// cluster can encrypt with before keywarden: aescbc, aesgcm, secretbox, a
// KMS v2 plugin and a KMS v1 plugin (Kubernetes' own mock plugins, run in
// this process; kube-apiserver with --feature-gates=KMSv1=true). For each:
// Secrets (one binary) stored under it alone; the deploy/encryption
// template installed with the old key or plugin copied in, as the page
// says; the page's blocks run in order (the first audit must exit 3, the
// migration and the last audit must pass); then secrets.yaml, the old
// plugin stopped, and every Secret read back byte for byte.
func TestMigrateToKeywarden(t *testing.T) {
	ctx := testCtx(t, 10*time.Minute)
	blocks := migrationBlocks(t)
	if len(blocks) != 4 {
		t.Fatalf("docs/migration.md has %d sh blocks, want 4 (variables, audit before, migrate, audit after)", len(blocks))
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "encryption-config.yaml")
	install := func(t *testing.T, b []byte) {
		t.Helper()
		if err := os.WriteFile(cfg+".tmp", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(cfg+".tmp", cfg); err != nil {
			t.Fatal(err)
		}
	}
	identity := cluster.EncryptionConfig([]string{"secrets"}, []cluster.Provider{cluster.Identity()})
	install(t, identity)
	c := cluster.Start(t, cluster.Options{
		Providers: func(*cluster.Keywarden) []cluster.Provider { return []cluster.Provider{cluster.Identity()} },
		// Given last, this --encryption-provider-config wins over the
		// harness's own.
		APIServer: cluster.APIServerOptions{ExtraArgs: []string{"--encryption-provider-config=" + cfg, "--feature-gates=KMSv1=true"}},
	})
	a := c.APIServer
	restart := func(t *testing.T, b []byte) {
		t.Helper()
		a.Stop()
		install(t, b)
		if _, err := a.Start(); err != nil {
			t.Fatalf("kube-apiserver: %v\n%s", err, tailText(a.Log(), 30))
		}
	}
	template := func(t *testing.T, file string) string {
		t.Helper()
		b := repoFile(t, "deploy", "encryption", file)
		const endpoint = "endpoint: unix:///run/keywarden/kms.sock"
		if !strings.Contains(b, endpoint) {
			t.Fatalf("%s: no %q", file, endpoint)
		}
		return strings.ReplaceAll(b, endpoint, "endpoint: "+c.Keywarden.Socket)
	}

	r := &docRunner{dir: dir, env: []string{
		"PATH=" + filepath.Dir(c.Tools.Kmsctl) + ":" + os.Getenv("PATH"),
		"ETCD=" + strings.Join(c.Etcd.Endpoints, ","),
		"ETCD_CA=", "ETCD_CERT=", "ETCD_KEY=",
		"ENC=" + cfg,
		"KUBECONFIG=" + a.Kubeconfig,
	}}
	for _, kv := range r.env[1:] {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.Contains(blocks[0], name+"=") {
			t.Errorf("docs/migration.md's first block does not set %s:\n%s", name, blocks[0])
		}
	}
	const stateFile = "/var/tmp/kmsctl-migrate-to-keywarden.json"
	if !strings.Contains(blocks[2], stateFile) {
		t.Fatalf("the migrate block no longer uses %s:\n%s", stateFile, blocks[2])
	}

	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	const placeholder = "UkVQTEFDRS1XSVRILVlPVVItQ1VSUkVOVC1LRVktMzI="
	static := func(kind string, p cluster.Provider) oldProvider {
		return oldProvider{
			name: kind, template: "migrate-from-" + kind + ".yaml", prefix: p.StoredPrefix(),
			start: cluster.EncryptionConfig([]string{"secrets"}, []cluster.Provider{p, cluster.Identity()}),
			fill: func(s string) string {
				return strings.Replace(s, placeholder, base64.StdEncoding.EncodeToString(key), 1)
			},
		}
	}
	plugin := func(version, name string, run func(t *testing.T, sock string) func()) oldProvider {
		sock := filepath.Join(dir, name+".sock")
		entry := fmt.Sprintf("      - kms:\n          apiVersion: %s\n          name: %s\n          endpoint: unix://%s\n          timeout: 3s\n", version, name, sock)
		if version == "v1" {
			entry += "          cachesize: 1000\n"
		}
		return oldProvider{
			name: "kms-" + version, template: "migrate-from-kms-" + version + ".yaml",
			prefix: "k8s:enc:kms:" + version + ":" + name + ":",
			start: []byte("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n      - secrets\n    providers:\n" +
				entry + "      - identity: {}\n"),
			fill: func(s string) string {
				s = strings.Replace(s, "REPLACE-WITH-YOUR-OLD-PLUGIN-NAME", name, 1)
				return strings.Replace(s, "unix:///REPLACE/WITH/YOUR/OLD/PLUGIN.sock", "unix://"+sock, 1)
			},
			run: func(t *testing.T) func() { return run(t, sock) },
		}
	}
	sources := []oldProvider{
		static("aescbc", cluster.AESCBC("key1", key)),
		static("aesgcm", cluster.AESGCM("key1", key)),
		static("secretbox", cluster.Secretbox("key1", key)),
		plugin("v2", "old-kms-v2", func(t *testing.T, sock string) func() { return mockv2.NewBase64Plugin(t, sock).CleanUp }),
		plugin("v1", "old-kms-v1", func(t *testing.T, sock string) func() { return mockv1.NewBase64Plugin(t, sock).CleanUp }),
	}
	kw := cluster.KMSv2Prefix(c.Provider)
	binary := []byte{0, 1, 2, 0xfe, 0xff, '\n', 0x80}
	for _, src := range sources {
		t.Run(src.name, func(t *testing.T) {
			begin := time.Now()
			ns := "from-" + src.name
			_ = os.Remove(stateFile)
			t.Cleanup(func() { _ = os.Remove(stateFile) })
			stop := func() {}
			if src.run != nil {
				stop = src.run(t)
			}
			// Whatever happens below, leave no Secret of this source
			// behind: the next source's first configuration lists
			// neither this one nor keywarden.
			t.Cleanup(func() {
				if out, err := c.Etcd.Etcdctl(context.Background(), "del", "--prefix", "/registry/secrets/"+ns+"/"); err != nil {
					t.Errorf("etcdctl del: %v: %s", err, out)
				}
			})
			restart(t, src.start)
			ensureNamespace(t, ctx, a, ns)
			want := putSecrets(t, ctx, a, ns, 20)
			if err := putSecret(ctx, a, ns, "binary", map[string][]byte{"v": binary}); err != nil {
				t.Fatal(err)
			}
			for name := range want {
				if v := rawValue(t, ctx, c.Etcd, secretKey(ns, name)); !bytes.HasPrefix(v, []byte(src.prefix)) {
					t.Fatalf("before the move, %s is stored as %.30q, want %s", name, v, src.prefix)
				}
			}

			// Step 2: the template, with the old provider copied in.
			filled := src.fill(template(t, src.template))
			for _, l := range strings.Split(filled, "\n") {
				if strings.Contains(l, "REPLACE") && !strings.HasPrefix(strings.TrimSpace(l), "#") {
					t.Fatalf("%s: a placeholder is left: %s", src.template, l)
				}
			}
			restart(t, []byte(filled))
			if err := putSecret(ctx, a, ns, "after-switch", map[string][]byte{"v": []byte("new")}); err != nil {
				t.Fatal(err)
			}
			if v := rawValue(t, ctx, c.Etcd, secretKey(ns, "after-switch")); !bytes.HasPrefix(v, []byte(kw)) {
				t.Fatalf("a write after the switch is stored as %.30q, want %s", v, kw)
			}
			readAll(t, ctx, a, ns, want)
			out, err := r.run(t, ctx, blocks[1])
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(out, "objects under other providers") {
				t.Fatalf("step 2's audit before the migration: %v, want exit 3 naming other providers:\n%s", err, out)
			}
			// Steps 3 and 4.
			for _, b := range blocks[2:] {
				if _, err := r.run(t, ctx, b); err != nil {
					t.Fatalf("docs/migration.md block failed: %v", err)
				}
			}
			for name := range want {
				if v := rawValue(t, ctx, c.Etcd, secretKey(ns, name)); !bytes.HasPrefix(v, []byte(kw)) {
					t.Fatalf("after the migration, %s is stored as %.30q, want %s", name, v, kw)
				}
			}

			// Step 5: keywarden alone; the old plugin stopped.
			stop()
			restart(t, []byte(template(t, "secrets.yaml")))
			readAll(t, ctx, a, ns, want)
			if got, err := getSecretValue(ctx, a, ns, "binary", "v"); err != nil || !bytes.Equal(got, binary) {
				t.Fatalf("binary secret reads %q, %v; want %q", got, err, binary)
			}
			t.Logf("from %s: %d Secrets moved to keywarden in %s", src.name, len(want)+2, time.Since(begin).Round(time.Second))
		})
	}
}

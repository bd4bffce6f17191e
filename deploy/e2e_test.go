//go:build e2e

package deploy

// End-to-end checks of the deploy files against a real control plane (etcd,
// keywarden and kube-apiserver v1.37 from test/e2e/cluster). Run with
// `go test -tags e2e ./deploy` after `make build e2e-tools`.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func absPath(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// installConfig writes deploy/encryption/<file> to dst with its endpoint
// pointed at the test's keywarden socket: the only change from the file an
// operator installs. Written by rename, as an operator (and kind-up.sh) does.
func installConfig(t *testing.T, file, socket, dst string) {
	t.Helper()
	b := readFile(t, filepath.Join("encryption", file))
	const endpoint = "endpoint: unix:///run/keywarden/kms.sock"
	if strings.Contains(b, "kms:") && !strings.Contains(b, endpoint) {
		t.Fatalf("%s: no %q to point at the test socket", file, endpoint)
	}
	b = strings.ReplaceAll(b, endpoint, "endpoint: "+socket)
	if err := os.WriteFile(dst+".tmp", []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".tmp", dst); err != nil {
		t.Fatal(err)
	}
}

// kubeadmAPIServerArgs returns kube-apiserver's extra arguments from
// deploy/kubeadm, with the EncryptionConfiguration path replaced by cfg.
func kubeadmAPIServerArgs(t *testing.T, cfg string) []string {
	t.Helper()
	var cc clusterConfiguration
	decodeStrict(t, kubeadmPatch, []byte(readFile(t, kubeadmPatch)), &cc)
	var args []string
	for _, a := range cc.APIServer.ExtraArgs {
		v := a.Value
		if a.Name == "encryption-provider-config" {
			v = cfg
		}
		args = append(args, "--"+a.Name+"="+v)
	}
	return args
}

// stored reads a value from etcd.
func stored(t *testing.T, c *cluster.Cluster, key string) []byte {
	t.Helper()
	v, found, err := c.Etcd.Get(ctxFor(t, time.Minute), key)
	if err != nil || !found {
		t.Fatalf("etcd get %s: found=%v %v", key, found, err)
	}
	return v
}

// wantStored checks the prefix of a stored value: the KMS v2 prefix of
// keywarden, another "k8s:enc:" prefix, or none (plaintext, "").
func wantStored(t *testing.T, c *cluster.Cluster, key, prefix string) {
	t.Helper()
	v := stored(t, c, key)
	switch {
	case prefix == "" && strings.HasPrefix(string(v), "k8s:enc:"):
		t.Errorf("%s is stored encrypted (%.30q), want plaintext", key, v)
	case prefix != "" && !strings.HasPrefix(string(v), prefix):
		t.Errorf("%s is stored as %.30q…, want prefix %q", key, v, prefix)
	}
}

func kubectl(t *testing.T, c *cluster.Cluster, stdin string, args ...string) string {
	t.Helper()
	out, err := c.APIServer.Kubectl(ctxFor(t, 2*time.Minute), stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestE2EStaticPodDryRun has a real kube-apiserver validate and admit the
// static pod (as a Pod: a mirror pod goes through the same validation), and
// the variant kind-up.sh installs.
func TestE2EStaticPodDryRun(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	// No kube-controller-manager runs here to make kube-system's default
	// ServiceAccount, which the ServiceAccount admission plugin looks up for a
	// Pod (even one that mounts no token).
	kubectl(t, c, "", "-n", "kube-system", "create", "serviceaccount", "default")

	// As the kubelet posts it: a mirror pod, which the ServiceAccount
	// admission plugin checks more strictly (no service account, no token).
	var mirror map[string]any
	if err := yamlUnmarshal([]byte(readFile(t, staticPod)), &mirror); err != nil {
		t.Fatal(err)
	}
	mirror["metadata"].(map[string]any)["annotations"] = map[string]any{"kubernetes.io/config.mirror": "e2e"}
	mirror["spec"].(map[string]any)["nodeName"] = "cp1" // a mirror pod is bound to its node
	mirrorJSON, err := json.Marshal(mirror)
	if err != nil {
		t.Fatal(err)
	}
	for name, manifest := range map[string]string{
		"deploy/static-pod":        readFile(t, staticPod),
		"deploy/static-pod/mirror": string(mirrorJSON),
		"kind-up.sh":               bashLib(t, readFile(t, staticPod), "kind_manifest keywarden:e2e sha256:0123"),
	} {
		t.Run(name, func(t *testing.T) {
			out := kubectl(t, c, manifest, "apply", "--dry-run=server", "-f", "-", "-o", "json")
			var pod struct {
				Metadata struct{ Namespace string } `json:"metadata"`
				Spec     struct {
					Priority          int    `json:"priority"`
					PriorityClassName string `json:"priorityClassName"`
				} `json:"spec"`
			}
			if err := json.Unmarshal([]byte(out), &pod); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			// Priority admission resolved the class to the number the
			// manifest states (it rejects a mismatch).
			if pod.Metadata.Namespace != "kube-system" || pod.Spec.PriorityClassName != "system-node-critical" || pod.Spec.Priority != 2000001000 {
				t.Errorf("admitted pod: %+v", pod)
			}
		})
	}
}

// TestE2EEncryptionConfigs loads the files of deploy/encryption into a real
// kube-apiserver, in the order of a cluster's life (the other migrate-from-*
// templates are loaded by test/e2e's TestMigrateToKeywarden): Secrets under a static
// aescbc key; the migration configuration; keywarden for Secrets;
// decommission; identity only; then keywarden again for Secrets and
// ConfigMaps, and for everything but Events. After each restart, a new object must be stored as the file says and
// every earlier object must still read back.
func TestE2EEncryptionConfigs(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "encryption-config.yaml")
	aescbcKey := []byte("REPLACE-WITH-YOUR-CURRENT-KEY-32") // the placeholder in migrate-from-aescbc.yaml
	start := cluster.EncryptionConfig([]string{"secrets"}, []cluster.Provider{cluster.AESCBC("key1", aescbcKey), cluster.Identity()})
	if err := os.WriteFile(cfg, start, 0o600); err != nil {
		t.Fatal(err)
	}
	c := cluster.Start(t, cluster.Options{
		Providers: func(*cluster.Keywarden) []cluster.Provider { return []cluster.Provider{cluster.Identity()} },
		// Given last, this --encryption-provider-config wins over the
		// harness's own.
		APIServer: cluster.APIServerOptions{ExtraArgs: []string{"--encryption-provider-config=" + cfg}},
	})
	kms := cluster.KMSv2Prefix(providerName)
	secrets := map[string]string{}
	newSecret := func(name string) string {
		value := "v-" + name
		kubectl(t, c, "", "create", "secret", "generic", name, "--from-literal=v="+value)
		secrets[name] = value
		return "/registry/secrets/default/" + name
	}
	readAll := func() {
		t.Helper()
		for name, value := range secrets {
			got := kubectl(t, c, "", "get", "secret", name, "-o", "jsonpath={.data.v}")
			if want := b64(value); got != want {
				t.Errorf("secret %s reads %q, want %q", name, got, want)
			}
		}
	}
	rewriteSecrets := func() {
		kubectl(t, c, kubectl(t, c, "", "get", "secrets", "-o", "json"), "replace", "-f", "-")
	}

	wantStored(t, c, newSecret("before"), "k8s:enc:aescbc:v1:key1:")

	steps := []struct {
		file  string
		check func(t *testing.T)
	}{
		{"migrate-from-aescbc.yaml", func(t *testing.T) {
			wantStored(t, c, newSecret("migrating"), kms)
			readAll()
			rewriteSecrets()
			wantStored(t, c, "/registry/secrets/default/before", kms)
		}},
		{"secrets.yaml", func(t *testing.T) {
			wantStored(t, c, newSecret("secrets"), kms)
			kubectl(t, c, "", "create", "configmap", "cm-plain", "--from-literal=k=v")
			wantStored(t, c, "/registry/configmaps/default/cm-plain", "")
		}},
		{"decommission.yaml", func(t *testing.T) {
			wantStored(t, c, newSecret("decommission"), "")
			readAll()
			rewriteSecrets()
			for name := range secrets {
				wantStored(t, c, "/registry/secrets/default/"+name, "")
			}
		}},
		{"identity-only.yaml", func(t *testing.T) {
			wantStored(t, c, newSecret("identity-only"), "")
		}},
		{"secrets-configmaps.yaml", func(t *testing.T) {
			wantStored(t, c, newSecret("secrets-configmaps"), kms)
			kubectl(t, c, "", "create", "configmap", "cm-enc", "--from-literal=k=v")
			wantStored(t, c, "/registry/configmaps/default/cm-enc", kms)
		}},
		{"all-resources.yaml", func(t *testing.T) {
			wantStored(t, c, newSecret("all-resources"), kms)
			kubectl(t, c, "", "create", "serviceaccount", "sa-enc")
			wantStored(t, c, "/registry/serviceaccounts/default/sa-enc", kms)
			kubectl(t, c, `apiVersion: v1
kind: Event
metadata: {name: ev-plain, namespace: default}
involvedObject: {kind: Pod, name: x, namespace: default}
reason: Test
message: events stay in plaintext
type: Normal
`, "create", "-f", "-")
			wantStored(t, c, "/registry/events/default/ev-plain", "")
		}},
	}
	for _, s := range steps {
		t.Run(s.file, func(t *testing.T) {
			c.APIServer.Stop()
			installConfig(t, s.file, c.Keywarden.Socket, cfg)
			d, err := c.APIServer.Start()
			if err != nil {
				t.Fatalf("kube-apiserver with %s: %v\n%s", s.file, err, tailString(c.APIServer.Log(), 30))
			}
			t.Logf("kube-apiserver ready with %s in %s", s.file, d.Round(time.Millisecond))
			s.check(t)
			readAll()
		})
	}
}

// TestE2EAutomaticReload is what kind-up.sh does, on a real kube-apiserver
// started with deploy/kubeadm's arguments: identity-only at start, then
// secrets.yaml swapped in by rename; the apiserver must switch without a
// restart, lib.sh's encryption_reloads must see it, and new Secrets must be
// stored by keywarden. It also finds the allowlisted kube-apiserver metrics
// on the live /metrics.
func TestE2EAutomaticReload(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "encryption-config.yaml")
	installConfig(t, "identity-only.yaml", "", cfg)
	c := cluster.Start(t, cluster.Options{
		Providers: func(*cluster.Keywarden) []cluster.Provider { return []cluster.Provider{cluster.Identity()} },
		APIServer: cluster.APIServerOptions{ExtraArgs: kubeadmAPIServerArgs(t, cfg)},
	})
	kubectl(t, c, "", "create", "secret", "generic", "before", "--from-literal=v=1")
	wantStored(t, c, "/registry/secrets/default/before", "")

	reloads := func() string {
		return strings.TrimSpace(bashLib(t, kubectl(t, c, "", "get", "--raw", "/metrics"), "encryption_reloads"))
	}
	if n := reloads(); n != "0" {
		t.Fatalf("encryption_reloads before the swap = %s, want 0", n)
	}
	installConfig(t, "secrets.yaml", c.Keywarden.Socket, cfg)
	began := time.Now()
	deadline := began.Add(3 * time.Minute) // the apiserver polls the file every minute
	for reloads() == "0" {
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver did not reload the EncryptionConfiguration in 3m\n%s", tailString(c.APIServer.Log(), 30))
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("kube-apiserver reloaded the EncryptionConfiguration %s after the swap", time.Since(began).Round(time.Second))

	kubectl(t, c, "", "create", "secret", "generic", "after", "--from-literal=v=2")
	wantStored(t, c, "/registry/secrets/default/after", cluster.KMSv2Prefix(providerName))
	if got := kubectl(t, c, "", "get", "secret", "after", "-o", "jsonpath={.data.v}"); got != b64("2") {
		t.Errorf("secret after reads %q", got)
	}
	kubectl(t, c, kubectl(t, c, "", "get", "secrets", "-o", "json"), "replace", "-f", "-")
	wantStored(t, c, "/registry/secrets/default/before", cluster.KMSv2Prefix(providerName))

	// Allowlisted kube-apiserver metrics that exist once Secrets have gone
	// through keywarden both ways. The others appear only on errors.
	live := parseExposition(kubectl(t, c, "", "get", "--raw", "/metrics"))
	for name, hist := range apiserverMetrics {
		series := name
		if hist {
			series += "_bucket"
		}
		switch name {
		case "apiserver_envelope_encryption_invalid_key_id_from_status_total",
			"apiserver_envelope_encryption_dek_source_cache_size":
			t.Logf("%s present: %v (not required: only set on errors or cache activity)", name, live[series])
			continue
		}
		if !live[series] {
			t.Errorf("kube-apiserver does not serve %s", series)
		}
	}
}

// TestE2EKubeadmValidate has kubeadm v1.37 validate deploy/kubeadm and the
// kind patch (with the apiVersion kind gives it). kubeadm is built with the
// e2e tools; $KUBEADM overrides test/e2e/tools/bin/kubeadm.
func TestE2EKubeadmValidate(t *testing.T) {
	kubeadm := os.Getenv("KUBEADM")
	if kubeadm == "" {
		kubeadm = filepath.Join(repoRoot, "test", "e2e", "tools", "bin", "kubeadm")
	}
	if !fileExists(kubeadm) {
		t.Fatalf("no kubeadm at %s: run `make e2e-tools` (or set $KUBEADM)", kubeadm)
	}
	kubeadm = absPath(t, kubeadm)
	run(t, ".", kubeadm, "config", "validate", "--config", kubeadmPatch)

	kindPatch := "apiVersion: kubeadm.k8s.io/v1beta4\n" + kindClusterPatch(t)
	f := filepath.Join(t.TempDir(), "kind-patch.yaml")
	if err := os.WriteFile(f, []byte(kindPatch), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, ".", kubeadm, "config", "validate", "--config", f)
}

// kindClusterPatch returns the kind config's kubeadm patch.
func kindClusterPatch(t *testing.T) string {
	t.Helper()
	var c struct {
		Nodes []struct {
			KubeadmConfigPatches []string `yaml:"kubeadmConfigPatches"`
		} `yaml:"nodes"`
	}
	if err := yamlUnmarshal([]byte(readFile(t, kindConfig)), &c); err != nil || len(c.Nodes) == 0 || len(c.Nodes[0].KubeadmConfigPatches) == 0 {
		t.Fatalf("kind config: %v", err)
	}
	return c.Nodes[0].KubeadmConfigPatches[0]
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func yamlUnmarshal(b []byte, v any) error { return yaml.Unmarshal(b, v) }

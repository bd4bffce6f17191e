//go:build e2e

package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// TestSecretWorkflows runs the everyday Secret workflows with the real
// kubectl against kube-apiserver encrypting with keywarden. After each, the
// raw etcd value must be a KMS v2 envelope under keywarden's root key that
// contains none of the plaintext, and `kubectl get -o jsonpath | base64 -d`
// must return exactly what was written.
func TestSecretWorkflows(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx := testCtx(t, 10*time.Minute)
	a, e := c.APIServer, c.Etcd
	primary, err := c.Keywarden.Keyset().Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "wf"
	kubectl(t, ctx, a, "", "create", "namespace", ns)
	dir := t.TempDir()

	// check verifies one secret end to end: exact data through kubectl,
	// sealed in etcd under the primary root key.
	check := func(t *testing.T, ns, name string, want map[string][]byte) *stored.EncryptedObject {
		t.Helper()
		var plain [][]byte
		for k, v := range want {
			if got := kubectlSecretValue(t, ctx, a, ns, name, k); !bytes.Equal(got, v) {
				t.Errorf("%s/%s[%s] = %q, want %q", ns, name, k, got, v)
			}
			if len(v) >= 6 {
				plain = append(plain, v)
			}
		}
		s, err := a.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Data) != len(want) {
			t.Errorf("%s/%s has keys %v, want %v", ns, name, keys(s.Data), keys(want))
		}
		obj := assertSealed(t, ctx, e, c.Provider, secretKey(ns, name), plain...)
		if obj.KeyID != primary {
			t.Errorf("%s/%s stored under key_id %q, want the primary %q", ns, name, obj.KeyID, primary)
		}
		return obj
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("create generic from literals", func(t *testing.T) {
		user, pass := unique("user"), unique("pass")
		kubectl(t, ctx, a, "", "create", "secret", "generic", "literals", "-n", ns,
			"--from-literal=username="+user, "--from-literal=password="+pass)
		check(t, ns, "literals", map[string][]byte{"username": []byte(user), "password": []byte(pass)})
	})

	t.Run("create generic from files", func(t *testing.T) {
		conf := []byte(`{"dsn":"` + unique("postgres://app") + `"}`)
		bin := make([]byte, 64)
		_, _ = rand.Read(bin)
		bin = append([]byte{0, 0xff, 0xfe}, bin...) // not UTF-8
		env := unique("TOKEN")
		write("config.json", conf)
		kubectl(t, ctx, a, "", "create", "secret", "generic", "files", "-n", ns,
			"--from-file="+filepath.Join(dir, "config.json"),
			"--from-file=blob.bin="+write("random", bin))
		check(t, ns, "files", map[string][]byte{"config.json": conf, "blob.bin": bin})

		kubectl(t, ctx, a, "", "create", "secret", "generic", "envfile", "-n", ns,
			"--from-env-file="+write("app.env", []byte("API_TOKEN="+env+"\n")))
		check(t, ns, "envfile", map[string][]byte{"API_TOKEN": []byte(env)})
	})

	t.Run("create tls", func(t *testing.T) {
		crt, key := selfSigned(t)
		kubectl(t, ctx, a, "", "create", "secret", "tls", "web-tls", "-n", ns,
			"--cert="+write("tls.crt", crt), "--key="+write("tls.key", key))
		check(t, ns, "web-tls", map[string][]byte{"tls.crt": crt, "tls.key": key})
		// The key's base64 body, line by line, must not be in etcd either.
		raw := rawValue(t, ctx, e, secretKey(ns, "web-tls"))
		for _, line := range strings.Split(string(key), "\n") {
			if len(line) > 20 && bytes.Contains(raw, []byte(line)) {
				t.Errorf("a line of the private key PEM is in etcd")
			}
		}
	})

	t.Run("create docker-registry", func(t *testing.T) {
		user, pass := unique("robot"), unique("pw")
		kubectl(t, ctx, a, "", "create", "secret", "docker-registry", "pull", "-n", ns,
			"--docker-server=registry.example.com", "--docker-username="+user,
			"--docker-password="+pass, "--docker-email=ops@example.com")
		cfg := kubectlSecretValue(t, ctx, a, ns, "pull", ".dockerconfigjson")
		var dc struct {
			Auths map[string]struct{ Username, Password, Auth string }
		}
		if err := json.Unmarshal(cfg, &dc); err != nil {
			t.Fatalf(".dockerconfigjson: %v", err)
		}
		got := dc.Auths["registry.example.com"]
		if got.Username != user || got.Password != pass {
			t.Errorf(".dockerconfigjson has %+v, want %s/%s", got, user, pass)
		}
		check(t, ns, "pull", map[string][]byte{".dockerconfigjson": cfg})
		assertSealed(t, ctx, e, c.Provider, secretKey(ns, "pull"), []byte(pass), []byte(got.Auth))
	})

	t.Run("apply data base64", func(t *testing.T) {
		v := unique("api-key")
		kubectl(t, ctx, a, fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: applied-data, namespace: %s}
type: Opaque
data:
  api-key: %s
`, ns, base64.StdEncoding.EncodeToString([]byte(v))), "apply", "-f", "-")
		check(t, ns, "applied-data", map[string][]byte{"api-key": []byte(v)})
	})

	t.Run("apply stringData", func(t *testing.T) {
		manifest := func(v string) string {
			return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: applied-string, namespace: %s}
stringData:
  token: %q
`, ns, v)
		}
		v1, v2 := unique("tok1"), unique("tok2")
		kubectl(t, ctx, a, manifest(v1), "apply", "-f", "-")
		check(t, ns, "applied-string", map[string][]byte{"token": []byte(v1)})
		kubectl(t, ctx, a, manifest(v2), "apply", "-f", "-")
		check(t, ns, "applied-string", map[string][]byte{"token": []byte(v2)})
		assertSealed(t, ctx, e, c.Provider, secretKey(ns, "applied-string"), []byte(v1))
	})

	t.Run("apply -k secretGenerator", func(t *testing.T) {
		kdir := filepath.Join(dir, "kustomize")
		if err := os.Mkdir(kdir, 0o700); err != nil {
			t.Fatal(err)
		}
		lit, file := unique("literal"), unique("from-file")
		if err := os.WriteFile(filepath.Join(kdir, "password.txt"), []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(kdir, "kustomization.yaml"), []byte(fmt.Sprintf(`namespace: %s
secretGenerator:
  - name: generated
    literals:
      - db-user=%s
    files:
      - password.txt
    options:
      labels:
        app: generated
`, ns, lit)), 0o600); err != nil {
			t.Fatal(err)
		}
		out := kubectl(t, ctx, a, "", "apply", "-k", kdir, "-o", "name")
		name, ok := strings.CutPrefix(strings.TrimSpace(out), "secret/")
		if !ok || !strings.HasPrefix(name, "generated-") {
			t.Fatalf("apply -k printed %q, want secret/generated-<hash>", out)
		}
		check(t, ns, name, map[string][]byte{"db-user": []byte(lit), "password.txt": []byte(file)})
	})

	t.Run("patch and replace", func(t *testing.T) {
		// Its own Secret, so it runs (and fails) on its own.
		user, old := unique("user"), unique("pass")
		kubectl(t, ctx, a, "", "create", "secret", "generic", "edited", "-n", ns,
			"--from-literal=username="+user, "--from-literal=password="+old)
		check(t, ns, "edited", map[string][]byte{"username": []byte(user), "password": []byte(old)})
		patched := unique("patched")
		kubectl(t, ctx, a, "", "patch", "secret", "edited", "-n", ns, "--type=merge",
			"-p", fmt.Sprintf(`{"data":{"password":%q}}`, base64.StdEncoding.EncodeToString([]byte(patched))))
		check(t, ns, "edited", map[string][]byte{"username": []byte(user), "password": []byte(patched)})
		assertSealed(t, ctx, e, c.Provider, secretKey(ns, "edited"), []byte(old))

		// An edit: get, change, replace.
		var s map[string]any
		if err := json.Unmarshal([]byte(kubectl(t, ctx, a, "", "get", "secret", "edited", "-n", ns, "-o", "json")), &s); err != nil {
			t.Fatal(err)
		}
		replaced := unique("replaced")
		s["data"].(map[string]any)["password"] = base64.StdEncoding.EncodeToString([]byte(replaced))
		b, _ := json.Marshal(s)
		kubectl(t, ctx, a, string(b), "replace", "-f", "-")
		check(t, ns, "edited", map[string][]byte{"username": []byte(user), "password": []byte(replaced)})
		assertSealed(t, ctx, e, c.Provider, secretKey(ns, "edited"), []byte(patched))
	})

	t.Run("rotate value with dry-run apply", func(t *testing.T) {
		var prev string
		for i := range 3 {
			v := unique(fmt.Sprintf("rotated%d", i))
			y := kubectl(t, ctx, a, "", "create", "secret", "generic", "rotated", "-n", ns,
				"--from-literal=key="+v, "--dry-run=client", "-o", "yaml")
			kubectl(t, ctx, a, y, "apply", "-f", "-")
			check(t, ns, "rotated", map[string][]byte{"key": []byte(v)})
			if prev != "" {
				assertSealed(t, ctx, e, c.Provider, secretKey(ns, "rotated"), []byte(prev))
			}
			prev = v
		}
	})

	t.Run("delete by label", func(t *testing.T) {
		for _, n := range []string{"doomed-1", "doomed-2", "doomed-3", "kept"} {
			app := "doomed"
			if n == "kept" {
				app = "kept"
			}
			kubectl(t, ctx, a, "", "create", "secret", "generic", n, "-n", ns, "--from-literal=v="+unique(n))
			kubectl(t, ctx, a, "", "label", "secret", n, "-n", ns, "purpose="+app)
		}
		kubectl(t, ctx, a, "", "delete", "secret", "-n", ns, "-l", "purpose=doomed")
		for _, n := range []string{"doomed-1", "doomed-2", "doomed-3"} {
			if _, found, err := e.Get(ctx, secretKey(ns, n)); err != nil || found {
				t.Errorf("%s: still in etcd after delete -l (err %v)", n, err)
			}
		}
		assertSealed(t, ctx, e, c.Provider, secretKey(ns, "kept"))
		if out := kubectl(t, ctx, a, "", "get", "secret", "-n", ns, "-l", "purpose", "-o", "name"); strings.TrimSpace(out) != "secret/kept" {
			t.Errorf("after delete -l purpose=doomed: %q, want only secret/kept", out)
		}
	})

	t.Run("immutable", func(t *testing.T) {
		v := unique("frozen")
		kubectl(t, ctx, a, fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: frozen, namespace: %s}
immutable: true
stringData: {v: %q}
`, ns, v), "apply", "-f", "-")
		check(t, ns, "frozen", map[string][]byte{"v": []byte(v)})
		before := rawValue(t, ctx, e, secretKey(ns, "frozen"))
		_, err := a.Kubectl(ctx, "", "patch", "secret", "frozen", "-n", ns, "--type=merge", "-p", `{"stringData":{"v":"changed-value"}}`)
		if err == nil || !strings.Contains(err.Error(), "immutable") {
			t.Fatalf("patching an immutable secret: %v, want a refusal naming immutability", err)
		}
		if after := rawValue(t, ctx, e, secretKey(ns, "frozen")); !bytes.Equal(before, after) {
			t.Error("the refused update changed the stored value")
		}
		check(t, ns, "frozen", map[string][]byte{"v": []byte(v)})
		kubectl(t, ctx, a, "", "delete", "secret", "frozen", "-n", ns)
	})

	t.Run("every built-in type", func(t *testing.T) {
		crt, key := selfSigned(t)
		kubectl(t, ctx, a, "", "create", "serviceaccount", "builder", "-n", ns)
		dockercfg := `{"registry.example.com":{"username":"u","password":"` + unique("pw") + `","email":"e@example.com"}}`
		dockerjson := `{"auths":{"registry.example.com":{"username":"u","password":"` + unique("pw") + `"}}}`
		tokenID := strings.ToLower(unique("x")[2:8])
		types := []struct {
			typ, ns, name, annotations string
			data                       map[string]string
		}{
			{typ: "Opaque", ns: ns, name: "t-opaque", data: map[string]string{"anything": unique("opaque")}},
			{typ: "kubernetes.io/service-account-token", ns: ns, name: "t-sa-token",
				annotations: "kubernetes.io/service-account.name: builder",
				data:        map[string]string{"token": unique("eyJhbGciOi")}},
			{typ: "kubernetes.io/dockercfg", ns: ns, name: "t-dockercfg", data: map[string]string{".dockercfg": dockercfg}},
			{typ: "kubernetes.io/dockerconfigjson", ns: ns, name: "t-dockerconfigjson", data: map[string]string{".dockerconfigjson": dockerjson}},
			{typ: "kubernetes.io/basic-auth", ns: ns, name: "t-basic-auth", data: map[string]string{"username": unique("admin"), "password": unique("basic")}},
			{typ: "kubernetes.io/ssh-auth", ns: ns, name: "t-ssh-auth", data: map[string]string{"ssh-privatekey": string(key)}},
			{typ: "kubernetes.io/tls", ns: ns, name: "t-tls", data: map[string]string{"tls.crt": string(crt), "tls.key": string(key)}},
			{typ: "bootstrap.kubernetes.io/token", ns: "kube-system", name: "bootstrap-token-" + tokenID,
				data: map[string]string{"token-id": tokenID, "token-secret": strings.ToLower(unique("s")[2:18]),
					"usage-bootstrap-authentication": "true", "description": unique("join token")}},
		}
		for _, tc := range types {
			t.Run(tc.typ, func(t *testing.T) {
				doc := map[string]any{
					"apiVersion": "v1", "kind": "Secret", "type": tc.typ,
					"metadata":   map[string]any{"name": tc.name, "namespace": tc.ns},
					"stringData": tc.data,
				}
				if tc.annotations != "" {
					k, v, _ := strings.Cut(tc.annotations, ": ")
					doc["metadata"].(map[string]any)["annotations"] = map[string]string{k: v}
				}
				b, _ := json.Marshal(doc)
				kubectl(t, ctx, a, string(b), "apply", "-f", "-")
				want := map[string][]byte{}
				for k, v := range tc.data {
					want[k] = []byte(v)
				}
				check(t, tc.ns, tc.name, want)
				if got := kubectl(t, ctx, a, "", "get", "secret", tc.name, "-n", tc.ns, "-o", "jsonpath={.type}"); got != tc.typ {
					t.Errorf("type = %q, want %q", got, tc.typ)
				}
			})
		}
	})

	t.Run("configmap is sealed too", func(t *testing.T) {
		v := unique("cm-value")
		kubectl(t, ctx, a, "", "create", "configmap", "settings", "-n", ns, "--from-literal=k="+v)
		obj := assertSealed(t, ctx, e, c.Provider, configMapKey(ns, "settings"), []byte(v))
		if obj.KeyID != primary {
			t.Errorf("configmap key_id %q, want %q", obj.KeyID, primary)
		}
	})
}

// selfSigned makes a throwaway certificate and key in PEM.
func selfSigned(t *testing.T) (crt, key []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "app.example.com"},
		DNSNames:     []string{"app.example.com"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

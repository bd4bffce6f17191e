//go:build e2e

package deploy

// deploy/systemd and deploy/sidecar run as processes: keywarden with
// exactly the arguments of the unit or the pod, beside a real
// kube-apiserver given the EncryptionConfiguration they ship. What the
// tests rewrite, and nothing else: the path prefixes (/run/…, /etc/…,
// /var/lib/…, /var/run/…) to a temporary directory, keywarden's
// --metrics-addr and --health-addr ports to free ones, and for the sidecar
// the keystore URI's Vault address, key and CA to the Vault dev server
// (tls=off, loopback) plus key-id-ttl=1s, so a revoked Vault token is
// noticed within seconds instead of a minute.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"go.yaml.in/yaml/v3"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// rewriter maps the manifests' absolute path prefixes into root.
type rewriter struct {
	root     string
	prefixes []string
}

func (r rewriter) apply(s string) string {
	for _, p := range r.prefixes {
		s = strings.ReplaceAll(s, p, filepath.Join(r.root, p))
	}
	return s
}

// freeAddrs gives --metrics-addr and --health-addr free ports on their host.
func freeAddrs(t *testing.T, args []string) []string {
	t.Helper()
	out := slicesClone(args)
	for i, a := range out {
		for _, f := range []string{"--metrics-addr=", "--health-addr="} {
			if v, ok := strings.CutPrefix(a, f); ok {
				host := v[:strings.LastIndex(v, ":")]
				port, err := cluster.FreePort()
				if err != nil {
					t.Fatal(err)
				}
				out[i] = f + host + ":" + strconv.Itoa(port)
			}
		}
	}
	return out
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

func argValue(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+flag+"="); ok {
			return v
		}
	}
	return ""
}

// startKeywardenArgs runs the built keywarden with args and waits for its
// socket and for /readyz on its health address.
func startKeywardenArgs(t *testing.T, tools cluster.Tools, dir string, args []string) *cluster.Process {
	t.Helper()
	p := cluster.StartProcess(t, "keywarden", filepath.Join(dir, "keywarden.log"), tools.Keywarden, args...)
	sock := strings.TrimPrefix(argValue(args, "listen"), "unix://")
	health := "http://" + strings.Replace(argValue(args, "health-addr"), "0.0.0.0", "127.0.0.1", 1) + "/readyz"
	deadline := time.Now().Add(30 * time.Second)
	for {
		fi, err := os.Stat(sock)
		if err == nil && fi.Mode()&os.ModeSocket != 0 {
			if r, err := http.Get(health); err == nil {
				r.Body.Close()
				if r.StatusCode == http.StatusOK {
					return p
				}
			}
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("keywarden %v not ready:\n%s", args, tailString(readFile(t, p.LogPath), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// secretsRoundTrip writes Secrets, reads them back, and checks etcd holds
// them as keywarden's KMS v2 values.
func secretsRoundTrip(t *testing.T, c *cluster.Cluster, names ...string) {
	t.Helper()
	for _, n := range names {
		kubectl(t, c, "", "create", "secret", "generic", n, "--from-literal=v=value-"+n)
		if got := kubectl(t, c, "", "get", "secret", n, "-o", "jsonpath={.data.v}"); got != b64("value-"+n) {
			t.Errorf("secret %s reads %q", n, got)
		}
		wantStored(t, c, "/registry/secrets/default/"+n, cluster.KMSv2Prefix(providerName))
	}
}

// TestE2ESystemd: keywarden with keywarden.service's ExecStart, in the
// directories systemd makes for it, and kube-apiserver with the k3s
// snippet's arguments and deploy/systemd's EncryptionConfiguration.
func TestE2ESystemd(t *testing.T) {
	tools := cluster.MustTools(t)
	root := t.TempDir()
	rw := rewriter{root: root, prefixes: []string{"/run/keywarden", "/etc/keywarden", "/var/lib/keywarden", "/etc/rancher/keywarden"}}
	u := parseUnit(t, systemdUnit)
	exec := strings.Fields(u.one(t, "Service", "ExecStart"))
	args := freeAddrs(t, strings.Fields(rw.apply(strings.Join(exec[1:], " "))))
	// What systemd and the install steps make: RuntimeDirectory and
	// StateDirectory 0700, /etc/keywarden 0700 with a keyset.
	for _, d := range []string{"/run/" + u.one(t, "Service", "RuntimeDirectory"), "/var/lib/" + u.one(t, "Service", "StateDirectory"), "/etc/keywarden", "/etc/rancher/keywarden"} {
		if err := os.MkdirAll(rw.apply(d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cluster.NewKeystore(tools, argValue(args, "keystore")).Init(ctxFor(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	startKeywardenArgs(t, tools, root, args)

	cfg := rw.apply("/etc/rancher/keywarden/encryption-config.yaml")
	if err := os.WriteFile(cfg, []byte(rw.apply(readFile(t, systemdEncrypt))), 0o600); err != nil {
		t.Fatal(err)
	}
	var k3s map[string][]string
	if err := yaml.Unmarshal([]byte(readFile(t, k3sConfig)), &k3s); err != nil {
		t.Fatal(err)
	}
	var apiArgs []string
	for _, a := range k3s["kube-apiserver-arg+"] {
		apiArgs = append(apiArgs, "--"+rw.apply(a))
	}
	c := startWithoutKeywarden(t, tools, apiArgs)
	secretsRoundTrip(t, c, "systemd-a", "systemd-b")
}

// startWithoutKeywarden starts etcd and kube-apiserver; the harness's own
// keywarden is not used (its provider list is identity alone, overridden
// by the --encryption-provider-config in apiArgs, given last).
func startWithoutKeywarden(t *testing.T, tools cluster.Tools, apiArgs []string) *cluster.Cluster {
	t.Helper()
	etcd := cluster.StartEtcd(t, tools, cluster.EtcdOptions{})
	api := cluster.StartAPIServer(t, tools, cluster.APIServerOptions{
		EtcdServers: etcd.Endpoints,
		Providers:   []cluster.Provider{cluster.Identity()},
		ExtraArgs:   apiArgs,
	})
	return &cluster.Cluster{Tools: tools, Etcd: etcd, APIServer: api, Provider: providerName}
}

// jwksPEM turns the apiserver's service-account JWKS (one EC key) into the
// PEM Vault's jwt_validation_pubkeys takes.
func jwksPEM(t *testing.T, raw string) string {
	t.Helper()
	var set struct {
		Keys []struct{ Kty, Crv, X, Y string } `json:"keys"`
	}
	if err := json.Unmarshal([]byte(raw), &set); err != nil || len(set.Keys) != 1 || set.Keys[0].Kty != "EC" {
		t.Fatalf("JWKS %.200s: %v", raw, err)
	}
	k := set.Keys[0]
	x, err1 := base64.RawURLEncoding.DecodeString(k.X)
	y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
	if err1 != nil || err2 != nil || k.Crv != "P-256" {
		t.Fatalf("JWKS key %+v", k)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		t.Fatalf("JWKS key: %v", err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// jwtClaim reads one claim of a JWT (not verified: the test's own token).
func jwtClaim(t *testing.T, jwt, claim string) string {
	t.Helper()
	parts := strings.Split(jwt, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	var m map[string]any
	if err != nil || json.Unmarshal(b, &m) != nil {
		t.Fatal("token is not a JWT")
	}
	s, _ := m[claim].(string)
	return s
}

// TestE2ESidecar: keywarden with the sidecar's arguments, logged in to
// Vault Transit with a service-account token the real kube-apiserver
// issued for audience vault, written where the projected volume puts it;
// kube-apiserver with the ConfigMap's EncryptionConfiguration. Then the
// token rotates: a new one replaces the file, Vault forgets keywarden's
// login, and keywarden logs in again with the new JWT. A token for another
// audience is refused at start with an error that names the audience.
func TestE2ESidecar(t *testing.T) {
	tools := cluster.MustTools(t)
	vaultBin, err := cluster.VaultBin()
	if err != nil {
		if os.Getenv("KEYWARDEN_REQUIRE_VAULT") != "" {
			t.Fatalf("KEYWARDEN_REQUIRE_VAULT is set, but %v", err)
		}
		t.Skipf("%v (set KEYWARDEN_REQUIRE_VAULT=1 to make this a failure)", err)
	}
	s := readSidecar(t)
	root := t.TempDir()
	rw := rewriter{root: root, prefixes: []string{"/run/kms", "/var/lib/keywarden", "/var/run/secrets/vault"}}

	// The apiserver first, with identity only, as the issuer of the token
	// (in a hosted control plane, the management cluster's apiserver).
	cfg := filepath.Join(root, "encryption-config.yaml")
	if err := os.WriteFile(cfg, cluster.EncryptionConfig([]string{"secrets"}, []cluster.Provider{cluster.Identity()}), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startWithoutKeywarden(t, tools, []string{"--encryption-provider-config=" + cfg})
	sa := s.byKind["ServiceAccount"].str(t, "metadata.name")
	kubectl(t, c, "", "create", "serviceaccount", sa)
	var aud string
	for _, src := range s.spec.items(t, "volumes") {
		if src.has("projected") {
			aud = src.str(t, "projected.sources.0.serviceAccountToken.audience")
		}
	}
	newToken := func(audience string) string {
		return strings.TrimSpace(kubectl(t, c, "", "create", "token", sa, "--audience", audience, "--duration", "10m"))
	}

	v := cluster.StartVault(t, tools, vaultBin)
	admin, err := v.Admin()
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Sys().EnableAuthWithOptions("jwt", &vaultapi.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Logical().Write("auth/jwt/config", map[string]any{
		"jwt_validation_pubkeys": []string{jwksPEM(t, kubectl(t, c, "", "get", "--raw", "/openid/v1/jwks"))},
	}); err != nil {
		t.Fatal(err)
	}
	ks, err := url.Parse(containerArgs(t, s.kw, "args")["keystore"])
	if err != nil {
		t.Fatal(err)
	}
	q := ks.Query()
	if _, err := admin.Logical().Write("auth/jwt/role/"+q.Get("role"), map[string]any{
		"role_type": "jwt", "user_claim": "sub", "bound_audiences": []string{"vault"},
		"bound_subject":  "system:serviceaccount:default:" + sa,
		"claim_mappings": map[string]string{"jti": "jti"},
		"token_policies": []string{"keywarden"}, "token_ttl": "1h",
	}); err != nil {
		t.Fatal(err)
	}

	// The manifest's arguments, paths under root; the URI to the dev server.
	jwtFile := rw.apply(q.Get("jwt-file"))
	q.Set("jwt-file", jwtFile) // encoded below: rewritten here, not by rw
	q.Del("ca-file")
	q.Set("tls", "off")
	q.Set("key-id-ttl", "1s")
	vu, _ := url.Parse(v.Addr)
	ks.Host, ks.Path, ks.RawQuery = vu.Host, "/transit/keys/keywarden", q.Encode()
	var args []string
	for _, a := range s.kw.list(t, "args") {
		a := a.(string)
		if strings.HasPrefix(a, "--keystore=") {
			a = "--keystore=" + ks.String()
		}
		args = append(args, rw.apply(a))
	}
	args = freeAddrs(t, args)
	for _, d := range []string{"/run/kms", "/var/lib/keywarden", "/var/run/secrets/vault"} {
		if err := os.MkdirAll(rw.apply(d), 0o755); err != nil { // emptyDir and projected roots are not 0700
			t.Fatal(err)
		}
	}
	writeToken := func(tok string) {
		t.Helper()
		// As the kubelet: a new file put in place, 0600 for the pod's user.
		if err := os.WriteFile(jwtFile+".new", []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(jwtFile+".new", jwtFile); err != nil {
			t.Fatal(err)
		}
	}

	// A wrong audience: keywarden does not start, and says why.
	wrong := newToken("https://kubernetes.default.svc.cluster.local")
	writeToken(wrong)
	bad := cluster.StartProcess(t, "keywarden-wrong-aud", filepath.Join(root, "wrong.log"), tools.Keywarden, args...)
	for deadline := time.Now().Add(30 * time.Second); !bad.Exited(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("keywarden with a wrong-audience token still runs")
		}
	}
	log := readFile(t, bad.LogPath)
	if !strings.Contains(log, "permission denied") || !strings.Contains(log, "invalid audience (aud) claim") {
		t.Errorf("wrong audience: log does not say Vault refused the audience:\n%s", tailString(log, 10))
	}
	if strings.Contains(log, wrong[strings.LastIndex(wrong, ".")+1:]) || strings.Contains(log, wrong[:30]) {
		t.Error("keywarden logged the JWT")
	}

	first := newToken(aud)
	writeToken(first)
	startKeywardenArgs(t, tools, root, args)
	cmText := s.byKind["ConfigMap"].m["data"].(map[string]any)["encryption-config.yaml"].(string)
	if err := os.WriteFile(cfg+".new", []byte(rw.apply(cmText)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(cfg+".new", cfg); err != nil {
		t.Fatal(err)
	}
	c.APIServer.Stop()
	if _, err := c.APIServer.Start(); err != nil {
		t.Fatalf("kube-apiserver with the sidecar's EncryptionConfiguration: %v\n%s", err, tailString(c.APIServer.Log(), 30))
	}
	secretsRoundTrip(t, c, "sidecar-a")
	if got := loginJTIs(t, admin); len(got) != 1 || !got[jwtClaim(t, first, "jti")] {
		t.Fatalf("Vault logins by jti %v, want the first token's only", got)
	}

	// Rotation: the kubelet's new token; Vault revokes every jwt login, so
	// keywarden's next call (its 1 s key check) must log in again.
	second := newToken(aud)
	writeToken(second)
	if _, err := admin.Logical().Write("sys/revoke-prefix/auth/jwt", nil); err != nil {
		t.Fatal(err)
	}
	want := jwtClaim(t, second, "jti")
	for deadline := time.Now().Add(30 * time.Second); !loginJTIs(t, admin)[want]; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("keywarden did not log in with the replaced token; logins %v", loginJTIs(t, admin))
		}
	}
	c.APIServer.Stop()
	if _, err := c.APIServer.Start(); err != nil {
		t.Fatal(err)
	}
	secretsRoundTrip(t, c, "sidecar-b")

	// auth=kubernetes: the same token, checked by Vault through the
	// apiserver's TokenReview; a second keywarden must become ready on it.
	if err := admin.Sys().EnableAuthWithOptions("kubernetes", &vaultapi.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Logical().Write("auth/kubernetes/config", map[string]any{
		"kubernetes_host": c.APIServer.URL, "kubernetes_ca_cert": string(c.APIServer.CA),
		"token_reviewer_jwt": c.APIServer.Token,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Logical().Write("auth/kubernetes/role/"+q.Get("role"), map[string]any{
		"bound_service_account_names": []string{sa}, "bound_service_account_namespaces": []string{"default"},
		"audience": "vault", "token_policies": []string{"keywarden"}, "token_ttl": "1h",
	}); err != nil {
		t.Fatal(err)
	}
	kq := ks.Query()
	kq.Set("auth", "kubernetes")
	k8sURI := *ks
	k8sURI.RawQuery = kq.Encode()
	k8sArgs := []string{"--listen=unix://" + filepath.Join(root, "k8s", "kms.sock"), "--keystore=" + k8sURI.String()}
	k8sArgs = append(k8sArgs, freeAddrs(t, []string{"--metrics-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0"})...)
	if err := os.Mkdir(filepath.Join(root, "k8s"), 0o700); err != nil {
		t.Fatal(err)
	}
	startKeywardenArgs(t, tools, filepath.Join(root, "k8s"), k8sArgs)
	if got := kubectl(t, c, "", "get", "secret", "sidecar-a", "-o", "jsonpath={.data.v}"); got != b64("value-sidecar-a") {
		t.Errorf("after rotation, sidecar-a reads %q", got)
	}
}

// loginJTIs lists the jti claims of the live tokens Vault's jwt method
// issued (claim_mappings puts the JWT's jti in the token's metadata).
func loginJTIs(t *testing.T, admin *vaultapi.Client) map[string]bool {
	t.Helper()
	s, err := admin.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		l, err := admin.Auth().Token().LookupAccessor(fmt.Sprint(k))
		if err != nil || l == nil {
			continue
		}
		if m, ok := l.Data["meta"].(map[string]any); ok {
			if j, ok := m["jti"].(string); ok {
				out[j] = true
			}
		}
	}
	return out
}

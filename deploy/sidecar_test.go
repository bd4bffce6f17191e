package deploy

import (
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const sidecarManifest = "sidecar/kube-apiserver.yaml"

// sidecar is deploy/sidecar's documents by kind, and the pod template.
type sidecar struct {
	byKind map[string]obj
	spec   obj
	kw     obj // the keywarden init container
	api    obj // the kube-apiserver container
}

func readSidecar(t *testing.T) sidecar {
	t.Helper()
	s := sidecar{byKind: map[string]obj{}}
	for i, d := range readDocs(t, sidecarManifest) {
		m, _ := d.(map[string]any)
		o := obj{m: m, where: sidecarManifest}
		k := o.str(t, "kind")
		if _, dup := s.byKind[k]; dup {
			t.Fatalf("document %d: a second %s", i, k)
		}
		s.byKind[k] = o
	}
	for _, k := range []string{"ServiceAccount", "ConfigMap", "Deployment"} {
		if _, ok := s.byKind[k]; !ok {
			t.Fatalf("no %s", k)
		}
	}
	s.spec = s.byKind["Deployment"].sub(t, "spec.template.spec")
	inits, ctrs := s.spec.items(t, "initContainers"), s.spec.items(t, "containers")
	if len(inits) != 1 || len(ctrs) != 1 {
		t.Fatalf("%d init containers and %d containers, want keywarden and kube-apiserver", len(inits), len(ctrs))
	}
	s.kw, s.api = inits[0], ctrs[0]
	return s
}

// containerArgs reads --flag=value arguments (args, or command after its
// first word).
func containerArgs(t *testing.T, c obj, key string) map[string]string {
	t.Helper()
	list := c.list(t, key)
	if key == "command" {
		list = list[1:]
	}
	args := map[string]string{}
	for _, a := range list {
		s, _ := a.(string)
		name, value, ok := strings.Cut(strings.TrimPrefix(s, "--"), "=")
		if !strings.HasPrefix(s, "--") || !ok {
			t.Fatalf("%s: argument %q: want --flag=value", c.where, s)
		}
		args[name] = value
	}
	return args
}

// mountFor finds the volumeMount of c that holds path, and its volume.
func (s sidecar) mountFor(t *testing.T, c obj, p string) (mount, volume obj, ok bool) {
	t.Helper()
	for _, m := range c.items(t, "volumeMounts") {
		if dir := m.str(t, "mountPath"); strings.HasPrefix(p, dir+"/") {
			for _, v := range s.spec.items(t, "volumes") {
				if v.str(t, "name") == m.str(t, "name") {
					return m, v, true
				}
			}
			t.Fatalf("volumeMount %s has no volume", m.str(t, "name"))
		}
	}
	return obj{}, obj{}, false
}

// TestSidecar checks deploy/sidecar: keywarden is a native sidecar with
// the static pod's security posture and probes on its health address; the
// socket is on an emptyDir that both containers mount at the path the
// EncryptionConfiguration names; kube-apiserver reads that configuration;
// the Vault keystore logs in with a projected token for audience "vault"
// that the kubelet writes 0600 for keywarden's user.
func TestSidecar(t *testing.T) {
	s := readSidecar(t)
	kw, api, spec := s.kw, s.api, s.spec
	if kw.str(t, "name") != "keywarden" || api.str(t, "name") != "kube-apiserver" {
		t.Fatalf("containers %s and %s", kw.str(t, "name"), api.str(t, "name"))
	}
	if kw.str(t, "restartPolicy") != "Always" {
		t.Error("keywarden is not a native sidecar (initContainers with restartPolicy: Always)")
	}
	if !strings.Contains(readFile(t, sidecarManifest), "Kubernetes 1.29") {
		t.Error("the manifest does not state the minimum Kubernetes version of native sidecars")
	}

	want := map[string]any{
		"automountServiceAccountToken":        false,
		"securityContext.runAsNonRoot":        true,
		"securityContext.runAsUser":           nonroot,
		"securityContext.runAsGroup":          nonroot,
		"securityContext.seccompProfile.type": "RuntimeDefault",
	}
	spec.wantValues(t, "spec", want)
	// With fsGroup, the kubelet makes volume files group-readable and
	// keywarden's secret-file rule refuses the token; with another user in
	// a container, the token is not written for keywarden's user.
	if spec.has("securityContext.fsGroup") {
		t.Error("fsGroup makes the projected token group-readable; keywarden refuses it")
	}
	for _, c := range []obj{kw, api} {
		if c.has("securityContext.runAsUser") {
			t.Errorf("%s sets its own runAsUser; the token is 0600 for the pod's user only when all containers share it", c.str(t, "name"))
		}
		for p, v := range map[string]any{
			"securityContext.allowPrivilegeEscalation": false,
			"securityContext.readOnlyRootFilesystem":   true,
			"securityContext.capabilities.drop.0":      "ALL",
		} {
			if got := c.get(t, p); got != v {
				t.Errorf("%s: %s = %v, want %v", c.str(t, "name"), p, got, v)
			}
		}
	}

	args := containerArgs(t, kw, "args")
	flags := flagsOf(t)
	for name := range args {
		if !flags[name] {
			t.Errorf("--%s is not a keywarden flag (keywarden -h)", name)
		}
	}
	// The kubelet probes the pod's IP: no host in the probes, and
	// keywarden's health listening on every address of the pod, on the
	// probes' port. Metrics stay on loopback.
	host, port, err := net.SplitHostPort(args["health-addr"])
	if err != nil {
		t.Fatalf("--health-addr %q: %v", args["health-addr"], err)
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		t.Errorf("--health-addr %s: the kubelet probes the pod IP, not %s", args["health-addr"], host)
	}
	if mh, _, _ := net.SplitHostPort(args["metrics-addr"]); mh != "127.0.0.1" {
		t.Errorf("--metrics-addr %s is not on loopback", args["metrics-addr"])
	}
	for probe, path := range map[string]string{"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		g := kw.sub(t, probe+".httpGet")
		if g.has("host") || strconv.Itoa(g.get(t, "port").(int)) != port || g.str(t, "path") != path {
			t.Errorf("%s: %v, want %s on port %s of the pod", probe, g.m, path, port)
		}
	}
	st, err := time.ParseDuration(args["shutdown-timeout"])
	if err != nil {
		t.Fatal(err)
	}
	if grace := time.Duration(spec.get(t, "terminationGracePeriodSeconds").(int)) * time.Second; grace <= st {
		t.Errorf("terminationGracePeriodSeconds %s is not longer than --shutdown-timeout %s", grace, st)
	}

	// The socket: on an emptyDir both containers mount at the same path,
	// in a directory below the emptyDir's root (which keywarden cannot
	// make 0700), and named by the EncryptionConfiguration.
	sock, err := url.Parse(args["listen"])
	if err != nil || sock.Scheme != "unix" {
		t.Fatalf("--listen %q", args["listen"])
	}
	km, kv, ok := s.mountFor(t, kw, sock.Path)
	if !ok || !kv.has("emptyDir") {
		t.Fatalf("socket %s is not on an emptyDir of keywarden", sock.Path)
	}
	if filepath.Dir(sock.Path) == km.str(t, "mountPath") {
		t.Errorf("socket %s is in the emptyDir's root; keywarden needs a directory it makes", sock.Path)
	}
	am, _, ok := s.mountFor(t, api, sock.Path)
	if !ok || am.str(t, "name") != km.str(t, "name") || am.str(t, "mountPath") != km.str(t, "mountPath") {
		t.Errorf("kube-apiserver does not mount the socket's volume at %s", km.str(t, "mountPath"))
	}

	apiArgs := containerArgs(t, api, "command")
	cfg := apiArgs["encryption-provider-config"]
	cm, cv, ok := s.mountFor(t, api, cfg)
	if !ok || cv.str(t, "configMap.name") != s.byKind["ConfigMap"].str(t, "metadata.name") {
		t.Fatalf("--encryption-provider-config %s is not on the ConfigMap's volume", cfg)
	}
	key := strings.TrimPrefix(cfg, cm.str(t, "mountPath")+"/")
	text, ok := s.byKind["ConfigMap"].m["data"].(map[string]any)[key].(string)
	if !ok {
		t.Fatalf("the ConfigMap has no key %s", key)
	}
	var ec encryptionConfig
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(&ec); err != nil {
		t.Fatalf("ConfigMap %s: %v", key, err)
	}
	if got := ec.providerKinds(); !slices.Equal(got, []string{"secrets: kms identity"}) {
		t.Errorf("providers %q", got)
	}
	if p := ec.Resources[0].Providers[0].KMS; p.Endpoint != args["listen"] || p.Name != providerName || p.APIVersion != "v2" {
		t.Errorf("kms provider %+v; keywarden listens on %s", p, args["listen"])
	}

	// The keystore: Vault, auth=jwt, with the token of a projected volume
	// for audience vault, and the state file on a writable volume.
	ks, err := url.Parse(args["keystore"])
	if err != nil || ks.Scheme != "hcvault" {
		t.Fatalf("--keystore %q: want hcvault://", args["keystore"])
	}
	q := ks.Query()
	if q.Get("auth") != "jwt" || q.Get("role") == "" || q.Get("tls") == "off" {
		t.Errorf("--keystore %s: want auth=jwt with a role, over TLS", args["keystore"])
	}
	jm, jv, ok := s.mountFor(t, kw, q.Get("jwt-file"))
	if !ok {
		t.Fatalf("jwt-file %s is on no volume", q.Get("jwt-file"))
	}
	var token obj
	for _, src := range jv.items(t, "projected.sources") {
		if src.has("serviceAccountToken") {
			token = src.sub(t, "serviceAccountToken")
		}
	}
	if token.m == nil || jm.str(t, "mountPath")+"/"+token.str(t, "path") != q.Get("jwt-file") {
		t.Fatalf("jwt-file %s is not the projected service-account token", q.Get("jwt-file"))
	}
	if token.str(t, "audience") != "vault" {
		t.Errorf("the token's audience is %q, want vault", token.str(t, "audience"))
	}
	if _, _, ok := s.mountFor(t, api, q.Get("jwt-file")); ok {
		t.Error("kube-apiserver mounts keywarden's Vault token")
	}
	if s.byKind["Deployment"].str(t, "spec.template.spec.serviceAccountName") != s.byKind["ServiceAccount"].str(t, "metadata.name") {
		t.Error("the pod does not run as the manifest's ServiceAccount")
	}
	if m, v, ok := s.mountFor(t, kw, args["state-file"]); !ok || !v.has("emptyDir") || m.has("readOnly") && m.get(t, "readOnly") == true {
		t.Errorf("--state-file %s is not on a writable emptyDir", args["state-file"])
	}
}

package deploy

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	kind "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
)

const (
	staticPod    = "static-pod/keywarden.yaml"
	tmpfiles     = "static-pod/keywarden.tmpfiles.conf"
	kubeadmPatch = "kubeadm/cluster-configuration.yaml"
	kindConfig   = "kind/kind-config.yaml"
	providerName = "keywarden"
	// nonroot is the image's user (distroless "nonroot"); the static pod,
	// the tmpfiles entries and the Dockerfile must agree on it.
	nonroot = 65532
)

// TestEveryFileParses decodes every YAML and JSON file under deploy/. YAML
// decoding rejects syntax errors and duplicate keys; every Kubernetes-style
// document names its kind.
func TestEveryFileParses(t *testing.T) {
	for _, f := range deployFiles(t, ".yaml", ".yml") {
		t.Run(f, func(t *testing.T) {
			docs := readDocs(t, f)
			if len(docs) == 0 {
				t.Fatal("no YAML documents")
			}
			for i, d := range docs {
				m, ok := d.(map[string]any)
				if !ok {
					t.Fatalf("document %d is %T, want a mapping", i, d)
				}
				if _, ok := m["apiVersion"]; ok {
					if k, _ := m["kind"].(string); k == "" {
						t.Errorf("document %d has an apiVersion but no kind", i)
					}
				}
			}
		})
	}
	for _, f := range deployFiles(t, ".json") {
		t.Run(f, func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var v map[string]any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// podArgs returns the keywarden container's --flag=value arguments.
func podArgs(t *testing.T, pod obj) map[string]string {
	t.Helper()
	args := map[string]string{}
	for _, a := range pod.list(t, "spec.containers.0.args") {
		s, _ := a.(string)
		name, value, ok := strings.Cut(strings.TrimPrefix(s, "--"), "=")
		if !strings.HasPrefix(s, "--") || !ok {
			t.Fatalf("%s: argument %q: want --flag=value", pod.where, s)
		}
		args[name] = value
	}
	return args
}

// socketPathFromPod is the path of the unix socket the static pod listens on.
func socketPathFromPod(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(podArgs(t, readDoc(t, staticPod))["listen"])
	if err != nil || u.Scheme != "unix" {
		t.Fatalf("--listen is not a unix:// URL: %v", err)
	}
	return u.Path
}

// flagsOf lists the flags `keywarden -h` documents: the real binary's flag
// set, not a copy of it.
func flagsOf(t *testing.T) map[string]bool {
	t.Helper()
	out, _ := execOutput(bin(t, "keywarden"), "-h")
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(out, -1) {
		flags[m[1]] = true
	}
	if !flags["listen"] || !flags["keystore"] {
		t.Fatalf("could not read flags from keywarden -h:\n%s", out)
	}
	return flags
}

func TestStaticPod(t *testing.T) {
	pod := readDoc(t, staticPod)
	if pod.str(t, "apiVersion") != "v1" || pod.str(t, "kind") != "Pod" || pod.str(t, "metadata.namespace") != "kube-system" {
		t.Fatal("want a v1 Pod in kube-system")
	}
	spec := pod.sub(t, "spec")
	want := map[string]any{
		"hostNetwork":                                           true,
		"priorityClassName":                                     "system-node-critical",
		"priority":                                              2000001000,
		"automountServiceAccountToken":                          false,
		"securityContext.runAsNonRoot":                          true,
		"securityContext.runAsUser":                             nonroot,
		"securityContext.runAsGroup":                            nonroot,
		"securityContext.seccompProfile.type":                   "RuntimeDefault",
		"containers.0.securityContext.allowPrivilegeEscalation": false,
		"containers.0.securityContext.readOnlyRootFilesystem":   true,
		"containers.0.securityContext.capabilities.drop.0":      "ALL",
		"containers.0.livenessProbe.httpGet.path":               "/healthz",
		"containers.0.readinessProbe.httpGet.path":              "/readyz",
		"containers.0.startupProbe.httpGet.path":                "/healthz",
		"containers.0.resources.requests.memory":                "64Mi",
		"containers.0.resources.limits.memory":                  "128Mi",
		"containers.0.env.0.name":                               "GOMEMLIMIT",
		"containers.0.env.0.value":                              "100MiB",
	}
	spec.wantValues(t, "spec", want)
	if spec.has("containers.0.resources.limits.cpu") {
		t.Error("a CPU limit throttles the Decrypt storm at apiserver start; leave it out")
	}

	args := podArgs(t, pod)
	flags := flagsOf(t)
	for name := range args {
		if !flags[name] {
			t.Errorf("--%s is not a keywarden flag (keywarden -h)", name)
		}
	}

	// Probes reach --health-addr on the node's loopback (hostNetwork), an
	// address of their own that stays put when --metrics-addr moves to the
	// node's address for Prometheus (issue 12: probes on --metrics-addr
	// failed as soon as the docs' advice was followed).
	host, port, err := net.SplitHostPort(args["health-addr"])
	if err != nil {
		t.Fatalf("--health-addr %q: %v", args["health-addr"], err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Errorf("--health-addr %q is not a loopback address", args["health-addr"])
	}
	if args["health-addr"] == args["metrics-addr"] {
		t.Errorf("--health-addr and --metrics-addr are both %s: one of them cannot listen", args["health-addr"])
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
		g := spec.sub(t, "containers.0."+probe+".httpGet")
		if g.str(t, "host") != host || strconv.Itoa(g.get(t, "port").(int)) != port {
			t.Errorf("%s goes to %v:%v, keywarden serves health on %s", probe, g.get(t, "host"), g.get(t, "port"), args["health-addr"])
		}
	}

	// SIGTERM drains for --shutdown-timeout; the kubelet must wait longer.
	st, err := time.ParseDuration(args["shutdown-timeout"])
	if err != nil {
		t.Fatal(err)
	}
	if grace := time.Duration(spec.get(t, "terminationGracePeriodSeconds").(int)) * time.Second; grace <= st {
		t.Errorf("terminationGracePeriodSeconds %s is not longer than --shutdown-timeout %s", grace, st)
	}

	// Every path keywarden uses lives on a hostPath volume, writable where
	// keywarden writes (the root filesystem is read-only).
	mounts := map[string]obj{}
	for _, m := range spec.items(t, "containers.0.volumeMounts") {
		mounts[m.str(t, "name")] = m
	}
	volumes := map[string]obj{}
	for _, v := range spec.items(t, "volumes") {
		volumes[v.str(t, "name")] = v
		if v.str(t, "hostPath.path") != mounts[v.str(t, "name")].str(t, "mountPath") {
			t.Errorf("volume %s: hostPath %s is mounted at another path; keep them equal so docs and kmsctl paths hold on the node", v.str(t, "name"), v.str(t, "hostPath.path"))
		}
	}
	mountOf := func(p string) (obj, bool) {
		for _, m := range mounts {
			if dir := m.str(t, "mountPath"); strings.HasPrefix(p, dir+"/") {
				return m, true
			}
		}
		return obj{}, false
	}
	keyset := strings.TrimPrefix(args["keystore"], "file://")
	for _, c := range []struct {
		flag, path string
		writable   bool
	}{
		{"listen", socketPathFromPod(t), true},
		{"keystore", keyset, false},
		{"state-file", args["state-file"], true},
	} {
		m, ok := mountOf(c.path)
		if !ok {
			t.Errorf("--%s %s is on no volume", c.flag, c.path)
			continue
		}
		ro, _ := m.m["readOnly"].(bool)
		if c.writable && ro {
			t.Errorf("--%s %s is on a read-only mount", c.flag, c.path)
		}
		if c.flag == "keystore" && !ro {
			t.Errorf("the keystore directory should be mounted read-only: keywarden never writes the keyset")
		}
	}
}

// TestTmpfiles checks that every hostPath directory of the static pod is made,
// owned by the pod's user and 0700, by the tmpfiles entry the docs install.
func TestTmpfiles(t *testing.T) {
	b, err := os.ReadFile(tmpfiles)
	if err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 6 || f[0] != "d" {
			t.Fatalf("tmpfiles line %q: want 'd PATH MODE USER GROUP AGE'", sc.Text())
		}
		dirs[f[1]] = strings.Join(f[2:5], " ")
	}
	spec := readDoc(t, staticPod).sub(t, "spec")
	want := "0700 " + strconv.Itoa(nonroot) + " " + strconv.Itoa(nonroot)
	for _, v := range spec.items(t, "volumes") {
		p := v.str(t, "hostPath.path")
		if v.str(t, "hostPath.type") != "Directory" {
			t.Errorf("volume %s: hostPath type %s; want Directory (a directory the kubelet makes is root-owned)", v.str(t, "name"), v.str(t, "hostPath.type"))
		}
		if dirs[p] != want {
			t.Errorf("%s: tmpfiles has %q, want %q", p, dirs[p], want)
		}
	}
}

// kmsProvider is one kms entry of an EncryptionConfiguration.
type kmsProvider struct {
	APIVersion string `yaml:"apiVersion"`
	Name       string `yaml:"name"`
	Endpoint   string `yaml:"endpoint"`
	Timeout    string `yaml:"timeout"`
	CacheSize  int    `yaml:"cachesize"` // KMS v1 only
}

// staticKeys is an aescbc, aesgcm or secretbox entry.
type staticKeys struct {
	Keys []struct {
		Name   string `yaml:"name"`
		Secret string `yaml:"secret"`
	} `yaml:"keys"`
}

type encryptionConfig struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Resources  []struct {
		Resources []string `yaml:"resources"`
		Providers []struct {
			KMS       *kmsProvider `yaml:"kms"`
			Identity  *struct{}    `yaml:"identity"`
			AESCBC    *staticKeys  `yaml:"aescbc"`
			AESGCM    *staticKeys  `yaml:"aesgcm"`
			Secretbox *staticKeys  `yaml:"secretbox"`
		} `yaml:"providers"`
	} `yaml:"resources"`
}

// providerKinds lists, per resource entry, "resources: kind kind …".
func (c encryptionConfig) providerKinds() []string {
	var out []string
	for _, r := range c.Resources {
		var kinds []string
		for _, p := range r.Providers {
			switch {
			case p.KMS != nil && p.KMS.Name == providerName:
				kinds = append(kinds, "kms")
			case p.KMS != nil:
				kinds = append(kinds, "other-kms-"+p.KMS.APIVersion)
			case p.Identity != nil:
				kinds = append(kinds, "identity")
			case p.AESCBC != nil:
				kinds = append(kinds, "aescbc")
			case p.AESGCM != nil:
				kinds = append(kinds, "aesgcm")
			case p.Secretbox != nil:
				kinds = append(kinds, "secretbox")
			default:
				kinds = append(kinds, "?")
			}
		}
		out = append(out, strings.Join(r.Resources, ",")+": "+strings.Join(kinds, " "))
	}
	return out
}

func readEncryptionConfig(t *testing.T, file string) encryptionConfig {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	var c encryptionConfig
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c
}

// encryptionConfigs says what each file in encryption/ is for, in provider
// order; the e2e tests load each into a real kube-apiserver.
var encryptionConfigs = []struct {
	file string
	want []string
}{
	{"secrets.yaml", []string{"secrets: kms identity"}},
	{"secrets-configmaps.yaml", []string{"secrets,configmaps: kms identity"}},
	{"all-resources.yaml", []string{"events: identity", "*.*: kms identity"}},
	{"migrate-from-aescbc.yaml", []string{"secrets: kms aescbc identity"}},
	{"migrate-from-aesgcm.yaml", []string{"secrets: kms aesgcm identity"}},
	{"migrate-from-secretbox.yaml", []string{"secrets: kms secretbox identity"}},
	{"migrate-from-kms-v2.yaml", []string{"secrets: kms other-kms-v2 identity"}},
	{"migrate-from-kms-v1.yaml", []string{"secrets: kms other-kms-v1 identity"}},
	{"decommission.yaml", []string{"secrets: identity kms"}},
	{"identity-only.yaml", []string{"secrets: identity"}},
}

func TestEncryptionConfigs(t *testing.T) {
	files, err := filepath.Glob("encryption/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, c := range encryptionConfigs {
		listed = append(listed, "encryption/"+c.file)
	}
	slices.Sort(listed)
	if !slices.Equal(files, listed) {
		t.Fatalf("encryption/ holds %v, the table lists %v", files, listed)
	}
	sock := "unix://" + socketPathFromPod(t)
	for _, c := range encryptionConfigs {
		t.Run(c.file, func(t *testing.T) {
			ec := readEncryptionConfig(t, "encryption/"+c.file)
			if ec.APIVersion != "apiserver.config.k8s.io/v1" || ec.Kind != "EncryptionConfiguration" {
				t.Fatalf("%s %s: want apiserver.config.k8s.io/v1 EncryptionConfiguration", ec.APIVersion, ec.Kind)
			}
			if got := ec.providerKinds(); !slices.Equal(got, c.want) {
				t.Errorf("providers %q, want %q", got, c.want)
			}
			for _, r := range ec.Resources {
				for _, p := range r.Providers {
					switch {
					case p.KMS != nil && p.KMS.Name == providerName:
						want := kmsProvider{APIVersion: "v2", Name: providerName, Endpoint: sock, Timeout: "3s"}
						if *p.KMS != want {
							t.Errorf("kms provider %+v, want %+v (the static pod's socket)", *p.KMS, want)
						}
					case p.KMS != nil:
						// Another plugin, being migrated from: a placeholder
						// name and socket of its own, never keywarden's.
						if !strings.HasPrefix(p.KMS.Name, "REPLACE") || !strings.HasPrefix(p.KMS.Endpoint, "unix:///REPLACE/") {
							t.Errorf("old plugin %+v: its name and endpoint must be REPLACE placeholders", *p.KMS)
						}
						if (p.KMS.APIVersion == "v1") != (p.KMS.CacheSize > 0) {
							t.Errorf("old plugin %+v: cachesize is for KMS v1 only", *p.KMS)
						}
					}
					for kind, keys := range map[string]*staticKeys{"aescbc": p.AESCBC, "aesgcm": p.AESGCM, "secretbox": p.Secretbox} {
						if keys == nil {
							continue
						}
						for _, k := range keys.Keys {
							b, err := base64.StdEncoding.DecodeString(k.Secret)
							if err != nil || len(b) != 32 {
								t.Errorf("%s key %s: not 32 bytes of base64", kind, k.Name)
							}
						}
					}
				}
			}
		})
	}
}

// kubeadmAPIServer is the part of a kubeadm v1beta4 ClusterConfiguration
// that wires keywarden in.
type kubeadmAPIServer struct {
	ExtraArgs []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"extraArgs"`
	ExtraVolumes []struct {
		Name      string `yaml:"name"`
		HostPath  string `yaml:"hostPath"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
		PathType  string `yaml:"pathType"`
	} `yaml:"extraVolumes"`
}

type clusterConfiguration struct {
	APIVersion string           `yaml:"apiVersion"`
	Kind       string           `yaml:"kind"`
	APIServer  kubeadmAPIServer `yaml:"apiServer"`
}

func decodeStrict(t *testing.T, what string, b []byte, v any) {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// checkAPIServerWiring checks the extraArgs and extraVolumes that point
// kube-apiserver at the EncryptionConfiguration and keywarden's socket, and
// returns the volumes by name.
func checkAPIServerWiring(t *testing.T, what string, as kubeadmAPIServer) map[string]string {
	t.Helper()
	args := map[string]string{}
	for _, a := range as.ExtraArgs {
		args[a.Name] = a.Value
	}
	if args["encryption-provider-config-automatic-reload"] != "true" {
		t.Errorf("%s: encryption-provider-config-automatic-reload is not \"true\"", what)
	}
	cfg := args["encryption-provider-config"]
	sockDir := path.Dir(socketPathFromPod(t))
	var cfgMounted, sockMounted bool
	volumes := map[string]string{}
	for _, v := range as.ExtraVolumes {
		volumes[v.Name] = v.PathType
		if v.HostPath != v.MountPath {
			t.Errorf("%s: volume %s: hostPath %s mounted at %s; keep them equal", what, v.Name, v.HostPath, v.MountPath)
		}
		if path.Dir(cfg) == v.MountPath {
			cfgMounted = true
			if !v.ReadOnly {
				t.Errorf("%s: the EncryptionConfiguration directory should be read-only", what)
			}
		}
		if v.MountPath == sockDir {
			sockMounted = true
			if v.ReadOnly {
				t.Errorf("%s: the socket directory must not be read-only: connect(2) needs write permission", what)
			}
		}
	}
	if !cfgMounted {
		t.Errorf("%s: the directory of --encryption-provider-config %s is not mounted (mount the directory, not the file, so reloads see a replaced file)", what, cfg)
	}
	if !sockMounted {
		t.Errorf("%s: keywarden's socket directory %s is not mounted into kube-apiserver", what, sockDir)
	}
	return volumes
}

func TestKubeadmConfiguration(t *testing.T) {
	b, err := os.ReadFile(kubeadmPatch)
	if err != nil {
		t.Fatal(err)
	}
	var cc clusterConfiguration
	decodeStrict(t, kubeadmPatch, b, &cc)
	if cc.APIVersion != "kubeadm.k8s.io/v1beta4" || cc.Kind != "ClusterConfiguration" {
		t.Fatalf("%s %s: want kubeadm.k8s.io/v1beta4 ClusterConfiguration", cc.APIVersion, cc.Kind)
	}
	vols := checkAPIServerWiring(t, kubeadmPatch, cc.APIServer)
	for name, pt := range vols {
		if pt != "Directory" {
			t.Errorf("volume %s: pathType %s; on a kubeadm node the directories come from tmpfiles, so a missing one is an install error to report, not to paper over", name, pt)
		}
	}
}

// TestKindConfig decodes the kind config the way kind v1alpha4 does (yaml.v3
// with unknown fields rejected, into kind's own types) and checks that it
// wires the apiserver as deploy/kubeadm does.
func TestKindConfig(t *testing.T) {
	b, err := os.ReadFile(kindConfig)
	if err != nil {
		t.Fatal(err)
	}
	var c kind.Cluster
	decodeStrict(t, kindConfig, b, &c)
	if c.APIVersion != "kind.x-k8s.io/v1alpha4" || c.Kind != "Cluster" {
		t.Fatalf("%s %s: want kind.x-k8s.io/v1alpha4 Cluster", c.APIVersion, c.Kind)
	}
	if len(c.Nodes) != 1 || c.Nodes[0].Role != kind.ControlPlaneRole {
		t.Fatalf("want one control-plane node, have %d nodes", len(c.Nodes))
	}
	n := c.Nodes[0]
	mounts := map[string]kind.Mount{}
	for _, m := range n.ExtraMounts {
		mounts[m.ContainerPath] = m
		if !m.Readonly {
			t.Errorf("extraMount %s is writable; the node only reads it", m.ContainerPath)
		}
	}
	if m, ok := mounts["/etc/tmpfiles.d/keywarden.conf"]; !ok || filepath.Clean(m.HostPath) != filepath.Join("deploy", tmpfiles) {
		t.Errorf("the node must mount %s at /etc/tmpfiles.d/keywarden.conf", filepath.Join("deploy", tmpfiles))
	}
	if len(n.KubeadmConfigPatches) != 1 {
		t.Fatalf("want one kubeadmConfigPatch, have %d", len(n.KubeadmConfigPatches))
	}
	var cc clusterConfiguration
	decodeStrict(t, "kubeadmConfigPatches[0]", []byte(n.KubeadmConfigPatches[0]), &cc)
	if cc.Kind != "ClusterConfiguration" {
		t.Fatalf("the patch is for %q, want ClusterConfiguration", cc.Kind)
	}
	checkAPIServerWiring(t, "kind patch", cc.APIServer)

	// The same arguments and volumes as deploy/kubeadm, but for pathType.
	var base clusterConfiguration
	kb, err := os.ReadFile(kubeadmPatch)
	if err != nil {
		t.Fatal(err)
	}
	decodeStrict(t, kubeadmPatch, kb, &base)
	norm := func(a kubeadmAPIServer) string {
		for i := range a.ExtraVolumes {
			a.ExtraVolumes[i].PathType = ""
		}
		j, _ := json.Marshal(a)
		return string(j)
	}
	if norm(cc.APIServer) != norm(base.APIServer) {
		t.Errorf("the kind patch differs from %s:\n%s\n%s", kubeadmPatch, norm(cc.APIServer), norm(base.APIServer))
	}
	// The encryption config directory the apiserver mounts comes from the host.
	var cfgDir string
	for _, a := range cc.APIServer.ExtraArgs {
		if a.Name == "encryption-provider-config" {
			cfgDir = path.Dir(a.Value)
		}
	}
	if _, ok := mounts[cfgDir]; !ok {
		t.Errorf("the node does not mount the EncryptionConfiguration directory %s", cfgDir)
	}
}

// TestDockerfile checks what can be checked without a Docker engine: pinned
// base images, the version stamped with the Makefile's ldflags variable, a
// non-root user that matches the static pod, the Go version the Makefile
// pins, and a build context that lets in every package the binaries import.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(df)
	// A `# syntax=` parser directive makes BuildKit pull a frontend image:
	// an air-gapped builder cannot.
	if m := regexp.MustCompile(`(?mi)^#\s*syntax\s*=.*$`).FindString(text); m != "" {
		t.Errorf("Dockerfile has %q: BuildKit would pull that frontend; the built-in one handles RUN --mount", m)
	}
	images := regexp.MustCompile(`(?m)^ARG (GO_IMAGE|RUNTIME_IMAGE)=(\S+)$`).FindAllStringSubmatch(text, -1)
	if len(images) != 2 {
		t.Fatalf("want ARG GO_IMAGE= and ARG RUNTIME_IMAGE=, found %v", images)
	}
	pin := regexp.MustCompile(`(?m)^GOTOOLCHAIN_PIN\s*\?=\s*go(\S+)$`).FindStringSubmatch(string(mk))
	if pin == nil {
		t.Fatal("no GOTOOLCHAIN_PIN in the Makefile")
	}
	if images[0][1] != "GO_IMAGE" {
		t.Fatalf("ARG GO_IMAGE must come first, found %v", images)
	}
	if err := checkBuilderImage(images[0][2], pin[1]); err != nil {
		t.Errorf("GO_IMAGE: %v", err)
	}
	if err := checkRuntimeImage(images[1][2]); err != nil {
		t.Errorf("RUNTIME_IMAGE: %v", err)
	}
	// Every stage starts from one of the two ARGs (overridable with
	// --build-arg) or an earlier stage, never from a reference written
	// into a FROM line.
	stages := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?mi)^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$`).FindAllStringSubmatch(text, -1) {
		if from := m[1]; from != "${GO_IMAGE}" && from != "${RUNTIME_IMAGE}" && !stages[from] {
			t.Errorf("FROM %s: use ${GO_IMAGE}, ${RUNTIME_IMAGE} or an earlier stage", from)
		}
		if m[2] != "" {
			stages[m[2]] = true
		}
	}
	if len(stages) == 0 {
		t.Error("no named build stage: the FROM lines did not parse")
	}
	for _, want := range []string{"buildinfo.version=${VERSION}", "buildinfo.commit=${COMMIT}", "CGO_ENABLED=1", "./cmd/keywarden ./cmd/kmsctl", `ENTRYPOINT ["/usr/local/bin/keywarden"]`} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	for _, want := range []string{"$(BUILDINFO).version=$(VERSION)", "$(BUILDINFO).commit=$(COMMIT)"} {
		if !strings.Contains(string(mk), want) {
			t.Errorf("the Makefile no longer stamps %s; keep the Dockerfile in step", want)
		}
	}
	users := regexp.MustCompile(`(?m)^USER (\d+):(\d+)$`).FindAllStringSubmatch(text, -1)
	if len(users) == 0 || users[len(users)-1][1] != strconv.Itoa(nonroot) {
		t.Errorf("the final stage must run as USER %d:%d, found %v", nonroot, nonroot, users)
	}

	// .dockerignore: everything out, then top-level directories back in.
	di, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{}
	for _, l := range strings.Split(string(di), "\n") {
		if d, ok := strings.CutPrefix(strings.TrimSpace(l), "!"); ok {
			allowed[strings.TrimSuffix(d, "/")] = true
		}
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if !allowed[f] {
			t.Errorf(".dockerignore keeps out %s", f)
		}
	}
	out := run(t, repoRoot, "go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "./cmd/keywarden", "./cmd/kmsctl")
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range strings.Fields(out) {
		rel, err := filepath.Rel(root, dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // a module dependency
		}
		top := strings.Split(rel, string(filepath.Separator))[0]
		if !allowed[top] {
			t.Errorf("the binaries import %s, but .dockerignore keeps %s/ out of the build context", rel, top)
		}
	}
}

// imageRef splits an image reference into its name, tag and digest (each
// possibly empty). A colon before the last slash is a registry port, not a
// tag.
func imageRef(ref string) (name, tag, digest string) {
	name = ref
	if i := strings.Index(name, "@"); i >= 0 {
		name, digest = name[:i], name[i+1:]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name, tag = name[:i], name[i+1:]
	}
	return name, tag, digest
}

var reDigest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// checkBuilderImage requires the official Go image at the exact release the
// Makefile pins, with a Debian 12 suffix: golang:<goVersion>-bookworm, and
// optionally @sha256:<digest>. Untagged references and `latest` are refused.
func checkBuilderImage(ref, goVersion string) error {
	name, tag, digest := imageRef(ref)
	switch {
	case tag == "":
		return fmt.Errorf("%s has no tag: pin an exact version (golang:%s-bookworm)", ref, goVersion)
	case tag == "latest":
		return fmt.Errorf("%s: `latest` is not a pin", ref)
	case digest != "" && !reDigest.MatchString(digest):
		return fmt.Errorf("%s: digest %q is not sha256:<64 hex>", ref, digest)
	case name != "golang" && name != "docker.io/library/golang":
		return fmt.Errorf("%s is not the official golang image", ref)
	case tag != goVersion+"-bookworm":
		return fmt.Errorf("%s: want the exact tag %s-bookworm (Go %s, the Makefile's GOTOOLCHAIN_PIN, on Debian 12 like the runtime)", ref, goVersion, goVersion)
	}
	return nil
}

// checkRuntimeImage requires the glibc distroless image (cgo for PKCS#11)
// with a tag other than `latest`, a digest, or both.
func checkRuntimeImage(ref string) error {
	name, tag, digest := imageRef(ref)
	switch {
	case tag == "" && digest == "":
		return fmt.Errorf("%s has neither tag nor digest", ref)
	case tag == "latest":
		return fmt.Errorf("%s: `latest` is not a pin", ref)
	case digest != "" && !reDigest.MatchString(digest):
		return fmt.Errorf("%s: digest %q is not sha256:<64 hex>", ref, digest)
	case name != "gcr.io/distroless/base-debian12":
		return fmt.Errorf("%s: want gcr.io/distroless/base-debian12 (glibc, Debian 12, like the builder)", ref)
	}
	return nil
}

// TestImagePinChecks shows what checkBuilderImage and checkRuntimeImage
// accept and refuse.
func TestImagePinChecks(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for ref, ok := range map[string]bool{
		"golang:1.27.3-bookworm":                   true,
		"golang:1.27.3-bookworm@" + d:              true,
		"docker.io/library/golang:1.27.3-bookworm": true,
		"golang":                            false,
		"golang:latest":                     false,
		"golang@" + d:                       false,
		"golang:1.27-bookworm":              false,
		"golang:1.27.3":                     false,
		"golang:1.27.2-bookworm":            false,
		"golang:1.27.3-bookworm@sha256:abc": false,
		"registry.example.com:5000/golang":  false,
		"registry.example.com:5000/golang:1.27.3-bookworm": false,
	} {
		if err := checkBuilderImage(ref, "1.27.3"); (err == nil) != ok {
			t.Errorf("builder %s: %v, want accepted=%v", ref, err, ok)
		}
	}
	for ref, ok := range map[string]bool{
		"gcr.io/distroless/base-debian12:nonroot":          true,
		"gcr.io/distroless/base-debian12:nonroot@" + d:     true,
		"gcr.io/distroless/base-debian12@" + d:             true,
		"gcr.io/distroless/base-debian12":                  false,
		"gcr.io/distroless/base-debian12:latest":           false,
		"gcr.io/distroless/static-debian12:nonroot":        false,
		"gcr.io/distroless/base-debian12:nonroot@sha256:x": false,
	} {
		if err := checkRuntimeImage(ref); (err == nil) != ok {
			t.Errorf("runtime %s: %v, want accepted=%v", ref, err, ok)
		}
	}
}

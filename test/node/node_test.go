//go:build node

// Package node is keywarden's node test: this machine made a kubeadm
// control-plane node (containerd, a real kubelet, kubeadm init), keywarden
// run as operators run it (its image, deploy/static-pod, deploy/kubeadm),
// and README's install steps executed from README itself. docs/e2e.md says
// what it proves and what it cannot.
package node

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
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/test/e2e/cluster"
	"github.com/keywarden/keywarden/test/node/nodeimages"
)

// preflightIgnored are the kubeadm preflight checks this machine fails and
// why (docs/e2e.md repeats the list):
var preflightIgnored = []string{
	// README's own: the static pod is installed before kubeadm init.
	"DirAvailable--etc-kubernetes-manifests",
	// This machine's cgroup hierarchy is v1: kubeadm's system validator
	// refuses it unless skipped ("You must also explicitly skip this
	// validation"), beside the kubelet's failCgroupV1: false.
	"SystemVerification",
}

func TestNode(t *testing.T) {
	if os.Getenv("KEYWARDEN_E2E_NODE") != "1" {
		t.Skip("the node test makes this machine a kubeadm control-plane node (it writes /etc/kubernetes, /var/lib/kubelet, /var/lib/etcd, /etc/keywarden ...): run it with `make e2e-node` (KEYWARDEN_E2E_NODE=1)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the node test needs root (kubeadm, the kubelet, containerd)")
	}
	h := newHost(t)
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range []string{"kubelet.log", "containerd.log"} {
				t.Logf("--- tail of %s\n%s", l, cluster.Tail(filepath.Join(h.logs, l), 40))
			}
		}
		h.teardown()
		if l := h.leftovers(); len(l) > 0 {
			t.Errorf("left behind after cleanup:\n%s", strings.Join(l, "\n"))
		}
	})

	start := time.Now()
	step := func(format string, args ...any) {
		t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	step("images")
	archive := h.buildImages()
	h.startContainerd()
	h.ctr(5*time.Minute, "images", "import", archive)
	// README step 1: keywarden's image (the Dockerfile's, test/node/image.sh)
	// on the node, and kmsctl copied out of it.
	h.ctr(5*time.Minute, "images", "import", h.kwImage)
	// The Dockerfile's image: its label, user and entrypoint.
	if cfg, err := nodeimages.Config(h.kwImage, kwImageRef); err != nil {
		t.Fatal(err)
	} else if cfg.Labels["org.opencontainers.image.title"] != "keywarden" || cfg.User != "65532:65532" ||
		strings.Join(cfg.Entrypoint, " ") != "/usr/local/bin/keywarden" {
		t.Fatalf("%s is not the Dockerfile's image: labels %v, user %q, entrypoint %q", h.kwImage, cfg.Labels, cfg.User, cfg.Entrypoint)
	}
	if err := nodeimages.ExtractFile(h.kwImage, kwImageRef, "/usr/local/bin/kmsctl", filepath.Join(h.pathDir, "kmsctl")); err != nil {
		t.Fatal(err)
	}

	readme := h.readme
	step("README step 2: directories and the keyset, as uid 65532")
	h.sh(time.Minute, readme.tmpfiles)
	h.sh(time.Minute, readme.keysInit)
	if fi, err := os.Stat("/etc/keywarden/keyset.json"); err != nil {
		t.Fatal(err)
	} else if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65532 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("README's keyset is owned by %d, mode %v; want 65532, 0600", st.Uid, fi.Mode().Perm())
	}
	step("README step 3: the static pod")
	h.sh(time.Minute, readme.installPod)
	step("README step 4: the encryption config, deploy/kubeadm merged, kubeadm init")
	h.sh(time.Minute, readme.encryptionConfig)
	cfg := h.kubeadmConfig()
	h.startKubelet()
	h.run(10*time.Minute, filepath.Join(h.tools, "kubeadm"), "init", "--config", cfg,
		"--ignore-preflight-errors="+strings.Join(preflightIgnored, ","),
		"--skip-phases=addon/kube-proxy,addon/coredns")
	step("kubeadm init done")
	h.waitKMSReady(3 * time.Minute)
	step("kube-apiserver ready, kms-providers ok")
	h.sh(time.Minute, readme.check)

	t.Run("container", func(t *testing.T) { h.checkContainer(t) })
	secrets := h.secretWorkflows(t)
	step("%d Secrets written through kubectl", len(secrets))
	h.checkStored(t, secrets)
	h.checkReadBack(t, secrets)

	waitUntil(t, 2*time.Minute, "the control plane's mirror pods Ready", func() error {
		host := strings.TrimPrefix(keywardenPod(), "keywarden-")
		for _, p := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
			if err := h.podReady(p + "-" + host); err != nil {
				return err
			}
		}
		return nil
	})
	step("README step 4's backup through etcd's pod")
	h.sh(2*time.Minute, readme.backup)
	if fi, err := os.Stat("/var/lib/etcd/before-encryption.db"); err != nil || fi.Size() == 0 {
		t.Errorf("README's backup left no snapshot on the node: %v", err)
	}
	step("README step 5: migrate and audit")
	out := h.sh(5*time.Minute, readme.migrateAudit)
	t.Logf("migrate and audit:\n%s", tailLines(out, 12))

	step("keywarden's container stopped: the kubelet restarts it")
	h.restartKeywarden(t, secrets)

	step("docs/rotation.md, run from the document")
	h.rotationRunbook(t, secrets)

	step("node reboot")
	h.reboot(t)
	step("containerd and the kubelet started again")
	h.waitKMSReady(5 * time.Minute)
	step("kube-apiserver ready again, kms-providers ok")
	h.checkReadBack(t, secrets)
	h.checkStored(t, secrets)
	for _, s := range secrets {
		if id := h.storedKeyID(t, s.name); id != h.rotatedTo {
			t.Errorf("after the rotation secret %s is stored under %q, want NEW %q", s.name, id, h.rotatedTo)
		}
	}
	step("PKCS#11: a second cluster, keywarden on a SoftHSM2 token in its pod")
	h.pkcs11Pod(t)
	step("done")
}

func newHost(t *testing.T) *host {
	repo, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, repo: repo,
		tools:         filepath.Join(repo, "test", "e2e", "tools", "bin"),
		kwImage:       os.Getenv("KEYWARDEN_NODE_IMAGE"),
		kwImagePKCS11: os.Getenv("KEYWARDEN_NODE_IMAGE_PKCS11"),
		readme:        readmeInstallBlocks(t, filepath.Join(repo, "README.md")),
	}
	var missing []string
	for _, p := range []string{"kubelet", "kubeadm", "kubectl", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "etcdctl", "pause", "crictl"} {
		if _, err := os.Stat(filepath.Join(h.tools, p)); err != nil {
			missing = append(missing, filepath.Join("test/e2e/tools/bin", p)+" (make e2e-tools node-tools)")
		}
	}
	if _, err := os.Stat(h.kwImage); h.kwImage == "" || err != nil {
		missing = append(missing, "keywarden's image: $KEYWARDEN_NODE_IMAGE, a docker-archive of the Dockerfile's image (make e2e-node runs test/node/image.sh)")
	}
	if _, err := os.Stat(h.kwImagePKCS11); h.kwImagePKCS11 == "" || err != nil {
		missing = append(missing, "keywarden's PKCS#11 image: $KEYWARDEN_NODE_IMAGE_PKCS11 (make e2e-node)")
	}
	for _, p := range []string{"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/bin/softhsm2-util"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p+" (apt-get install softhsm2)")
		}
	}
	for _, p := range []string{"containerd", "ctr", "runc", "systemd-tmpfiles", "setpriv"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p+" (apt-get install containerd runc systemd util-linux)")
		}
	}
	if len(missing) > 0 {
		t.Fatalf("missing:\n  %s", strings.Join(missing, "\n  "))
	}
	// One node test at a time on a machine. The lock goes with the process,
	// so a run that was killed leaves it free.
	h.lock = lockMachine(t)
	// workRoot is the node test's own, made only after the check below
	// found no node here. If it is there, a run stopped before its cleanup
	// (killed, or the machine went down) and everything below is that run's:
	// remove it, as the cleanup would have.
	if _, err := os.Stat(workRoot); err == nil {
		t.Logf("%s exists: an earlier node test run stopped before its cleanup; removing what it left", workRoot)
		h.logs = filepath.Join(workRoot, "logs")
		if err := os.MkdirAll(h.logs, 0o755); err != nil {
			t.Fatal(err)
		}
		h.teardown()
		if t.Failed() {
			t.FailNow()
		}
	}
	// A node that is one already is not ours to take.
	for _, p := range []string{"/etc/kubernetes", "/var/lib/kubelet", "/var/lib/etcd", "/etc/keywarden", "/var/lib/keywarden", workRoot} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s exists: this machine is (or was) a node; the node test only runs on a clean one (kubeadm reset -f; rm -rf %s)", p, p)
		}
	}
	if l := h.leftovers(); len(l) > 0 {
		t.Fatalf("already running:\n%s", strings.Join(l, "\n"))
	}
	for _, d := range []string{workRoot, runRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	h.logs = filepath.Join(workRoot, "logs")
	h.pathDir = filepath.Join(workRoot, "bin")
	for _, d := range []string{h.logs, h.pathDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The node's commands: the Kubernetes tools a kubeadm node has
	// (kubectl, kubeadm, kubelet), plus etcdctl for docs/install.md's check
	// (kubeadm nodes lack it; that doc says so). kmsctl comes out of the
	// image, as README step 1 says.
	links := map[string]string{
		"kubectl": filepath.Join(h.tools, "kubectl"),
		"kubeadm": filepath.Join(h.tools, "kubeadm"),
		"kubelet": filepath.Join(h.tools, "kubelet"),
		"etcdctl": filepath.Join(h.tools, "etcdctl"),
		"crictl":  filepath.Join(h.tools, "crictl"),
	}
	for n, src := range links {
		if err := os.Symlink(src, filepath.Join(h.pathDir, n)); err != nil {
			t.Fatal(err)
		}
	}
	// kubeadm's prerequisites: IPv4 forwarding on (restored at cleanup).
	const ipForward = "/proc/sys/net/ipv4/ip_forward"
	if was, err := os.ReadFile(ipForward); err == nil && strings.TrimSpace(string(was)) != "1" {
		if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
			t.Fatalf("net.ipv4.ip_forward=1 (kubeadm's prerequisite): %v", err)
		}
		h.cleanups = append(h.cleanups, func() { _ = os.WriteFile(ipForward, was, 0o644) })
	}
	// The kmsctl that runs as uid 65532 must be reachable by it.
	for _, d := range []string{workRoot, h.pathDir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// buildImages writes the control plane's images (kubeadm's names and
// tags, from the binaries built with the e2e tools) and pause into one
// docker-archive.
func (h *host) buildImages() string {
	t := h.t
	bin := func(name string) nodeimages.File {
		return nodeimages.File{Path: "/usr/local/bin/" + name, Src: filepath.Join(h.tools, name)}
	}
	// The control plane's images run as root, as upstream's do.
	root := func(ref string, names ...string) nodeimages.Spec {
		files := nodeimages.Passwd()
		for _, n := range names {
			files = append(files, bin(n))
		}
		return nodeimages.Spec{Ref: ref, Files: files}
	}
	specs := []nodeimages.Spec{
		root("registry.k8s.io/kube-apiserver:"+k8sVersion, "kube-apiserver"),
		root("registry.k8s.io/kube-controller-manager:"+k8sVersion, "kube-controller-manager"),
		root("registry.k8s.io/kube-scheduler:"+k8sVersion, "kube-scheduler"),
		root(etcdImage, "etcd", "etcdctl"),
		{Ref: pauseImage, Files: []nodeimages.File{{Path: "/pause", Src: filepath.Join(h.tools, "pause")}}, Entrypoint: []string{"/pause"}, User: "65535:65535"},
	}
	archive := filepath.Join(workRoot, "images.tar")
	if err := nodeimages.WriteArchive(archive, specs...); err != nil {
		t.Fatal(err)
	}
	return archive
}

// kubeadmConfig writes kubeadm's --config: deploy/kubeadm's fragment with
// the version added (no lookup on the internet), an InitConfiguration for
// this node's containerd, and the KubeletConfiguration this machine needs.
func (h *host) kubeadmConfig() string {
	t := h.t
	frag, err := os.ReadFile(filepath.Join(h.repo, "deploy", "kubeadm", "cluster-configuration.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cc map[string]any
	if err := yaml.Unmarshal(frag, &cc); err != nil {
		t.Fatal(err)
	}
	cc["kubernetesVersion"] = k8sVersion
	ccYAML, err := yaml.Marshal(cc)
	if err != nil {
		t.Fatal(err)
	}
	doc := `apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  criSocket: ` + criSocket + `
  imagePullPolicy: Never
---
` + string(ccYAML) + `---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
# This machine has a cgroup v1 hierarchy; kubelet 1.35+ refuses it otherwise.
failCgroupV1: false
# No registry is reachable: the images imported before kubeadm init are all
# there will ever be. With the disk above the default 85%, the kubelet's
# image GC deleted the pause image while the reboot step had every
# container down (containerd 1.6 does not pin the sandbox image), and no
# pod could start again. 100 turns image GC off.
imageGCHighThresholdPercent: 100
`
	p := filepath.Join(workRoot, "kubeadm.yaml")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (h *host) waitKMSReady(d time.Duration) {
	h.t.Helper()
	waitUntil(h.t, d, "kube-apiserver /readyz/kms-providers ok", func() error {
		out, err := h.kubectl(10*time.Second, "get", "--raw", "/readyz/kms-providers")
		if err != nil || strings.TrimSpace(out) != "ok" {
			return fmt.Errorf("%v: %s", err, tailLines(out, 3))
		}
		return nil
	})
}

// checkContainer: keywarden's container as the static pod asks, its probes
// passing (the pod Ready).
func (h *host) checkContainer(t *testing.T) {
	c, err := h.containerNamed("keywarden")
	if err != nil {
		t.Fatal(err)
	}
	sp := c.Info.RuntimeSpec
	if sp.Process.User.UID != 65532 || sp.Process.User.GID != 65532 {
		t.Errorf("keywarden runs as %d:%d, want 65532:65532", sp.Process.User.UID, sp.Process.User.GID)
	}
	if !sp.Root.Readonly {
		t.Error("keywarden's root filesystem is writable")
	}
	caps := sp.Process.Capabilities
	if n := len(caps.Bounding) + len(caps.Effective) + len(caps.Permitted) + len(caps.Inheritable) + len(caps.Ambient); n != 0 {
		t.Errorf("keywarden has capabilities: %+v", caps)
	}
	if !sp.Process.NoNewPrivileges {
		t.Error("keywarden may gain privileges (noNewPrivileges false)")
	}
	waitUntil(t, 2*time.Minute, "keywarden's pod Ready (its probes passing)", func() error {
		return h.podReady(keywardenPod())
	})
	h.readmeCrictlPs(t)
}

// readmeCrictlPs runs README's "check that both settle" command as README
// spells it (`crictl ps --name 'keywarden|kube-apiserver'`): both must be
// listed Running.
func (h *host) readmeCrictlPs(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(h.repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := regexp.MustCompile("`(crictl ps --name '[^'`]+')`").FindSubmatch(readme)
	if cmd == nil {
		t.Fatal("README.md: no `crictl ps --name '…'` command to check the pods settle")
	}
	out := h.sh(time.Minute, string(cmd[1]))
	for _, name := range []string{"keywarden", "kube-apiserver"} {
		if !regexp.MustCompile(`(?m)\sRunning\s+` + name + `\s`).MatchString(out) {
			t.Errorf("README's %s: no running %s:\n%s", cmd[1], name, out)
		}
	}
}

func keywardenPod() string {
	host, _ := os.Hostname()
	return "keywarden-" + strings.ToLower(host)
}

type podStatus struct {
	Status struct {
		Conditions []struct {
			Type, Status string
		} `json:"conditions"`
		ContainerStatuses []struct {
			Name         string `json:"name"`
			Ready        bool   `json:"ready"`
			RestartCount int    `json:"restartCount"`
			ContainerID  string `json:"containerID"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

func (h *host) pod(name string) (podStatus, error) {
	var ps podStatus
	out, err := h.kubectl(20*time.Second, "-n", "kube-system", "get", "pod", name, "-o", "json")
	if err != nil {
		return ps, fmt.Errorf("%v: %s", err, tailLines(out, 3))
	}
	return ps, json.Unmarshal([]byte(out), &ps)
}

func (h *host) podReady(name string) error {
	ps, err := h.pod(name)
	if err != nil {
		return err
	}
	for _, c := range ps.Status.Conditions {
		if c.Type == "Ready" && c.Status == "True" {
			return nil
		}
	}
	return fmt.Errorf("pod %s not Ready: %+v", name, ps.Status.Conditions)
}

// secret is one Secret the test wrote and what its data must read back as.
type secret struct {
	name string
	data map[string][]byte
}

// secretWorkflows creates Secrets the ways operators do through kubectl.
func (h *host) secretWorkflows(t *testing.T) []secret {
	dir := t.TempDir()
	blob := make([]byte, 4096)
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	blobPath := filepath.Join(dir, "blob.bin")
	cfgPath := filepath.Join(dir, "app.conf")
	cfg := []byte("user = app\npassword = \"s3cr3t with spaces\"\n")
	certPEM, keyPEM := selfSigned(t)
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	for p, b := range map[string][]byte{blobPath: blob, cfgPath: cfg, certPath: certPEM, keyPath: keyPEM} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mustKubectl := func(stdin string, args ...string) {
		t.Helper()
		if out, err := h.kubectlIn(time.Minute, stdin, args...); err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	mustKubectl("", "create", "secret", "generic", "literals", "--from-literal=user=admin", "--from-literal=password=p@ss w0rd!")
	mustKubectl("", "create", "secret", "generic", "files", "--from-file=blob.bin="+blobPath, "--from-file=app.conf="+cfgPath)
	mustKubectl("", "create", "secret", "tls", "web-tls", "--cert="+certPath, "--key="+keyPath)
	mustKubectl("", "create", "secret", "docker-registry", "regcred", "--docker-server=registry.example.com",
		"--docker-username=robot", "--docker-password=hunter2-registry", "--docker-email=robot@example.com")
	dockerCfg := `{"auths":{"registry.example.com":{"username":"robot","password":"hunter2-registry","email":"robot@example.com","auth":"` +
		base64.StdEncoding.EncodeToString([]byte("robot:hunter2-registry")) + `"}}}`
	mustKubectl(`apiVersion: v1
kind: Secret
metadata:
  name: applied
stringData:
  token: applied-token-value
  config.yaml: |
    endpoint: https://db.example.com
`, "apply", "-f", "-")
	mustKubectl(`apiVersion: v1
kind: Secret
metadata:
  name: frozen
immutable: true
stringData:
  key: immutable-value
`, "apply", "-f", "-")
	// An immutable Secret's data cannot change.
	out, err := h.kubectl(time.Minute, "patch", "secret", "frozen", "-p", `{"stringData":{"key":"changed"}}`)
	if err == nil || !strings.Contains(out, "immutable") {
		t.Errorf("patching an immutable Secret: err %v, output %q; want it refused as immutable", err, out)
	}
	return []secret{
		{"literals", map[string][]byte{"user": []byte("admin"), "password": []byte("p@ss w0rd!")}},
		{"files", map[string][]byte{"blob.bin": blob, "app.conf": cfg}},
		{"web-tls", map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM}},
		{"regcred", map[string][]byte{".dockerconfigjson": []byte(dockerCfg)}},
		{"applied", map[string][]byte{"token": []byte("applied-token-value"), "config.yaml": []byte("endpoint: https://db.example.com\n")}},
		{"frozen", map[string][]byte{"key": []byte("immutable-value")}},
	}
}

// storedValue reads default/<name>'s raw value from etcd with etcdctl and
// kubeadm's healthcheck-client pair (docs/install.md's check), exactly
// (-w json: the bytes base64-encoded, no newline added).
func (h *host) storedValue(t *testing.T, name string) ([]byte, bool) {
	t.Helper()
	out, err := h.try(time.Minute, filepath.Join(h.tools, "etcdctl"), "--endpoints=https://127.0.0.1:2379",
		"--cacert=/etc/kubernetes/pki/etcd/ca.crt",
		"--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt",
		"--key=/etc/kubernetes/pki/etcd/healthcheck-client.key",
		"get", "/registry/secrets/default/"+name, "-w", "json")
	if err != nil {
		t.Errorf("etcdctl get %s: %v: %s", name, err, tailLines(out, 3))
		return nil, false
	}
	var resp struct {
		Kvs []struct {
			Value []byte `json:"value"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("etcdctl get %s: %v, %d values", name, err, len(resp.Kvs))
		return nil, false
	}
	return resp.Kvs[0].Value, true
}

// checkReadBack reads each Secret through the apiserver, byte for byte.
func (h *host) checkReadBack(t *testing.T, secrets []secret) {
	t.Helper()
	for _, s := range secrets {
		out, err := h.kubectl(time.Minute, "get", "secret", s.name, "-o", "json")
		if err != nil {
			t.Errorf("get secret %s: %v\n%s", s.name, err, out)
			continue
		}
		var obj struct {
			Data map[string]string `json:"data"`
		}
		if err := json.Unmarshal([]byte(out), &obj); err != nil {
			t.Fatal(err)
		}
		if len(obj.Data) != len(s.data) {
			t.Errorf("secret %s has keys %v, want %d", s.name, keys(obj.Data), len(s.data))
		}
		for k, want := range s.data {
			got, err := base64.StdEncoding.DecodeString(obj.Data[k])
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("secret %s key %s reads back %d bytes (%v), want the %d written", s.name, k, len(got), err, len(want))
			}
		}
	}
}

// checkStored reads each Secret from etcd with etcdctl and kubeadm's TLS
// paths (docs/install.md): a KMS v2 value of keywarden, no plaintext.
func (h *host) checkStored(t *testing.T, secrets []secret) {
	t.Helper()
	for _, s := range secrets {
		val, ok := h.storedValue(t, s.name)
		if !ok {
			continue
		}
		if !bytes.HasPrefix(val, []byte("k8s:enc:kms:v2:keywarden:")) {
			t.Errorf("secret %s is stored as %q..., want k8s:enc:kms:v2:keywarden:", s.name, printable(string(val), 30))
		}
		for k, v := range s.data {
			if len(v) >= 8 && bytes.Contains(val, v) {
				t.Errorf("secret %s: the value of %s is in etcd in plaintext", s.name, k)
			}
		}
	}
}

// restartKeywarden stops keywarden's container with `crictl stop` (the
// kubelet restarts it), checks reads go on meanwhile, and
// waits for the restart and for kms-providers.
func (h *host) restartKeywarden(t *testing.T, secrets []secret) {
	c, err := h.containerNamed("keywarden")
	if err != nil {
		t.Fatal(err)
	}
	before, err := h.pod(keywardenPod())
	if err != nil {
		t.Fatal(err)
	}
	// A reader runs from the stop until keywarden is back and checked: reads
	// go on from the apiserver's DEK cache while keywarden is down or starting.
	stop, readerDone := make(chan struct{}), make(chan struct{})
	var reads int
	var readErrs []string
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if out, err := h.kubectl(20*time.Second, "get", "secret", secrets[0].name, "-o", "name"); err != nil {
				readErrs = append(readErrs, fmt.Sprintf("%v: %s", err, strings.TrimSpace(out)))
			}
			reads++
			time.Sleep(200 * time.Millisecond)
		}
	}()
	// crictl stop returns once the container has exited (SIGTERM, then
	// SIGKILL after the timeout; keywarden stops on SIGTERM well before).
	h.crictl(time.Minute, "stop", "--timeout", "30", c.Status.ID)
	defer func() {
		close(stop)
		<-readerDone
		if len(readErrs) > 0 || reads < 5 {
			t.Errorf("reads while keywarden restarted: %d, failed %d: %v", reads, len(readErrs), readErrs)
		} else {
			t.Logf("%d reads while keywarden restarted, none failed", reads)
		}
	}()
	waitUntil(t, 3*time.Minute, "keywarden restarted by the kubelet, Ready", func() error {
		ps, err := h.pod(keywardenPod())
		if err != nil {
			return err
		}
		if len(ps.Status.ContainerStatuses) != 1 || len(before.Status.ContainerStatuses) != 1 {
			return fmt.Errorf("container statuses %+v", ps.Status.ContainerStatuses)
		}
		now, was := ps.Status.ContainerStatuses[0], before.Status.ContainerStatuses[0]
		if now.RestartCount <= was.RestartCount || !now.Ready {
			return fmt.Errorf("restartCount %d (was %d), ready %v", now.RestartCount, was.RestartCount, now.Ready)
		}
		return nil
	})
	h.waitKMSReady(2 * time.Minute)
	h.checkReadBack(t, secrets)
	if _, err := h.kubectl(time.Minute, "create", "secret", "generic", "after-restart", "--from-literal=k=after-restart-value"); err != nil {
		t.Errorf("a write after keywarden's restart: %v", err)
	}
}

// reboot is a power cut and a boot: every container killed, the kubelet
// and containerd stopped, /run emptied (tmpfs on a real node), then the
// boot's tmpfiles (README step 2: "now and at every boot"), containerd and
// the kubelet again.
func (h *host) reboot(t *testing.T) {
	h.stopKubelet()
	h.killAllTasks()
	h.stopContainerd()
	killShims(t)
	unmountUnder(t, "/var/lib/kubelet", runRoot)
	for _, p := range []string{"/run/keywarden", filepath.Join(runRoot, "containerd")} {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	if l := h.leftovers(); len(l) > 0 {
		t.Fatalf("still running after the power cut:\n%s", strings.Join(l, "\n"))
	}
	h.sh(time.Minute, h.readme.tmpfiles)
	h.startContainerd()
	h.startKubelet()
}

// --- docs/rotation.md ---

// docBlock is one ```sh block of a document; skip is the reason given in a
// "<!-- not run by the node test: ... -->" line just above it.
type docBlock struct {
	text, skip string
}

var notRun = regexp.MustCompile(`<!-- not run by the node test: (.*?) -->\s*$`)

func docBlocks(t *testing.T, path string) []docBlock {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	var out []docBlock
	for _, m := range fence.FindAllStringSubmatchIndex(s, -1) {
		db := docBlock{text: dedent(s[m[2]:m[3]])}
		if r := notRun.FindStringSubmatch(s[max(0, m[0]-300):m[0]]); r != nil {
			db.skip = r[1]
		}
		out = append(out, db)
	}
	return out
}

// runDocBlocks runs the shell blocks of a document in order, as root in
// dir, each in its own bash with env exported and the variables (vars) and
// functions of the blocks before it; blocks marked "not run by the node
// test" are logged and skipped. after, if set, runs after each block with
// a way to read the shell's variables. It returns the blocks it ran.
func (h *host) runDocBlocks(t *testing.T, doc, dir string, env, vars []string, after func(text string, get func(string) string)) []string {
	if err := os.MkdirAll(dir, 0o755); err != nil { // 65532 reads files here
		t.Fatal(err)
	}
	state := filepath.Join(dir, "vars.sh")
	get := func(name string) string {
		out := h.sh(10*time.Second, fmt.Sprintf("source %s; printf %%s \"${%s:-}\"", state, name))
		return strings.TrimSpace(out)
	}
	var exports string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		exports += fmt.Sprintf("export %s=%q\n", k, v)
	}
	var ran []string
	for i, b := range docBlocks(t, filepath.Join(h.repo, doc)) {
		if b.skip != "" {
			t.Logf("%s block %d not run: %s", doc, i, b.skip)
			continue
		}
		script := fmt.Sprintf("cd %s\n%sif [ -f %s ]; then source %s; fi\n%s\n{ declare -p %s 2>/dev/null || true; declare -f; } > %s.tmp\nmv %s.tmp %s\n",
			dir, exports, state, state, b.text, strings.Join(vars, " "), state, state, state)
		out := h.sh(5*time.Minute, script)
		t.Logf("%s block %d:\n%s\n--> %s", doc, i, strings.TrimSpace(b.text), tailLines(out, 8))
		ran = append(ran, b.text)
		if after != nil {
			after(b.text, get)
		}
	}
	return ran
}

// rotationRunbook runs docs/rotation.md's shell blocks in order
// (runDocBlocks: KS, SOCK, as65532, OLD, NEW carry over). After the
// promote it waits, as the runbook says to, until kube-apiserver writes
// under NEW. At the end OLD is destroyed, so every Secret must be under NEW.
func (h *host) rotationRunbook(t *testing.T, secrets []secret) {
	ran := h.runDocBlocks(t, "docs/rotation.md", filepath.Join(workRoot, "rotation"), nil,
		[]string{"KS", "SOCK", "OLD", "NEW"}, func(text string, get func(string) string) {
			if !strings.Contains(text, "keys promote") {
				return
			}
			old, nw := get("OLD"), get("NEW")
			if old == "" || nw == "" || old == nw {
				t.Fatalf("after the promote: OLD %q, NEW %q", old, nw)
			}
			h.rotatedFrom, h.rotatedTo = old, nw
			h.waitWritesUnder(t, nw)
		})
	for _, want := range []string{"keys add", "keys promote", "kmsctl migrate", "--fail-on-key $OLD", "keys disable", "keys destroy"} {
		found := false
		for _, r := range ran {
			found = found || strings.Contains(r, want)
		}
		if !found {
			t.Errorf("docs/rotation.md: no block run contains %q", want)
		}
	}
	if h.rotatedTo == "" {
		t.Fatal("docs/rotation.md: no promote ran")
	}
	list := h.sh(time.Minute, "setpriv --reuid=65532 --regid=65532 --clear-groups kmsctl keys list --keystore file:///etc/keywarden/keyset.json")
	if strings.Contains(list, h.rotatedFrom) || !strings.Contains(list, h.rotatedTo) {
		t.Errorf("after the runbook the keyset lists:\n%s\nwant %s and not the destroyed %s", list, h.rotatedTo, h.rotatedFrom)
	}
	h.checkReadBack(t, secrets)
	for _, s := range secrets {
		if id := h.storedKeyID(t, s.name); id != h.rotatedTo {
			t.Errorf("after the runbook secret %s is stored under %q, want NEW %q", s.name, id, h.rotatedTo)
		}
	}
}

// waitWritesUnder writes canary Secrets until kube-apiserver stores one
// under keyID (it polls keywarden's Status about once a minute).
func (h *host) waitWritesUnder(t *testing.T, keyID string) {
	n := 0
	waitUntil(t, 3*time.Minute, "kube-apiserver writing under "+keyID, func() error {
		n++
		name := fmt.Sprintf("rotation-canary-%d", n)
		if out, err := h.kubectl(time.Minute, "create", "secret", "generic", name, "--from-literal=k=canary"); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if id := h.storedKeyID(t, name); id != keyID {
			time.Sleep(4 * time.Second)
			return fmt.Errorf("canary %s stored under %q", name, id)
		}
		t.Logf("kube-apiserver writes under %s (canary %d)", keyID, n)
		return nil
	})
}

// storedKeyID reads default/<name> from etcd and returns its KMS v2 key_id.
func (h *host) storedKeyID(t *testing.T, name string) string {
	t.Helper()
	val, ok := h.storedValue(t, name)
	if !ok {
		return ""
	}
	v := stored.Parse(val)
	if v.Object == nil {
		return "(" + v.Label() + ")"
	}
	return v.Object.KeyID
}

// --- docs/keystores/pkcs11.md ---

// pkcs11Pod makes a second cluster on the node with keywarden on a SoftHSM2
// token, as docs/keystores/pkcs11.md says: kubeadm reset, keywarden's
// directories afresh (README's tmpfiles), the doc's token, PIN file and
// first-key blocks run as written, the doc's pod spec merged into
// deploy/static-pod/keywarden.yaml with the PKCS#11 image, kubeadm init,
// and the same Secret checks, the Secrets under the token's key.
func (h *host) pkcs11Pod(t *testing.T) {
	h.stopKubelet()
	h.run(3*time.Minute, filepath.Join(h.tools, "kubeadm"), "reset", "-f", "--cri-socket", criSocket)
	h.killAllTasks()
	for _, p := range []string{"/etc/keywarden", "/var/lib/keywarden", "/run/keywarden"} {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	h.sh(time.Minute, h.readme.tmpfiles)
	h.ctr(5*time.Minute, "images", "import", h.kwImagePKCS11)

	var uri string
	ran := h.runDocBlocks(t, "docs/keystores/pkcs11.md", filepath.Join(workRoot, "pkcs11"),
		[]string{"SO_PIN=so-" + randHex(t, 8), "USER_PIN=user-" + randHex(t, 8)}, []string{"URI"},
		func(_ string, get func(string) string) { uri = get("URI") })
	if len(ran) != 3 || !strings.HasPrefix(uri, "pkcs11:") {
		t.Fatalf("docs/keystores/pkcs11.md: ran %d blocks (want the token, the PIN file, the first key), URI %q", len(ran), uri)
	}
	primary := strings.TrimSpace(h.sh(time.Minute, fmt.Sprintf("source %s/vars.sh; as65532 kmsctl keys list --keystore \"$URI\" | awk '$3 == \"*\" {print $1}'", filepath.Join(workRoot, "pkcs11"))))
	if primary == "" {
		t.Fatal("no primary version on the token")
	}

	manifest := pkcs11Manifest(t, h.repo)
	if err := os.WriteFile("/etc/kubernetes/manifests/keywarden.yaml", manifest, 0o600); err != nil {
		t.Fatal(err)
	}
	h.sh(time.Minute, h.readme.encryptionConfig)
	h.startKubelet()
	h.run(10*time.Minute, filepath.Join(h.tools, "kubeadm"), "init", "--config", h.kubeadmConfig(),
		"--ignore-preflight-errors="+strings.Join(preflightIgnored, ","),
		"--skip-phases=addon/kube-proxy,addon/coredns")
	h.waitKMSReady(3 * time.Minute)
	h.checkContainer(t)
	secrets := h.secretWorkflows(t)
	h.checkStored(t, secrets)
	h.checkReadBack(t, secrets)
	for _, s := range secrets {
		if id := h.storedKeyID(t, s.name); id != primary {
			t.Errorf("secret %s is stored under %q, want the token's primary %q", s.name, id, primary)
		}
	}
	t.Logf("%d Secrets stored under the token's key %s and read back", len(secrets), primary)
}

// pkcs11Manifest is deploy/static-pod/keywarden.yaml with the pod spec of
// docs/keystores/pkcs11.md merged in: its image (keywarden:dev-pkcs11),
// its args replacing the manifest's of the same flag, its env, and its
// volume mounts and volumes that the manifest does not have by name.
func pkcs11Manifest(t *testing.T, repo string) []byte {
	b, err := os.ReadFile(filepath.Join(repo, "deploy", "static-pod", "keywarden.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod map[string]any
	if err := yaml.Unmarshal(b, &pod); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(repo, "docs", "keystores", "pkcs11.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## Running it in the static pod.*?```yaml\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/keystores/pkcs11.md: no pod spec under \"Running it in the static pod\"")
	}
	var frag map[string]any
	if err := yaml.Unmarshal(m[1], &frag); err != nil {
		t.Fatalf("docs/keystores/pkcs11.md's pod spec: %v", err)
	}
	spec, fspec := pod["spec"].(map[string]any), frag["spec"].(map[string]any)
	c := spec["containers"].([]any)[0].(map[string]any)
	fc := fspec["containers"].([]any)[0].(map[string]any)
	if !strings.HasSuffix(fmt.Sprint(fc["image"]), "-pkcs11") {
		t.Fatalf("the doc's image %v is not a -pkcs11 one", fc["image"])
	}
	c["image"] = kwImageRef + "-pkcs11"
	args := c["args"].([]any)
	for _, fa := range fc["args"].([]any) {
		flag, _, _ := strings.Cut(fa.(string), "=")
		replaced := false
		for i, a := range args {
			if strings.HasPrefix(a.(string), flag+"=") {
				args[i], replaced = fa, true
			}
		}
		if !replaced {
			args = append(args, fa)
		}
	}
	c["args"] = args
	mergeNamed := func(dst map[string]any, key string, src []any) {
		have := map[string]bool{}
		list, _ := dst[key].([]any)
		for _, e := range list {
			have[fmt.Sprint(e.(map[string]any)["name"])] = true
		}
		for _, e := range src {
			if !have[fmt.Sprint(e.(map[string]any)["name"])] {
				list = append(list, e)
			}
		}
		dst[key] = list
	}
	mergeNamed(c, "env", fc["env"].([]any))
	mergeNamed(c, "volumeMounts", fc["volumeMounts"].([]any))
	mergeNamed(spec, "volumes", fspec["volumes"].([]any))
	out, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}

// --- README ---

type installBlocks struct {
	tmpfiles, keysInit, installPod, check, backup, encryptionConfig, migrateAudit string
}

var fence = regexp.MustCompile("(?m)^[ \t]*```sh\n((?s:.*?))^[ \t]*```")

// readmeInstallBlocks returns the shell blocks of README's "Use it with a
// real cluster", in order, each checked for what it must contain so that a
// reordered README fails here rather than running the wrong block.
func readmeInstallBlocks(t *testing.T, path string) installBlocks {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "## Use it with a real cluster")
	j := strings.Index(s[i+1:], "\n## ")
	if i < 0 || j < 0 {
		t.Fatal("README has no section \"Use it with a real cluster\"")
	}
	var blocks []string
	for _, m := range fence.FindAllStringSubmatch(s[i:i+1+j], -1) {
		blocks = append(blocks, dedent(m[1]))
	}
	want := []string{"docker create", "systemd-tmpfiles --create", "kmsctl keys init", "/etc/kubernetes/manifests/keywarden.yaml",
		"snapshot save", "/etc/kubernetes/encryption/encryption-config.yaml", "kmsctl migrate"}
	if len(blocks) != len(want) {
		t.Fatalf("README's install section has %d shell blocks, want %d (%q ...)", len(blocks), len(want), want)
	}
	for k, w := range want {
		if !strings.Contains(blocks[k], w) {
			t.Fatalf("README install block %d does not contain %q:\n%s", k, w, blocks[k])
		}
	}
	// Block 3 installs the manifest and, "once the kubelet has started it",
	// checks the socket: two moments of the install.
	var install, check []string
	for _, l := range strings.Split(blocks[3], "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "kmsctl check") {
			check = append(check, l)
		} else {
			install = append(install, l)
		}
	}
	return installBlocks{tmpfiles: blocks[1], keysInit: blocks[2], installPod: strings.Join(install, "\n"),
		check: strings.Join(check, "\n"), backup: blocks[4], encryptionConfig: blocks[5], migrateAudit: blocks[6]}
}

// dedent removes the indentation of a block inside a list item.
func dedent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	ind := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, " "))
		if ind < 0 || n < ind {
			ind = n
		}
	}
	for k, l := range lines {
		if len(l) >= ind && ind > 0 {
			lines[k] = l[ind:]
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// --- small helpers ---

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "web.example.com"},
		DNSNames: []string{"web.example.com"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func printable(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '.'
		}
		return r
	}, s)
}

//go:build node

package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// The node's own paths. kubeadm, the kubelet and keywarden's manifests use
// the standard ones (/etc/kubernetes, /var/lib/kubelet, /var/lib/etcd,
// /run/keywarden, /etc/keywarden, /var/lib/keywarden); containerd gets a
// root, state and socket of the test's own, so a containerd the machine may
// run is left alone.
const (
	workRoot    = "/var/lib/keywarden-node-e2e"
	runRoot     = "/run/keywarden-node-e2e"
	ctrdSock    = runRoot + "/containerd.sock"
	criSocket   = "unix://" + ctrdSock
	adminConf   = "/etc/kubernetes/admin.conf"
	k8sVersion  = "v1.37.2"
	pauseImage  = "registry.k8s.io/pause:3.10.2"
	etcdImage   = "registry.k8s.io/etcd:3.7.0-0"
	kwImageRef  = "keywarden:dev" // deploy/static-pod/keywarden.yaml's image, unchanged
	ctrNS       = "k8s.io"
	kubeletPort = "10248"
)

// host is this machine as a kubeadm control-plane node: containerd, the
// kubelet (restarted like systemd's unit would), and what they leave.
type host struct {
	t       *testing.T
	repo    string
	tools   string // test/e2e/tools/bin
	kwImage string // keywarden's image, a docker-archive of the Dockerfile's build
	// kwImagePKCS11 is its PKCS#11 variant (test/node/image.sh).
	kwImagePKCS11 string
	pathDir       string // first on $PATH for the docs' commands: kmsctl, kubectl, kubeadm
	logs          string
	ctrd          *cluster.Process
	kubelet       *supervisor
	readme        installBlocks // README's install blocks, read once
	// rotatedFrom and rotatedTo are docs/rotation.md's OLD and NEW.
	rotatedFrom, rotatedTo string
	cleanups               []func()
	lock                   *os.File // lockMachine's; held until the process ends
}

// lockFile is outside runRoot and workRoot, which the cleanup removes.
const lockFile = "/run/keywarden-node-e2e.lock"

// lockMachine takes the node test's machine-wide lock (flock(2), released
// by the kernel when the process ends), or fails the test if another run
// holds it.
func lockMachine(t *testing.T) *os.File {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		t.Fatalf("%s: another node test is running on this machine (%v)", lockFile, err)
	}
	return f
}

// ctx returns a context bounded by d and the test's deadline.
func (h *host) ctx(d time.Duration) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(d)
	if td, ok := h.t.Deadline(); ok && td.Add(-2*time.Minute).Before(deadline) {
		deadline = td.Add(-2 * time.Minute)
	}
	return context.WithDeadline(context.Background(), deadline)
}

// run runs a command and returns its combined output; it fails the test on
// error.
func (h *host) run(d time.Duration, name string, args ...string) string {
	h.t.Helper()
	out, err := h.try(d, name, args...)
	if err != nil {
		h.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (h *host) try(d time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := h.ctx(d)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = h.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// sh runs a script the way an operator's root shell on a kubeadm node
// would: bash, errexit, the node's tools on $PATH, and KUBECONFIG set to
// admin.conf as `kubeadm init` tells root to.
func (h *host) sh(d time.Duration, script string) string {
	h.t.Helper()
	out, err := h.trySh(d, script)
	if err != nil {
		h.t.Fatalf("script failed: %v\n--- script\n%s\n--- output\n%s", err, script, out)
	}
	return out
}

func (h *host) trySh(d time.Duration, script string) (string, error) {
	ctx, cancel := h.ctx(d)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = h.repo
	cmd.Env = h.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (h *host) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "KUBECONFIG=") {
			continue
		}
		env = append(env, kv)
	}
	// crictl's endpoint: a node's /etc/crictl.yaml would name it.
	return append(env, "PATH="+h.pathDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "KUBECONFIG="+adminConf,
		"CONTAINER_RUNTIME_ENDPOINT=unix://"+ctrdSock)
}

// ctr runs ctr against our containerd, in the kubelet's namespace; it
// fails the test on error. tryCtr returns the error instead.
func (h *host) ctr(d time.Duration, args ...string) string {
	h.t.Helper()
	out, err := h.tryCtr(d, args...)
	if err != nil {
		h.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (h *host) tryCtr(d time.Duration, args ...string) (string, error) {
	return h.try(d, "ctr", append([]string{"--address", ctrdSock, "-n", ctrNS}, args...)...)
}

func (h *host) kubectl(d time.Duration, args ...string) (string, error) {
	return h.kubectlIn(d, "", args...)
}

// kubectlIn runs kubectl as root with admin.conf, stdin on its input.
func (h *host) kubectlIn(d time.Duration, stdin string, args ...string) (string, error) {
	ctx, cancel := h.ctx(d)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.tools, "kubectl"), append([]string{"--kubeconfig", adminConf}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// --- containerd ---

// containerdConfig is the CRI setup the kubelet recipe in docs/e2e.md
// describes: cgroupfs (the kubelet's cgroupDriver), and
// restrict_oom_score_adj because this machine does not grant
// CAP_SYS_RESOURCE, so the kubelet's oom_score_adj of -998 for sandboxes
// would make runc fail.
func containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
`, workRoot+"/containerd", runRoot+"/containerd", ctrdSock, pauseImage)
}

func (h *host) startContainerd() {
	h.t.Helper()
	if err := h.tryStartContainerd(); err != nil {
		h.t.Fatal(err)
	}
}

// tryStartContainerd starts containerd and waits up to 60 s for it to
// serve; teardown uses it directly, as a Fatal there would skip the rest.
func (h *host) tryStartContainerd() error {
	cfg := filepath.Join(workRoot, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(containerdConfig()), 0o600); err != nil {
		return err
	}
	p, err := cluster.StartDaemon("containerd", filepath.Join(h.logs, "containerd.log"), "containerd", "--config", cfg)
	if err != nil {
		return err
	}
	h.ctrd = p
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		out, err := h.try(5*time.Second, "ctr", "--address", ctrdSock, "version")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd not serving within 60 s: %v: %s", err, out)
		}
	}
}

func (h *host) stopContainerd() {
	if h.ctrd != nil {
		h.ctrd.Stop(20 * time.Second)
		h.ctrd = nil
	}
}

// criContainer is what `crictl inspect` says of a container: the
// kubelet's labels and, from containerd's CRI plugin, the OCI spec it ran.
type criContainer struct {
	Status struct {
		ID     string            `json:"id"`
		State  string            `json:"state"`
		Labels map[string]string `json:"labels"`
	} `json:"status"`
	Info struct {
		RuntimeSpec struct {
			Process struct {
				User struct {
					UID uint32 `json:"uid"`
					GID uint32 `json:"gid"`
				} `json:"user"`
				Capabilities struct {
					Bounding    []string `json:"bounding"`
					Effective   []string `json:"effective"`
					Permitted   []string `json:"permitted"`
					Inheritable []string `json:"inheritable"`
					Ambient     []string `json:"ambient"`
				} `json:"capabilities"`
				NoNewPrivileges bool `json:"noNewPrivileges"`
			} `json:"process"`
			Root struct {
				Readonly bool `json:"readonly"`
			} `json:"root"`
		} `json:"runtimeSpec"`
	} `json:"info"`
}

// crictl runs crictl (cri-tools, test/e2e/tools/node-tools.sh) against our
// containerd's CRI endpoint, as an operator runs it on a node; it fails the
// test on error.
func (h *host) crictl(d time.Duration, args ...string) string {
	h.t.Helper()
	out, err := h.tryCrictl(d, args...)
	if err != nil {
		h.t.Fatalf("crictl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// tryCrictl returns crictl's stdout; its stderr goes into the error.
func (h *host) tryCrictl(d time.Duration, args ...string) (string, error) {
	ctx, cancel := h.ctx(d)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.tools, "crictl"), args...)
	cmd.Env = h.env()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// containerNamed returns the running container the kubelet started for
// the pod container name, as `crictl ps` and `crictl inspect` see it.
func (h *host) containerNamed(name string) (criContainer, error) {
	out, err := h.tryCrictl(20*time.Second, "ps", "--state", "Running", "--name", "^"+name+"$", "-q")
	if err != nil {
		return criContainer{}, fmt.Errorf("crictl ps --name %s: %w", name, err)
	}
	ids := strings.Fields(out)
	if len(ids) != 1 {
		return criContainer{}, fmt.Errorf("crictl ps: %d running containers named %q, want 1", len(ids), name)
	}
	info, err := h.tryCrictl(20*time.Second, "inspect", ids[0])
	if err != nil {
		return criContainer{}, fmt.Errorf("crictl inspect %s: %w", ids[0], err)
	}
	var c criContainer
	if err := json.Unmarshal([]byte(info), &c); err != nil {
		return criContainer{}, fmt.Errorf("crictl inspect %s: %w", ids[0], err)
	}
	if got := c.Status.Labels["io.kubernetes.container.name"]; got != name || c.Status.State != "CONTAINER_RUNNING" {
		return criContainer{}, fmt.Errorf("crictl inspect %s: container %q in state %s, want %q running", ids[0], got, c.Status.State, name)
	}
	return c, nil
}

// killAllTasks SIGKILLs every task in the k8s.io namespace, as a power cut
// would, and waits up to 30 s until none is running.
func (h *host) killAllTasks() {
	ids, err := h.runningTasks()
	if err != nil {
		h.t.Logf("%v", err)
		return
	}
	h.t.Logf("killing %d running containerd tasks", len(ids))
	for _, id := range ids {
		if o, err := h.tryCtr(20*time.Second, "tasks", "kill", "-s", "SIGKILL", id); err != nil {
			h.t.Logf("ctr tasks kill %s: %v: %s", id, err, o)
		}
	}
	for i := 0; i < 60; i++ {
		if ids, err := h.runningTasks(); err != nil || len(ids) == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	ids, _ = h.runningTasks()
	h.t.Logf("tasks still running 30 s after SIGKILL: %v", ids)
}

// runningTasks lists the ids of tasks in state RUNNING.
func (h *host) runningTasks() ([]string, error) {
	out, err := h.tryCtr(20*time.Second, "tasks", "ls")
	if err != nil {
		return nil, fmt.Errorf("ctr tasks ls: %v: %s", err, out)
	}
	var ids []string
	for _, line := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "RUNNING" {
			ids = append(ids, f[0])
		}
	}
	return ids, nil
}

// --- kubelet ---

// supervisor runs the kubelet as kubeadm's systemd drop-in does
// (10-kubeadm.conf: --bootstrap-kubeconfig, --kubeconfig, --config and the
// flags kubeadm writes to /var/lib/kubelet/kubeadm-flags.env), and restarts
// it 2 s after it exits (the unit's Restart=always), starting it once
// /var/lib/kubelet/config.yaml exists. This machine has no systemd.
type supervisor struct {
	h    *host
	stop chan struct{}
	done chan struct{}
}

func (h *host) startKubelet() {
	s := &supervisor{h: h, stop: make(chan struct{}), done: make(chan struct{})}
	h.kubelet = s
	go s.loop()
}

func (s *supervisor) loop() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		args, err := kubeletArgs()
		if err != nil { // kubeadm has not written its files yet
			select {
			case <-s.stop:
				return
			case <-time.After(time.Second):
			}
			continue
		}
		p, err := cluster.StartDaemon("kubelet", filepath.Join(s.h.logs, "kubelet.log"), filepath.Join(s.h.tools, "kubelet"), args...)
		if err != nil {
			s.h.t.Errorf("kubelet: %v", err)
			return
		}
		for !p.Exited() {
			select {
			case <-s.stop:
				p.Stop(30 * time.Second)
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		select {
		case <-s.stop:
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func (h *host) stopKubelet() {
	if h.kubelet == nil {
		return
	}
	close(h.kubelet.stop)
	<-h.kubelet.done
	h.kubelet = nil
}

// kubeletArgs reads the flags kubeadm leaves for the kubelet.
func kubeletArgs() ([]string, error) {
	if _, err := os.Stat("/var/lib/kubelet/config.yaml"); err != nil {
		return nil, err
	}
	b, err := os.ReadFile("/var/lib/kubelet/kubeadm-flags.env")
	if err != nil {
		return nil, err
	}
	args := []string{"--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml"}
	if _, err := os.Stat("/etc/kubernetes/bootstrap-kubelet.conf"); err == nil {
		args = append(args, "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf")
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		v, ok := strings.CutPrefix(line, "KUBELET_KUBEADM_ARGS=")
		if !ok {
			continue
		}
		args = append(args, strings.Fields(strings.Trim(v, `"`))...)
	}
	return args, nil
}

// --- cleanup ---

// teardown stops everything the node test started and removes what kubeadm
// and keywarden left: `kubeadm reset -f` first (with containerd up, so it
// can remove the pods), then whatever is still running.
func (h *host) teardown() {
	t := h.t
	if t.Failed() || os.Getenv("KEYWARDEN_E2E_KEEP") != "" {
		keep := filepath.Join(os.TempDir(), "kwnode-logs-"+time.Now().UTC().Format("20060102T150405"))
		if out, err := exec.Command("cp", "-a", h.logs, keep).CombinedOutput(); err != nil {
			t.Logf("keeping the logs: %v: %s", err, out)
		} else {
			t.Logf("logs kept in %s", keep)
		}
	}
	h.stopKubelet()
	if _, err := os.Stat(filepath.Join(workRoot, "containerd.toml")); err == nil && h.ctrd == nil {
		if err := h.tryStartContainerd(); err != nil { // kubeadm reset removes the pods through it
			t.Errorf("cleanup: %v", err)
		}
	}
	out, err := h.try(3*time.Minute, filepath.Join(h.tools, "kubeadm"), "reset", "-f", "--cri-socket", criSocket)
	if err != nil {
		t.Errorf("kubeadm reset -f: %v\n%s", err, out)
	} else {
		t.Logf("kubeadm reset -f:\n%s", tailLines(out, 15))
	}
	h.killAllTasks()
	h.stopContainerd()
	killShims(t)
	killPodProcesses(t)
	unmountUnder(t, "/var/lib/kubelet", workRoot, runRoot)
	for _, p := range []string{workRoot, runRoot, "/var/lib/kubelet", "/var/lib/etcd", "/etc/kubernetes",
		"/run/keywarden", "/etc/keywarden", "/var/lib/keywarden", "/etc/tmpfiles.d/keywarden.conf"} {
		if err := os.RemoveAll(p); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	if h.rotatedTo != "" { // docs/rotation.md's migrate state file
		_ = os.Remove("/var/tmp/kmsctl-migrate-" + strings.ReplaceAll(h.rotatedTo, ":", "-") + ".json")
	}
	for _, f := range h.cleanups {
		f()
	}
}

// killShims kills containerd-shim processes serving our containerd.
func killShims(t *testing.T) {
	for _, pid := range pidsMatching(func(cmdline string) bool {
		return strings.Contains(cmdline, "containerd-shim") && strings.Contains(cmdline, ctrdSock)
	}) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Logf("cleanup: killed containerd-shim %d", pid)
	}
}

// podPids lists the processes in the kubelet's pod cgroups (cgroupfs
// driver: /kubepods...).
func podPids() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup")); err == nil && strings.Contains(string(b), "/kubepods") {
			if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && strings.Contains(string(st), ") Z ") {
				continue // a zombie, waiting for init to reap it
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// killPodProcesses SIGKILLs whatever still runs in a pod cgroup (what a
// power cut does) and waits up to 10 s for it to go.
func killPodProcesses(t *testing.T) {
	pids := podPids()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if len(pids) > 0 {
		t.Logf("killed %d processes left in pod cgroups", len(pids))
	}
	for i := 0; i < 20 && len(podPids()) > 0; i++ {
		time.Sleep(500 * time.Millisecond)
	}
}

// pidsMatching returns the processes whose NUL-separated command line,
// joined with spaces, matches.
func pidsMatching(match func(cmdline string) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if match(strings.ReplaceAll(string(b), "\x00", " ")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsUnder lists the mount points at or below any of roots.
func mountsUnder(roots ...string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := f[4]
		for _, r := range roots {
			if mp == r || strings.HasPrefix(mp, r+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}

func unmountUnder(t *testing.T, roots ...string) {
	mps := mountsUnder(roots...)
	for i := len(mps) - 1; i >= 0; i-- { // deepest (latest) first
		if err := syscall.Unmount(mps[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Logf("cleanup: unmount %s: %v", mps[i], err)
		}
	}
}

// leftovers reports processes and mounts the node test may have left: any
// process in the kubelet's pod cgroups (/kubepods), a kubelet or
// containerd of ours, and mounts under the kubelet's and containerd's roots.
func (h *host) leftovers() []string {
	var out []string
	kubelet := filepath.Join(h.tools, "kubelet")
	for _, pid := range pidsMatching(func(c string) bool {
		return strings.HasPrefix(c, kubelet+" ") || strings.Contains(c, ctrdSock)
	}) {
		out = append(out, fmt.Sprintf("process %d: %.120s", pid, cmdline(pid)))
	}
	for _, pid := range podPids() {
		out = append(out, fmt.Sprintf("process %d in a pod cgroup: %.120s", pid, cmdline(pid)))
	}
	for _, mp := range mountsUnder("/var/lib/kubelet", workRoot, runRoot, "/run/keywarden") {
		out = append(out, "mount "+mp)
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

func waitUntil(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(time.Second)
	}
}

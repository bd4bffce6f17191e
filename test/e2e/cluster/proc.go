package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is one child process in its own process group, its output appended
// to a log file that survives restarts.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error // set before done is closed
}

// startProc starts path with args. The child leads a new process group, so
// stop and kill reach anything it forks, and gets SIGKILL if the thread
// that started it (hence the test binary) dies.
func startProc(name, logPath, path string, args ...string) (*proc, error) {
	return startProcEnv(name, logPath, nil, path, args...)
}

// startProcEnv is startProc with env ("KEY=value") added to the test
// process's environment; a key given twice takes its last value.
func startProcEnv(name, logPath string, env []string, path string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "\n===== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), path, strings.Join(args, " "))
	cmd := exec.Command(path, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		// Anything left in the group (our children fork nothing, but be
		// sure) goes now, while the group id cannot have been reused.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		close(p.done)
	}()
	return p, nil
}

// Process is a child process that a test starts beside the harness's own
// (kube-controller-manager, say), handled exactly like them: see
// StartProcess.
type Process struct {
	// LogPath is the file its stdout and stderr are appended to.
	LogPath string
	p       *proc
}

// StartProcess starts path with args the way the harness starts etcd,
// keywarden and kube-apiserver: the child leads a new process group and
// gets SIGKILL from the kernel if the test binary dies (Pdeathsig), its
// output is appended to logPath, the tail of which is printed if the test
// fails, and at cleanup the whole group gets SIGTERM, then SIGKILL after
// 10 s, and is waited for. It fails the test if path cannot be started.
func StartProcess(t testing.TB, name, logPath, path string, args ...string) *Process {
	t.Helper()
	return StartProcessEnv(t, name, logPath, nil, path, args...)
}

// StartProcessEnv is StartProcess with env ("KEY=value") added to the test
// process's environment; a key given twice takes its last value, so
// "VAULT_ADDR=" clears one.
func StartProcessEnv(t testing.TB, name, logPath string, env []string, path string, args ...string) *Process {
	t.Helper()
	logOnFailure(t, name, logPath)
	p, err := startProcEnv(name, logPath, env, path, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(10 * time.Second) })
	return &Process{LogPath: logPath, p: p}
}

// StartDaemon starts path as StartProcess does (its own process group,
// Pdeathsig, output appended to logPath) but leaves stopping it to the
// caller: no t.Cleanup of its own, whose order against the caller's
// cleanups would be wrong for a daemon that must outlive them (the node
// test's containerd, which `kubeadm reset` needs at teardown).
func StartDaemon(name, logPath, path string, args ...string) (*Process, error) {
	p, err := startProc(name, logPath, path, args...)
	if err != nil {
		return nil, err
	}
	return &Process{LogPath: logPath, p: p}, nil
}

// Pid is the child's process id (and process group id).
func (p *Process) Pid() int { return p.p.Pid() }

// Exited reports whether the child has exited.
func (p *Process) Exited() bool { return p.p.exited() }

// Stop sends SIGTERM to the group, waits up to grace, then SIGKILLs it and
// waits for the child to be reaped.
func (p *Process) Stop(grace time.Duration) { p.p.stop(grace) }

// Pid is the child's process id (and process group id).
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// exited reports whether the child has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the child's whole process group.
func (p *proc) signal(sig syscall.Signal) {
	if p.exited() {
		return
	}
	if err := syscall.Kill(-p.Pid(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = p.cmd.Process.Signal(sig)
	}
}

// stop sends SIGTERM to the group, waits up to grace, then SIGKILLs it and
// waits for the child to be reaped.
func (p *proc) stop(grace time.Duration) {
	if p == nil {
		return
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// kill sends SIGKILL to the group and waits for the child to be reaped.
func (p *proc) kill() {
	if p == nil {
		return
	}
	p.signal(syscall.SIGKILL)
	<-p.done
}

// Tail returns the last n lines of a log file.
func Tail(path string, n int) string { return tail(path, n) }

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 2*n {
			lines = append(lines[:0], lines[len(lines)-n:]...)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// workDir makes a short-named temporary directory (socket paths must stay
// under 108 bytes, and t.TempDir embeds the test name). At cleanup it is
// removed, unless the test failed or KEYWARDEN_E2E_KEEP is set: then its
// path is logged for inspection.
func workDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kwe2e-"+prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("KEYWARDEN_E2E_KEEP") != "" {
			t.Logf("kept %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

// reservedPorts avoids handing out one port twice in one test binary: a
// port is freed by closing its listener, and the process meant to bind it
// may not have started yet. portLocks holds the lock files of those ports
// open, so other test binaries skip them, until this process exits.
var (
	portsMu       sync.Mutex
	reservedPorts = map[int]bool{}
	portLocks     []*os.File
)

// FreePort returns a loopback TCP port for a process a test starts: one that
// nothing listens on now, that this process has not handed out before, that
// no other test binary on this machine holds (a lock file under the temp
// directory, held until this process exits), and below the kernel's
// ephemeral range, so that no outgoing connection is given it as its source
// port before the process binds it. make test runs several test binaries at
// once; a port found by listening on :0 and closing, in that range, was
// bound by someone else before etcd's peer listener could take it
// (2026-12-06, "bind: address already in use").
func FreePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	lo, hi := portRange()
	for range 1000 {
		port := lo + rand.IntN(hi-lo)
		if reservedPorts[port] {
			continue
		}
		lock, ok := lockPort(port)
		if !ok {
			continue
		}
		l, err := net.Listen("tcp", hostPort(port))
		if err != nil {
			_ = lock.Close()
			continue
		}
		_ = l.Close()
		reservedPorts[port] = true
		portLocks = append(portLocks, lock)
		return port, nil
	}
	return 0, fmt.Errorf("no free loopback port in [%d, %d)", lo, hi)
}

// portRange: from 20000 (above the ports a kubeadm node binds: 2379-2381,
// 6443, 10248-10259) to the start of the ephemeral range
// (net.ipv4.ip_local_port_range, 32768 by default).
func portRange() (lo, hi int) {
	lo, hi = 20000, 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > lo+1000 {
				hi = n
			}
		}
	}
	return lo, hi
}

// lockPort takes an exclusive, non-blocking flock on the port's file in a
// folder of this user's under the temp directory; the kernel drops it when
// the file is closed or the process ends.
func lockPort(port int) (*os.File, bool) {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("keywarden-test-ports-%d", os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, false
	}
	return f, true
}

func mustPort(t testing.TB) int {
	t.Helper()
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// logOnFailure registers a cleanup that prints the tail of a log file when
// the test failed. Registered before the process's own stop cleanup, it runs
// after it (cleanups run last-in first-out), so the tail includes shutdown.
func logOnFailure(t testing.TB, name, path string) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- last lines of %s (%s):\n%s", name, path, tail(path, 40))
		}
	})
}

func abs(path string) string {
	a, err := filepath.Abs(path)
	if err != nil {
		return path
	}
	return a
}

package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keywarden/keywarden/bench/lab"
)

// Process is a KMS v2 server running as its own process: the floor,
// keywarden or the lab server.
type Process struct {
	Name   string
	Socket string
	// HTTP is the host:port of its metrics endpoint, if it has one.
	HTTP string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartProcess starts bin with args, logging to log, and waits until it
// answers KMS v2 Status on socket.
func StartProcess(ctx context.Context, name, socket, httpAddr string, log io.Writer, bin string, args ...string) (*Process, error) {
	return StartProcessEnv(ctx, name, socket, httpAddr, nil, log, bin, args...)
}

// StartProcessEnv is StartProcess with env (KEY=value) added to this
// process's environment: what a keystore needs (SOFTHSM2_CONF, the
// credentials of an emulator).
func StartProcessEnv(ctx context.Context, name, socket, httpAddr string, env []string, log io.Writer, bin string, args ...string) (*Process, error) {
	cmd := exec.Command(bin, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, and killed if we die, so no server outlives
	// a benchmark.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Socket: socket, HTTP: httpAddr, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited before serving: %v", name, p.err)
		case <-ctx.Done():
			_ = p.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if _, err := os.Stat(socket); err != nil {
			if time.Now().After(deadline) {
				_ = p.Stop()
				return nil, fmt.Errorf("%s: no socket at %s after 20s", name, socket)
			}
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := Dial(dctx, socket, 1)
		cancel()
		if err == nil {
			_ = c.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			_ = p.Stop()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM (keywarden drains in-flight RPCs), then SIGKILL after
// five seconds, and waits.
func (p *Process) Stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
		<-p.done
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return fmt.Errorf("%s: %w", p.Name, p.err)
	}
	return nil
}

// Memory is a process's resident memory, from /proc/PID/status.
type Memory struct {
	RSS int64 `json:"vm_rss_kib"` // VmRSS now
	HWM int64 `json:"vm_hwm_kib"` // VmHWM: the peak so far
	// VmRSS split: anonymous memory (heap, stacks: what the process
	// allocated) and file-backed pages (mostly the executable's own code
	// and data, shared with the page cache).
	Anon int64 `json:"rss_anon_kib"`
	File int64 `json:"rss_file_kib"`
}

// ReadMemory reads VmRSS and VmHWM of pid.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return Memory{}, err
	}
	return parseStatus(b)
}

func parseStatus(b []byte) (Memory, error) {
	var m Memory
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		case "RssAnon":
			dst = &m.Anon
		case "RssFile":
			dst = &m.File
		default:
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("unexpected %s line %q", k, sc.Text())
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("%s: %w", k, err)
		}
		*dst = n
		if dst == &m.RSS || dst == &m.HWM {
			found++
		}
	}
	if found != 2 {
		return m, errors.New("VmRSS or VmHWM missing from /proc status")
	}
	return m, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// ReadCPU returns the user+system CPU time pid has used, from
// /proc/PID/stat (10 ms resolution).
func ReadCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStat(b)
}

func parseStat(b []byte) (time.Duration, error) {
	// The command name (field 2) may hold spaces and parentheses: count
	// fields after its closing parenthesis. utime and stime are fields 14
	// and 15, so the 12th and 13th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// SelfCPU returns the user+system CPU time this process has used.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// MiB converts KiB to MiB.
func MiB(kib int64) float64 { return float64(kib) / 1024 }

// RSSSampler samples a process's VmRSS until stopped and keeps the maximum.
type RSSSampler struct {
	stop chan struct{}
	done chan int64
}

// SampleRSS starts sampling pid every interval.
func SampleRSS(pid int, interval time.Duration) *RSSSampler {
	s := &RSSSampler{stop: make(chan struct{}), done: make(chan int64, 1)}
	go func() {
		var peak int64
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if m, err := ReadMemory(pid); err == nil {
				peak = max(peak, m.RSS)
			}
			select {
			case <-s.stop:
				s.done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop ends sampling and returns the largest VmRSS seen, in KiB.
func (s *RSSSampler) Stop() int64 {
	close(s.stop)
	return <-s.done
}

// FetchSpy reads a lab server's keystore call counters.
func FetchSpy(ctx context.Context, hostport string) (lab.SpyCounts, error) {
	var c lab.SpyCounts
	b, err := get(ctx, "http://"+hostport+"/spy")
	if err != nil {
		return c, err
	}
	return c, json.Unmarshal(b, &c)
}

// FetchKeystoreCalls reads keywarden's /metrics and returns how many
// keystore operations op ("unwrap", "wrap") it has observed, whatever their
// result.
func FetchKeystoreCalls(ctx context.Context, hostport, op string) (int64, error) {
	b, err := get(ctx, "http://"+hostport+"/metrics")
	if err != nil {
		return 0, err
	}
	return keystoreCalls(b, op)
}

func keystoreCalls(metrics []byte, op string) (int64, error) {
	const name = "keywarden_keystore_operation_duration_seconds_count{"
	var total int64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(metrics))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || !strings.Contains(rest, `op="`+op+`"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		total += int64(v)
		found = true
	}
	if !found {
		return 0, nil // no call of that kind yet
	}
	return total, nil
}

func get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

package faults

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
)

// The flags every keywarden of the matrix runs with (docs/reliability.md
// says them too): short, so that a fault shows within a second.
const (
	checkInterval   = 250 * time.Millisecond
	keystoreTimeout = 4 * time.Second
	// grace: the matrix records Status after the grace, so it is tiny.
	grace = time.Millisecond
	// keyIDTTL is the remote keystores' key-id-ttl: every check reaches the
	// keystore.
	keyIDTTL = 200 * time.Millisecond
	// revalidateInterval: every check also asks whether the root versions
	// of the KEKs in memory may still be used, so a disabled or deleted
	// version shows in the cells that follow.
	revalidateInterval = checkInterval
	// callTimeout is kube-apiserver's deadline on every KMS call.
	callTimeout = 3 * time.Second
	// startTimeout bounds how long start-up may take before the cell says
	// so.
	startTimeout = 30 * time.Second
)

func keywardenArgs() []string {
	return []string{
		"--check-interval", checkInterval.String(),
		"--keystore-timeout", keystoreTimeout.String(),
		"--keystore-grace", grace.String(),
		"--kek-revalidate-interval", revalidateInterval.String(),
		"--log-format", "text",
	}
}

// target is a keywarden to measure: its socket's client and its HTTP
// endpoints.
type target struct {
	client  kmsapi.KeyManagementServiceClient
	httpURL string // http://127.0.0.1:port
}

// plugin is a keywarden process.
type plugin struct {
	target
	cmd    *exec.Cmd
	sock   string
	logs   *syncBuffer
	exited chan struct{}
	err    error // after exited
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// launch starts keywarden on uri with stateFile and does not wait for it.
func launch(t *testing.T, uri, stateFile string) *plugin {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	p := &plugin{sock: filepath.Join(dir, "run", "kms.sock"), logs: &syncBuffer{}, exited: make(chan struct{})}
	p.httpURL = "http://" + addr
	args := append([]string{"--listen", "unix://" + p.sock, "--keystore", uri, "--metrics-addr", addr, "--state-file", stateFile}, keywardenArgs()...)
	p.cmd = exec.Command(keywardenBin, args...)
	p.cmd.Stderr = p.logs
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("keywarden log:\n%s", p.logs.String())
		}
	})
	conn, err := grpc.NewClient("unix://"+p.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.client = kmsapi.NewKeyManagementServiceClient(conn)
	return p
}

// serving waits until the socket accepts a connection, the process exits,
// or the deadline passes.
func (p *plugin) serving(deadline time.Time) error {
	for {
		if c, err := net.Dial("unix", p.sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("exited: %v", p.err)
		default:
		}
		if time.Now().After(deadline) {
			return errNotServing
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errNotServing = errors.New("not serving")

// start launches keywarden and waits until it serves.
func start(t *testing.T, uri, stateFile string) *plugin {
	t.Helper()
	p := launch(t, uri, stateFile)
	if err := p.serving(time.Now().Add(startTimeout)); err != nil {
		t.Fatalf("keywarden on %s: %v\n%s", redact(uri), err, p.logs.String())
	}
	return p
}

// stop ends the process with SIGTERM (it drains), or SIGKILL after 5 s.
func (p *plugin) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// ---- calls, as kube-apiserver makes them ----

// outcome is one call's gRPC code and how long it took.
type outcome struct {
	code codes.Code
	d    time.Duration
}

func (o outcome) String() string {
	if o.code == codes.DeadlineExceeded && o.d >= callTimeout-100*time.Millisecond && o.d < callTimeout+time.Second {
		return fmt.Sprintf("DeadlineExceeded timeout(%s)", callTimeout)
	}
	return o.code.String() + " " + bucket(o.d)
}

// bucket names a duration coarsely enough that scheduling noise on a
// loaded machine cannot move it: a fast answer, about one keystore
// timeout, about the injected latency, and so on.
func bucket(d time.Duration) string {
	for _, b := range []struct {
		below time.Duration
		name  string
	}{
		{time.Second, "<1s"},
		{2500 * time.Millisecond, "~2s"},
		{3500 * time.Millisecond, "~3s"},
		{5 * time.Second, "~4s"},
		{8 * time.Second, "~6s"},
		{13 * time.Second, "~10s"},
		{30 * time.Second, "~20s"},
	} {
		if d < b.below {
			return b.name
		}
	}
	return ">30s"
}

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

var seed = bytes.Repeat([]byte{0x5e}, 32)

func (tg target) encrypt() (*kmsapi.EncryptResponse, outcome) {
	ctx, cancel := callCtx()
	defer cancel()
	start := time.Now()
	resp, err := tg.client.Encrypt(ctx, &kmsapi.EncryptRequest{Uid: "faults-encrypt", Plaintext: seed})
	return resp, outcome{status.Code(err), time.Since(start)}
}

func decryptRequest(r *kmsapi.EncryptResponse) *kmsapi.DecryptRequest {
	return &kmsapi.DecryptRequest{Uid: "faults-decrypt", Ciphertext: r.Ciphertext, KeyId: r.KeyId, Annotations: r.Annotations}
}

func (tg target) decrypt(req *kmsapi.DecryptRequest) outcome {
	ctx, cancel := callCtx()
	defer cancel()
	start := time.Now()
	pt, err := tg.client.Decrypt(ctx, req)
	o := outcome{status.Code(err), time.Since(start)}
	if err == nil && !bytes.Equal(pt.Plaintext, seed) {
		o.code = codes.DataLoss // never expected: the cell would show it
	}
	return o
}

// status is the Status RPC's healthz as the apiserver reads it: "ok", or
// the reason with its timestamp cut off.
func (tg target) status() string {
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := tg.client.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		return status.Code(err).String()
	}
	if resp.Healthz == "ok" {
		return "ok"
	}
	reason, _, _ := strings.Cut(resp.Healthz, " since ")
	return "not ok: " + reason
}

var httpClient = &http.Client{Timeout: callTimeout}

// readyz is /readyz's HTTP status.
func (tg target) readyz() string {
	resp, err := httpClient.Get(tg.httpURL + "/readyz")
	if err != nil {
		return "no answer"
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return strconv.Itoa(resp.StatusCode)
}

// checks counts the keystore checks keywarden has finished (the key_id
// reads of its check loop), all and failed, from /metrics.
func (tg target) checks() (all, failed int) {
	resp, err := httpClient.Get(tg.httpURL + "/metrics")
	if err != nil {
		return -1, -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "keywarden_keystore_operation_duration_seconds_count{") || !strings.Contains(line, `op="key_id"`) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		n, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		all += int(n)
		if !strings.Contains(line, `result="ok"`) {
			failed += int(n)
		}
	}
	return all, failed
}

// afterChecks waits until the check loop has seen what the keystore is
// like now: a failed check since (all0, failed0), or two finished ones
// (so one began after the fault). It gives up after two keystore timeouts
// and two intervals; the cells then show what keywarden had seen.
func (tg target) afterChecks(all0, failed0 int) {
	deadline := time.Now().Add(2*keystoreTimeout + 2*checkInterval)
	for time.Now().Before(deadline) {
		all, failed := tg.checks()
		if failed > failed0 || all >= all0+2 {
			// One more interval, so that what follows the check (health,
			// a new KEK) is in place.
			time.Sleep(checkInterval / 2)
			return
		}
		time.Sleep(checkInterval / 5)
	}
}

// Package integration builds the real keywarden and kmsctl binaries, runs
// keywarden as its own process, and talks KMS v2 to it over its unix socket,
// as kube-apiserver does.
package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keywarden-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/keywarden/keywarden/cmd/...")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func kmsctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "kmsctl"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kmsctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type plugin struct {
	cmd     *exec.Cmd
	sock    string
	metrics string
	logs    *bytes.Buffer
	client  kmsapi.KeyManagementServiceClient
	exited  chan struct{} // closed when the process has exited
	waitErr error         // valid after exited is closed
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs keywarden on sock (a fresh temp path if empty).
func start(t *testing.T, keystore, sock string, extra ...string) *plugin {
	t.Helper()
	if sock == "" {
		sock = filepath.Join(t.TempDir(), "run", "kms.sock")
	}
	p := &plugin{sock: sock, metrics: freeAddr(t), logs: new(bytes.Buffer), exited: make(chan struct{})}
	args := append([]string{"--listen", "unix://" + p.sock, "--keystore", keystore, "--metrics-addr", p.metrics,
		"--check-interval", "1s", "--log-level", "debug"}, extra...)
	p.cmd = exec.Command(filepath.Join(binDir, "keywarden"), args...)
	// exec copies stdout and stderr into p.logs (one writer: one Write at a
	// time); Wait returns only when the copy is done.
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", p.sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keywarden did not listen on %s", p.sock)
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+p.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.client = kmsapi.NewKeyManagementServiceClient(conn)
	return p
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func newKeyset(t *testing.T) (path, uri string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "keyset.json")
	uri = "file://" + path
	kmsctl(t, "keys", "init", "--keystore", uri)
	return path, uri
}

func TestServerRoundTripAndRotation(t *testing.T) {
	_, uri := newKeyset(t)
	p := start(t, uri, "")

	st, err := p.client.Status(ctx(t), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "v2" || st.Healthz != "ok" || st.KeyId == "" {
		t.Fatalf("Status = %v", st)
	}
	fi, err := os.Stat(p.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(p.sock)); di.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %04o, want 0700", di.Mode().Perm())
	}

	seed := make([]byte, 32)
	_, _ = rand.Read(seed)
	enc, err := p.client.Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: seed, Uid: "it-uid-1"})
	if err != nil {
		t.Fatal(err)
	}
	if enc.KeyId != st.KeyId {
		t.Fatalf("Encrypt key_id %q != Status %q", enc.KeyId, st.KeyId)
	}
	dec, err := p.client.Decrypt(ctx(t), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations, Uid: "it-uid-2"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dec.Plaintext, seed) {
		t.Fatal("round trip over the socket changed the seed")
	}

	// Rotate the keyset under the running plugin with kmsctl.
	var added []struct{ KeyID string }
	if err := json.Unmarshal([]byte(kmsctl(t, "keys", "add", "--keystore", uri, "-o", "json")), &added); err != nil || len(added) != 1 {
		t.Fatalf("keys add output: %v %v", added, err)
	}
	kmsctl(t, "keys", "promote", "--keystore", uri, "--yes", added[0].KeyID)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st2, err := p.client.Status(ctx(t), &kmsapi.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st2.KeyId == added[0].KeyID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Status key_id still %q 10 s after promotion of %q", st2.KeyId, added[0].KeyID)
		}
		time.Sleep(200 * time.Millisecond)
	}
	enc2, err := p.client.Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: seed, Uid: "it-uid-3"})
	if err != nil {
		t.Fatal(err)
	}
	if enc2.KeyId != added[0].KeyID {
		t.Fatalf("Encrypt after rotation used %q, want %q", enc2.KeyId, added[0].KeyID)
	}
	for _, e := range []*kmsapi.EncryptResponse{enc, enc2} {
		d, err := p.client.Decrypt(ctx(t), &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Annotations: e.Annotations, Uid: "it"})
		if err != nil || !bytes.Equal(d.Plaintext, seed) {
			t.Fatalf("Decrypt under %s after rotation: %v", e.KeyId, err)
		}
	}

	// kmsctl check agrees.
	kmsctl(t, "check", "--socket", "unix://"+p.sock)

	// Hostile requests over the wire get real codes, and the server lives.
	hostile := []struct {
		name  string
		req   *kmsapi.DecryptRequest
		codes []codes.Code
	}{
		{"empty", &kmsapi.DecryptRequest{}, []codes.Code{codes.InvalidArgument}},
		{"tampered", &kmsapi.DecryptRequest{Ciphertext: flip(enc.Ciphertext, 20), KeyId: enc.KeyId, Annotations: enc.Annotations}, []codes.Code{codes.InvalidArgument}},
		{"wrong key_id", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc2.KeyId, Annotations: enc.Annotations}, []codes.Code{codes.InvalidArgument}},
		// Over the gRPC message cap: refused by the transport before our code.
		{"8 MiB", &kmsapi.DecryptRequest{Ciphertext: make([]byte, 8<<20), KeyId: enc.KeyId}, []codes.Code{codes.ResourceExhausted}},
		// Under the cap but far over our bounds.
		{"200 KiB", &kmsapi.DecryptRequest{Ciphertext: append([]byte{1}, make([]byte, 200<<10)...), KeyId: enc.KeyId, Annotations: enc.Annotations}, []codes.Code{codes.InvalidArgument}},
	}
	for _, h := range hostile {
		_, err := p.client.Decrypt(ctx(t), h.req, grpc.MaxCallSendMsgSize(16<<20))
		got := status.Code(err)
		ok := false
		for _, c := range h.codes {
			ok = ok || got == c
		}
		if !ok {
			t.Fatalf("%s: code %v (%v), want one of %v", h.name, got, err, h.codes)
		}
	}
	if _, err := p.client.Status(ctx(t), &kmsapi.StatusRequest{}); err != nil {
		t.Fatalf("server not answering after hostile input: %v", err)
	}

	// Metrics and health over HTTP.
	body := httpGet(t, "http://"+p.metrics+"/metrics")
	for _, want := range []string{
		`keywarden_grpc_server_handled_total{grpc_code="OK",grpc_method="Encrypt"`,
		`keywarden_grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Decrypt"`,
		`keywarden_keystore_operation_duration_seconds_count{backend="file",op="wrap",result="ok"}`,
		`keywarden_kek_generations_total{reason="root_rotation"} 1`,
		`keywarden_healthy 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if got := httpGet(t, "http://"+p.metrics+"/readyz"); strings.TrimSpace(got) != "ok" {
		t.Fatalf("/readyz = %q", got)
	}

	// SIGTERM: clean exit, socket removed; logs carry uids, never the seed.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
		if p.waitErr != nil {
			t.Fatalf("exit after SIGTERM: %v", p.waitErr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit 20 s after SIGTERM")
	}
	if _, err := os.Lstat(p.sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	logs := p.logs.String()
	if !strings.Contains(logs, `"uid":"it-uid-2"`) {
		t.Errorf("request uid not logged:\n%s", logs)
	}
	if strings.Contains(logs, fmt.Sprintf("%x", seed)) || bytes.Contains(p.logs.Bytes(), seed) {
		t.Fatal("seed reached the log")
	}
}

func TestRefusesLooseKeysetAndForeignSocketFile(t *testing.T) {
	path, uri := newKeyset(t)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(binDir, "keywarden"), "--listen", "unix://"+filepath.Join(t.TempDir(), "k.sock"), "--keystore", uri, "--metrics-addr", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "chmod 600") {
		t.Fatalf("keyset 0644 accepted or unclear error: %v\n%s", err, out)
	}
	_ = os.Chmod(path, 0o600)
	dir := t.TempDir()
	_ = os.Chmod(dir, 0o700)
	notSock := filepath.Join(dir, "kms.sock")
	if err := os.WriteFile(notSock, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(filepath.Join(binDir, "keywarden"), "--listen", "unix://"+notSock, "--keystore", uri, "--metrics-addr", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a socket") {
		t.Fatalf("regular file at socket path replaced or unclear error: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(notSock); string(b) != "precious" {
		t.Fatal("file at the socket path was touched")
	}
}

func TestStaleSocketReplacedAndVersion(t *testing.T) {
	_, uri := newKeyset(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "kms.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file nobody serves: what a crash leaves
	p := start(t, uri, sock)
	if _, err := p.client.Status(ctx(t), &kmsapi.StatusRequest{}); err != nil {
		t.Fatalf("Status after replacing stale socket: %v", err)
	}
	out, err := exec.Command(filepath.Join(binDir, "keywarden"), "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "keywarden ") {
		t.Fatalf("--version: %v %q", err, out)
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestHealthAddr: --health-addr serves the health endpoints alone, beside
// --metrics-addr, so the static pod's probes keep a loopback address of
// their own when --metrics-addr moves to the node's address (issue 12).
func TestHealthAddr(t *testing.T) {
	_, uri := newKeyset(t)
	health := freeAddr(t)
	p := start(t, uri, "", "--health-addr", health)
	get := func(url string) (int, string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get(url)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return resp.StatusCode, string(b)
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %v", url, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, path := range []string{"/healthz", "/livez", "/readyz"} {
		if code, body := get("http://" + health + path); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
			t.Errorf("--health-addr %s: %d %q, want 200 ok", path, code, body)
		}
		if code, _ := get("http://" + p.metrics + path); code != http.StatusOK {
			t.Errorf("--metrics-addr %s: %d, want 200 (health stays there too)", path, code)
		}
	}
	if code, _ := get("http://" + health + "/metrics"); code != http.StatusNotFound {
		t.Errorf("--health-addr /metrics: %d, want 404 (health alone)", code)
	}
	if code, body := get("http://" + p.metrics + "/metrics"); code != http.StatusOK || !strings.Contains(body, "keywarden_healthy") {
		t.Errorf("--metrics-addr /metrics: %d, no keywarden_healthy", code)
	}

	// A --health-addr that cannot be bound stops start-up with its flag named.
	out, err := exec.Command(filepath.Join(binDir, "keywarden"), "--listen", "unix://"+filepath.Join(t.TempDir(), "k.sock"),
		"--keystore", uri, "--metrics-addr", "", "--health-addr", health).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--health-addr") {
		t.Fatalf("a taken --health-addr: %v\n%s", err, out)
	}
}

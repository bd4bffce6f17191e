package kmsgrpc_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/kms/kmsgrpc"
	"github.com/keywarden/keywarden/metrics"
)

// svc answers Encrypt, refuses Decrypt, and panics on a magic plaintext.
type svc struct{}

func (svc) Status(context.Context) (*service.StatusResponse, error) {
	return &service.StatusResponse{Version: "v2", Healthz: "ok", KeyID: "k"}, nil
}

func (svc) Encrypt(_ context.Context, _ string, pt []byte) (*service.EncryptResponse, error) {
	if string(pt) == "panic-plaintext" {
		panic("boom")
	}
	return &service.EncryptResponse{Ciphertext: append([]byte("ct:"), pt...), KeyID: "k"}, nil
}

func (svc) Decrypt(ctx context.Context, uid string, _ *service.DecryptRequest) ([]byte, error) {
	if uid == "hang" { // a keystore that never answers
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return nil, status.Error(codes.InvalidArgument, "bad ciphertext")
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// Over a real unix socket: every RPC is counted by method and code and
// timed, failures are logged with the request uid and never the
// plaintext, and a panicking handler answers Internal while the server
// keeps serving.
func TestServer(t *testing.T) {
	dir, err := os.MkdirTemp("", "kmsgrpc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kms.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	var logs syncBuf
	srv := kmsgrpc.NewServer(svc{}, kmsgrpc.Options{Metrics: m,
		Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := kmsapi.NewKeyManagementServiceClient(conn)
	ctx := context.Background()

	for range 3 {
		if _, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Uid: "uid-ok", Plaintext: []byte("secret-plaintext")}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "uid-bad", Ciphertext: []byte("x"), KeyId: "k"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Decrypt: %v, want InvalidArgument", err)
	}
	_, err = c.Encrypt(ctx, &kmsapi.EncryptRequest{Uid: "uid-panic", Plaintext: []byte("panic-plaintext")})
	if status.Code(err) != codes.Internal {
		t.Fatalf("panicking Encrypt: %v, want Internal", err)
	}
	if _, err := c.Status(ctx, &kmsapi.StatusRequest{}); err != nil {
		t.Fatalf("server stopped serving after a panic: %v", err)
	}

	for _, w := range []struct {
		method, code string
		want         float64
	}{
		{"Encrypt", "OK", 3}, {"Encrypt", "Internal", 1}, {"Decrypt", "InvalidArgument", 1},
		{"Decrypt", "OK", 0}, {"Status", "OK", 1},
	} {
		got := sample(t, m, "keywarden_grpc_server_handled_total", map[string]string{
			"grpc_type": "unary", "grpc_service": "v2.KeyManagementService", "grpc_method": w.method, "grpc_code": w.code})
		if got != w.want {
			t.Errorf("handled_total{%s,%s} = %v, want %v", w.method, w.code, got, w.want)
		}
	}
	if got := sample(t, m, "keywarden_grpc_server_started_total", map[string]string{"grpc_method": "Encrypt"}); got != 4 {
		t.Errorf("started_total{Encrypt} = %v, want 4", got)
	}
	if got := sample(t, m, "keywarden_grpc_server_handling_seconds", map[string]string{"grpc_method": "Decrypt"}); got != 1 {
		t.Errorf("handling_seconds{Decrypt} count = %v, want 1", got)
	}
	out := logs.String()
	for _, want := range []string{`"uid":"uid-bad"`, `"code":"InvalidArgument"`, `"uid":"uid-panic"`, `"panic in RPC handler"`, `"level":"ERROR"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "plaintext\"") || strings.Contains(out, "secret-plaintext") || strings.Contains(out, "panic-plaintext") {
		t.Errorf("plaintext in the log:\n%s", out)
	}
}

// The caller's deadline is the bound on every call: it reaches the service
// over the socket, and a call into a service that never answers ends with
// DeadlineExceeded when the caller's time is up, not later.
func TestCallerDeadlineBoundsEachCall(t *testing.T) {
	dir, err := os.MkdirTemp("", "kmsgrpc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kms.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	srv := kmsgrpc.NewServer(svc{}, kmsgrpc.Options{Metrics: m})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := kmsapi.NewKeyManagementServiceClient(conn)

	const bound = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	start := time.Now()
	_, err = c.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "hang", Ciphertext: []byte("x"), KeyId: "k"})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Decrypt into a hung service: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > bound+2*time.Second {
		t.Fatalf("Decrypt returned after %v, past the caller's %v", d, bound)
	}
	// The handler itself returned once the caller's time was up (the
	// server records Canceled or DeadlineExceeded, whichever of the
	// client's reset and the server's own timer came first) rather than
	// running on after the caller left.
	deadline := time.Now().Add(5 * time.Second)
	for sum(m, "keywarden_grpc_server_handled_total", "Decrypt") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the hung handler did not return after the caller's deadline")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sum adds the counters of name for method over every code.
func sum(m *metrics.Metrics, name, method string) float64 {
	mfs, _ := m.Registry.Gather()
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "grpc_method" && l.GetValue() == method {
					n += s.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// sample returns the value (a histogram's count) of the one series of name
// whose labels include want.
func sample(t *testing.T, m *metrics.Metrics, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var found []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue series
				}
			}
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, want, len(found))
	}
	if h := found[0].GetHistogram(); h != nil {
		return float64(h.GetSampleCount())
	}
	return found[0].GetCounter().GetValue()
}

// BenchmarkInterceptor is the interceptor's own cost on a successful call
// with logging at info (the shipped default): what every Encrypt and
// Decrypt pays on top of the service.
func BenchmarkInterceptor(b *testing.B) {
	ic := kmsgrpc.Interceptor(metrics.New(), slog.New(slog.NewJSONHandler(&syncBuf{}, nil)))
	info := &grpc.UnaryServerInfo{FullMethod: "/v2.KeyManagementService/Decrypt"}
	req := &kmsapi.DecryptRequest{Uid: "u"}
	handler := func(context.Context, any) (any, error) { return req, nil }
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ic(ctx, req, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}

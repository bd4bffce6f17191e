package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/keystore/file"
)

func TestKeystoreFlagRepeated(t *testing.T) {
	o, err := parseFlags([]string{"--keystore", "file:///a", "--keystore=file:///b"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.keystores, []string{"file:///a", "file:///b"}) {
		t.Fatalf("keystores = %q, want them in order", o.keystores)
	}
	for name, args := range map[string][]string{
		"twice": {"--keystore", "file:///a", "--keystore", "file:///a"},
		"empty": {"--keystore", ""},
		"five":  {"--keystore", "file:///1", "--keystore", "file:///2", "--keystore", "file:///3", "--keystore", "file:///4", "--keystore", "file:///5"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Fatalf("%s: accepted", name)
		}
	}
}

// keywarden started with two --keystore flags serves a several-roots
// key_id, and round-trips through the socket.
func TestRunTwoKeystores(t *testing.T) {
	dir := t.TempDir()
	var uris []string
	for _, n := range []string{"a.json", "b.json"} {
		p := filepath.Join(dir, n)
		if _, err := file.Init(p); err != nil {
			t.Fatal(err)
		}
		uris = append(uris, "file://"+p)
	}
	sock := filepath.Join(dir, "run", "kms.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stderr syncBuffer
	go func() {
		done <- run(ctx, []string{"--listen", "unix://" + sock, "--metrics-addr", "", "--keystore", uris[0], "--keystore", uris[1]}, io.Discard, &stderr)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := kmsapi.NewKeyManagementServiceClient(conn)
	var st *kmsapi.StatusResponse
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		st, err = c.Status(cctx, &kmsapi.StatusRequest{})
		ccancel()
		if err == nil || time.Since(start) > 10*time.Second {
			break
		}
	}
	if err != nil {
		t.Fatalf("Status: %v\n%s", err, stderr.String())
	}
	if st.Healthz != "ok" || !regexp.MustCompile(`^roots:2:[0-9a-f]{64}$`).MatchString(st.KeyId) {
		t.Fatalf("Status = %v", st)
	}
	enc, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: bytes.Repeat([]byte{1}, 32), Uid: "test"})
	if err != nil || enc.KeyId != st.KeyId {
		t.Fatalf("Encrypt: %v (%v)", enc, err)
	}
	dec, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations, Uid: "test"})
	if err != nil || !bytes.Equal(dec.Plaintext, bytes.Repeat([]byte{1}, 32)) {
		t.Fatalf("Decrypt: %v", err)
	}
	if !strings.Contains(stderr.String(), `"keystore":"file,file"`) {
		t.Fatalf("start-up log does not name both keystores:\n%s", stderr.String())
	}
}

// syncBuffer is a bytes.Buffer that run's logger and the test may use at
// once.
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

// With several roots, one that does not open (here a keyset file that is
// not there) does not stop keywarden: it serves, unhealthy, and logs why.
// With one root the same failure is fatal, as it always was.
func TestRunRootDoesNotOpen(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	if _, err := file.Init(good); err != nil {
		t.Fatal(err)
	}
	missing := "file://" + filepath.Join(dir, "missing.json")
	if err := run(context.Background(), []string{"--listen", "unix://" + filepath.Join(dir, "one.sock"), "--metrics-addr", "", "--keystore", missing}, io.Discard, io.Discard); err == nil {
		t.Fatal("one root that does not open: run did not fail")
	}
	sock := filepath.Join(dir, "run", "kms.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stderr syncBuffer
	go func() {
		done <- run(ctx, []string{"--listen", "unix://" + sock, "--metrics-addr", "", "--keystore", missing, "--keystore", "file://" + good}, io.Discard, &stderr)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := kmsapi.NewKeyManagementServiceClient(conn)
	var st *kmsapi.StatusResponse
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("run returned %v with the second root fine\n%s", err, stderr.String())
		default:
		}
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		st, err = c.Status(cctx, &kmsapi.StatusRequest{})
		ccancel()
		if err == nil || time.Since(start) > 10*time.Second {
			break
		}
	}
	if err != nil {
		t.Fatalf("Status: %v\n%s", err, stderr.String())
	}
	if st.Healthz == "ok" || st.KeyId != "" {
		t.Fatalf("Status = %v; want not ok and no key_id (no KEK can be made without every root, and there is no state file)", st)
	}
	if !strings.Contains(stderr.String(), "root keystore did not open") {
		t.Fatalf("log does not say the root did not open:\n%s", stderr.String())
	}
}

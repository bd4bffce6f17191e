// Package etcdtest gives tests a real etcd: the binary the e2e suite
// downloads (make e2e-tools), run as a throwaway single member, and the
// values a real kube-apiserver wrote to put in it. For tests only; no
// production package imports it.
package etcdtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// root is the module's root directory, found from this file's path so that
// tests in any package find the same files.
func root(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("etcdtest: cannot locate the module root")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Start runs the e2e suite's etcd ($KEYWARDEN_E2E_TOOLS_DIR, else
// test/e2e/tools/bin) on free loopback ports with its data in a temporary
// directory, and returns its client URL and a client; both end with the
// test. It skips the test when there is no etcd binary, or fails it when
// $KEYWARDEN_REQUIRE_ETCD is set (CI sets it).
func Start(t testing.TB) (string, *clientv3.Client) {
	t.Helper()
	dir := os.Getenv("KEYWARDEN_E2E_TOOLS_DIR")
	if dir == "" {
		dir = filepath.Join(root(t), "test", "e2e", "tools", "bin")
	}
	bin := filepath.Join(dir, "etcd")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("KEYWARDEN_REQUIRE_ETCD") != "" {
			t.Fatalf("no etcd binary at %s (make e2e-tools), and KEYWARDEN_REQUIRE_ETCD is set", bin)
		}
		t.Skipf("no etcd binary at %s (make e2e-tools)", bin)
	}
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", port()), fmt.Sprintf("http://127.0.0.1:%d", port())
	cmd := exec.Command(bin, "--data-dir", t.TempDir(), "--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "default="+peer, "--log-level", "error")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Get(ctx, "health")
		cancel()
		if err == nil {
			return client, c
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not start: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// GoldenValues returns the values kube-apiserver 1.37.2 wrote to etcd, by
// key (internal/stored/testdata/golden-apiserver-v1.37.2.json): KMS v2
// values under two root keys, aescbc and identity ones.
func GoldenValues(t testing.TB) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), "internal", "stored", "testdata", "golden-apiserver-v1.37.2.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Values []struct {
			Key   string
			Value []byte
		}
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, v := range doc.Values {
		m[v.Key] = v.Value
	}
	return m
}

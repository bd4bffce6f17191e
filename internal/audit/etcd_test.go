package audit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// realEtcd starts the e2e suite's etcd binary ($KEYWARDEN_E2E_TOOLS_DIR or
// test/e2e/tools/bin), or skips.
func realEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	dir := os.Getenv("KEYWARDEN_E2E_TOOLS_DIR")
	if dir == "" {
		dir = "../../test/e2e/tools/bin"
	}
	bin := filepath.Join(dir, "etcd")
	if _, err := os.Stat(bin); err != nil {
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
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if _, err := c.Get(ctx, "health"); err == nil {
			return c
		}
		if ctx.Err() != nil {
			t.Fatal("etcd did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRealEtcd runs the audit against a real etcd 3.7 holding the golden
// values, and checks that a compacted snapshot surfaces as ErrCompacted.
func TestRealEtcd(t *testing.T) {
	c := realEtcd(t)
	ctx := context.Background()
	for k, v := range goldenKVs(t) {
		if _, err := c.Put(ctx, k, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	scopes, _ := Scopes("/registry", []string{"secrets", "configmaps"})
	r, err := Run(ctx, c, Options{Scopes: scopes, PageSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Objects != 14 || r.KeyIDs[key1] != 4 || r.KeyIDs[key2] != 2 || r.Plaintext != 2 || r.OtherProviders != 6 || !r.Consistent {
		t.Fatalf("%+v", r)
	}
	old := r.Revision
	put, err := c.Put(ctx, "/registry/secrets/x/new", "k8s\x00")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, put.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "/registry/secrets/", clientv3.WithPrefix(), clientv3.WithRev(old)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("Get at a compacted revision: %v, want ErrCompacted", err)
	}
}

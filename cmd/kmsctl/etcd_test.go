package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// startEtcd runs the e2e suite's etcd ($KEYWARDEN_E2E_TOOLS_DIR or
// test/e2e/tools/bin), or skips, and returns its client URL.
func startEtcd(t *testing.T) (string, *clientv3.Client) {
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
			t.Fatal("etcd did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func goldenValues(t *testing.T) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile("../../internal/stored/testdata/golden-apiserver-v1.37.2.json")
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

const (
	goldenKey1 = "tink:3473997605:81291f5360ee4023"
	goldenKey2 = "tink:1387148517:e270a5f50269b3e4"
)

// TestAuditCommand runs kmsctl audit against a real etcd holding values
// kube-apiserver wrote, and checks its gates and that no value is printed.
func TestAuditCommand(t *testing.T) {
	url, c := startEtcd(t)
	golden := goldenValues(t)
	for k, v := range golden {
		if _, err := c.Put(context.Background(), k, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	base := []string{"audit", "--etcd-endpoints", url, "--resources", "secrets,configmaps"}
	r := run(t, "", false, append(base, "-o", "json")...)
	var a auditOut
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &a) != nil {
		t.Fatalf("%+v", r)
	}
	if a.Objects != 14 || a.KeyIDs[goldenKey1] != 4 || a.KeyIDs[goldenKey2] != 2 || a.Plaintext != 2 || len(a.LocalKEKs) != 2 {
		t.Fatalf("%+v", a.Report)
	}
	for _, v := range golden {
		if s := string(v); strings.HasPrefix(s, "k8s:enc:") && strings.Contains(r.stdout, s[len(s)-12:]) {
			t.Fatal("audit printed part of a value")
		}
	}
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"plaintext gate", []string{"--fail-on-plaintext"}, exitProblem},
		{"key gate hit", []string{"--fail-on-key", goldenKey1}, exitProblem},
		{"key gate miss", []string{"--fail-on-key", "tink:1:unused"}, 0},
		{"other providers gate", []string{"--fail-on-other-providers"}, exitProblem},
		{"plaintext gate, kms-only scope", []string{"--fail-on-plaintext", "--resources", "/registry/secrets/default/g"}, 0},
		{"yaml", []string{"-o", "yaml"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(append([]string{}, base...), tt.args...)
			if tt.name == "plaintext gate, kms-only scope" {
				args = append([]string{"audit", "--etcd-endpoints", url}, tt.args...)
			}
			if r := run(t, "", false, args...); r.code != tt.code {
				t.Fatalf("exit %d, want %d: %s", r.code, tt.code, r.stderr)
			}
		})
	}
	if r := run(t, "", false, "audit", "--etcd-endpoints", "http://127.0.0.1:1", "--etcd-timeout", "500ms"); r.code != exitFailed {
		t.Fatalf("etcd unreachable: exit %d, want 1", r.code)
	}
}

// TestDestroyLiveAudit: destroy audits etcd itself and refuses while any
// object is under the version.
func TestDestroyLiveAudit(t *testing.T) {
	url, c := startEtcd(t)
	uri := newKeyset(t)
	old := primary(t, uri)
	id := addKey(t, uri)
	run(t, "", false, "keys", "promote", "--keystore", uri, "--yes", id)
	run(t, "", false, "keys", "disable", "--keystore", uri, old)
	// One object under old: take a golden KMS value and swap its key_id for
	// one of the same length.
	v := goldenValues(t)["/registry/secrets/default/g1"]
	if len(old) != len(goldenKey1) {
		t.Skipf("key id lengths differ (%q)", old)
	}
	s := strings.Replace(string(v), goldenKey1, old, 1)
	if _, err := c.Put(context.Background(), "/registry/secrets/default/x", s); err != nil {
		t.Fatal(err)
	}
	args := []string{"keys", "destroy", "--keystore", uri, "--etcd-endpoints", url, "--yes", old}
	if r := run(t, "", false, args...); r.code != exitProblem || state(t, uri, old) != "disabled" {
		t.Fatalf("destroy in use: %+v", r)
	}
	if _, err := c.Delete(context.Background(), "/registry/secrets/default/x"); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "", false, args...); r.code != 0 {
		t.Fatalf("destroy unused: %+v", r)
	}
}

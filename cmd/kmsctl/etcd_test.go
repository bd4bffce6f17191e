package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

const (
	goldenKey1 = "tink:3473997605:81291f5360ee4023"
	goldenKey2 = "tink:1387148517:e270a5f50269b3e4"
)

// TestAuditCommand runs kmsctl audit against a real etcd holding values
// kube-apiserver wrote, and checks its gates and that no value is printed.
func TestAuditCommand(t *testing.T) {
	url, c := etcdtest.Start(t)
	golden := etcdtest.GoldenValues(t)
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
	url, c := etcdtest.Start(t)
	uri := newKeyset(t)
	old := primary(t, uri)
	id := addKey(t, uri)
	run(t, "", false, "keys", "promote", "--keystore", uri, "--yes", id)
	run(t, "", false, "keys", "disable", "--keystore", uri, old)
	// One object under old: take a golden KMS value and swap its key_id for
	// one of the same length.
	v := etcdtest.GoldenValues(t)["/registry/secrets/default/g1"]
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

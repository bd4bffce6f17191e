package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/keystore"
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
	// KMS v2 values alone under a prefix of their own, for a scoped gate.
	for _, k := range []string{"g1", "g2", "g3", "g4"} {
		if _, err := c.Put(context.Background(), "/registry/kmsonly/default/"+k, string(golden["/registry/secrets/default/"+k])); err != nil {
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
		{"plaintext gate, kms-only scope", []string{"--fail-on-plaintext", "--resources", "/registry/kmsonly"}, 0},
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
			if tt.name == "plaintext gate, kms-only scope" {
				// The scope holds the four KMS v2 values: the gate
				// passed on them, not on an empty scope.
				r := run(t, "", false, append(args, "-o", "json")...)
				var a auditOut
				if r.code != 0 || json.Unmarshal([]byte(r.stdout), &a) != nil || a.Objects != 4 || len(a.KeyIDs) == 0 {
					t.Fatalf("kms-only scope read %d objects, want 4: %+v", a.Objects, r)
				}
			}
		})
	}
	if r := run(t, "", false, "audit", "--etcd-endpoints", "http://127.0.0.1:1", "--etcd-timeout", "500ms"); r.code != exitFailed {
		t.Fatalf("etcd unreachable: exit %d, want 1", r.code)
	}
}

// TestDestroyLiveAudit: destroy audits every value under the etcd prefix,
// whatever the resource, and refuses while any object is under the
// version: a ConfigMap or a custom resource under it counts although no
// Secret is. Values are made for the key IDs this keyset has
// (etcdtest.KMSValue), so the test runs whatever their length.
func TestDestroyLiveAudit(t *testing.T) {
	url, c := etcdtest.Start(t)
	uri, old, neu := retiredKeyset(t)
	ctx := context.Background()
	put := func(k string, v []byte) {
		t.Helper()
		if _, err := c.Put(ctx, k, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	del := func(k string) {
		t.Helper()
		if _, err := c.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// Every Secret is under the new version; a ConfigMap and a custom
	// resource were left under the old one.
	put("/registry/secrets/default/s", etcdtest.KMSValue(t, neu))
	put("/registry/configmaps/default/cm", etcdtest.KMSValue(t, old))
	put("/registry/example.com/widgets/default/w", etcdtest.KMSValue(t, old))
	args := []string{"keys", "destroy", "--keystore", uri, "--etcd-endpoints", url, "--yes", old}
	destroyed := func() bool { s := state(t, uri, old); return s == keystore.KeyDestroyed || s == "absent" }
	if r := run(t, "", false, args...); r.code != exitProblem || destroyed() || !strings.Contains(r.stderr, "2 objects stored under it") {
		t.Fatalf("destroy with a ConfigMap and a widget under it: %+v", r)
	}
	// The old --resources and --encryption-config narrow nothing.
	if r := run(t, "", false, append(args, "--resources", "secrets")...); r.code != exitProblem || destroyed() || !strings.Contains(r.stderr, "ignored") {
		t.Fatalf("destroy --resources secrets: %+v", r)
	}
	del("/registry/configmaps/default/cm")
	if r := run(t, "", false, args...); r.code != exitProblem || destroyed() || !strings.Contains(r.stderr, "1 objects stored under it") {
		t.Fatalf("destroy with a widget under it: %+v", r)
	}
	// disable audits the same way.
	if r := run(t, "", false, "keys", "enable", "--keystore", uri, old); r.code != 0 {
		t.Fatalf("enable: %+v", r)
	}
	if r := run(t, "", false, "keys", "disable", "--keystore", uri, "--etcd-endpoints", url, old); r.code != exitProblem || state(t, uri, old) != keystore.KeyEnabled {
		t.Fatalf("disable with a widget under it: %+v", r)
	}
	del("/registry/example.com/widgets/default/w")
	if r := run(t, "", false, "keys", "disable", "--keystore", uri, "--etcd-endpoints", url, old); r.code != 0 || state(t, uri, old) != keystore.KeyDisabled {
		t.Fatalf("disable unused: %+v", r)
	}
	// A wrong --prefix sees none of this keystore's objects: refused.
	if r := run(t, "", false, append(args, "--prefix", "/kube")...); r.code != exitProblem || destroyed() || !strings.Contains(r.stderr, "no object under any other version") {
		t.Fatalf("destroy under another prefix: %+v", r)
	}
	if r := run(t, "", false, args...); r.code != 0 || !destroyed() {
		t.Fatalf("destroy unused: %+v", r)
	}
}

// TestAuditIdentityFirst: a resource written in plaintext whose entry
// still lists kms as a reader may hold values under the key: audit
// --encryption-config covers it.
func TestAuditIdentityFirst(t *testing.T) {
	url, c := etcdtest.Start(t)
	const key = "tink:12:0123456789abcdef"
	if _, err := c.Put(context.Background(), "/registry/configmaps/default/cm", string(etcdtest.KMSValue(t, key))); err != nil {
		t.Fatal(err)
	}
	enc := filepath.Join(t.TempDir(), "enc.yaml")
	if err := os.WriteFile(enc, []byte(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [configmaps]
  providers:
  - identity: {}
  - kms: {apiVersion: v2, name: keywarden, endpoint: unix:///run/keywarden/kms.sock}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, "", false, "audit", "--etcd-endpoints", url, "--encryption-config", enc, "--fail-on-key", key)
	if r.code != exitProblem || !strings.Contains(r.stderr, "1 objects under key_id "+key) {
		t.Fatalf("%+v", r)
	}
}

// TestAuditOtherKMSv2Plugin: --fail-on-other-providers also fails on a KMS
// v2 value another plugin wrote (no keywarden annotation), says so, and
// passes once only keywarden's values are left.
func TestAuditOtherKMSv2Plugin(t *testing.T) {
	url, c := etcdtest.Start(t)
	ctx := context.Background()
	for k, v := range map[string][]byte{
		"/registry/secrets/default/ours":   etcdtest.KMSValue(t, goldenKey1),
		"/registry/secrets/default/theirs": etcdtest.ForeignKMSValue(t, "vault-kms", "their-key-1"),
	} {
		if _, err := c.Put(ctx, k, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"audit", "--etcd-endpoints", url, "--resources", "secrets", "--fail-on-other-providers"}
	r := run(t, "", false, args...)
	if r.code != exitProblem || !strings.Contains(r.stderr+r.stdout, "1 of them from another KMS v2 plugin") ||
		!strings.Contains(r.stdout, "other KMS v2 plugins 1") {
		t.Fatalf("with another plugin's value: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if _, err := c.Delete(ctx, "/registry/secrets/default/theirs"); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "", false, args...); r.code != 0 {
		t.Fatalf("keywarden's values only: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// keywarden's own value, but under a provider name the
	// configuration no longer has: only a plugin by that name reads it.
	if _, err := c.Put(ctx, "/registry/secrets/default/renamed", string(etcdtest.KMSValueAs(t, "keywarden-old", goldenKey1))); err != nil {
		t.Fatal(err)
	}
	r = run(t, "", false, args...)
	if r.code != exitProblem || !strings.Contains(r.stderr, "kms:v2:keywarden-old 1") {
		t.Fatalf("keywarden's value under another name: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "", false, append(args, "--keywarden-provider", "keywarden,keywarden-old")...); r.code != 0 {
		t.Fatalf("both names given as keywarden's: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"
	"sigs.k8s.io/yaml"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/fipsmode"
	"github.com/keywarden/keywarden/keystore"
)

// run executes kmsctl in-process with the given stdin; tty says whether
// stdin counts as a terminal.
type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, stdin string, tty bool, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	g := &globals{stdout: &out, stderr: &errb, stdin: strings.NewReader(stdin), stdinTTY: tty, now: time.Now, args: append([]string{"kmsctl"}, args...)}
	code := g.execute(context.Background(), args)
	return result{code, out.String(), errb.String()}
}

func newKeyset(t *testing.T) string {
	t.Helper()
	uri := "file://" + filepath.Join(t.TempDir(), "keyset.json")
	if r := run(t, "", false, "keys", "init", "--keystore", uri); r.code != 0 {
		t.Fatalf("keys init: %+v", r)
	}
	return uri
}

func listKeys(t *testing.T, uri string) []keystore.KeyVersion {
	t.Helper()
	r := run(t, "", false, "keys", "list", "--keystore", uri, "-o", "json")
	var vs []keystore.KeyVersion
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &vs) != nil {
		t.Fatalf("keys list: %+v", r)
	}
	return vs
}

func addKey(t *testing.T, uri string) string {
	t.Helper()
	r := run(t, "", false, "keys", "add", "--keystore", uri, "-o", "json")
	var vs []keystore.KeyVersion
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &vs) != nil || len(vs) != 1 {
		t.Fatalf("keys add: %+v", r)
	}
	return vs[0].KeyID
}

func primary(t *testing.T, uri string) string {
	for _, v := range listKeys(t, uri) {
		if v.Primary {
			return v.KeyID
		}
	}
	t.Fatal("no primary")
	return ""
}

func state(t *testing.T, uri, id string) keystore.KeyState {
	for _, v := range listKeys(t, uri) {
		if v.KeyID == id {
			return v.State
		}
	}
	return "absent"
}

func TestUsageExitCodes(t *testing.T) {
	uri := newKeyset(t)
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"unknown flag", []string{"keys", "list", "--keystore", uri, "--nope"}, exitUsage},
		{"bad output", []string{"keys", "list", "--keystore", uri, "-o", "xml"}, exitUsage},
		{"missing keystore", []string{"keys", "list"}, exitUsage},
		{"missing key id", []string{"keys", "promote", "--keystore", uri}, exitUsage},
		{"audit needs endpoints", []string{"audit"}, exitUsage},
		{"audit group wildcard", []string{"audit", "--etcd-endpoints", "http://127.0.0.1:1", "--resources", "*.apps"}, exitUsage},
		{"audit resources and config", []string{"audit", "--etcd-endpoints", "http://127.0.0.1:1", "--resources", "secrets", "--encryption-config", "x"}, exitUsage},
		{"migrate bad via", []string{"migrate", "--via", "magic"}, exitUsage},
		{"status bad socket", []string{"status", "--socket", "tcp://x"}, exitUsage},
		{"keystore missing", []string{"keys", "list", "--keystore", "file:///nonexistent/keyset.json"}, exitFailed},
		{"unknown key", []string{"keys", "disable", "--keystore", uri, "tink:1:nope"}, exitFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := run(t, "", false, tt.args...); r.code != tt.code {
				t.Fatalf("exit %d, want %d: %s", r.code, tt.code, r.stderr)
			}
		})
	}
}

func TestOutputFormats(t *testing.T) {
	uri := newKeyset(t)
	id := primary(t, uri)
	r := run(t, "", false, "keys", "list", "--keystore", uri, "-o", "yaml")
	var vs []keystore.KeyVersion
	if r.code != 0 || yaml.Unmarshal([]byte(r.stdout), &vs) != nil || len(vs) != 1 || vs[0].KeyID != id || !vs[0].Primary {
		t.Fatalf("yaml: %+v %+v", r, vs)
	}
	r = run(t, "", false, "keys", "list", "--keystore", uri)
	if r.code != 0 || !strings.Contains(r.stdout, "KEY ID") || !strings.Contains(r.stdout, id) {
		t.Fatalf("table: %+v", r)
	}
}

// TestPromoteConfirmation: on a terminal promote asks; off a terminal
// without --yes it goes ahead with a warning (scripts predating --yes).
func TestPromoteConfirmation(t *testing.T) {
	uri := newKeyset(t)
	old := primary(t, uri)
	id := addKey(t, uri)

	r := run(t, "n\n", true, "keys", "promote", "--keystore", uri, id)
	if r.code != exitFailed || primary(t, uri) != old || !strings.Contains(r.stderr, "Will promote "+id) {
		t.Fatalf("answered no: %+v", r)
	}
	r = run(t, "yes\n", true, "keys", "promote", "--keystore", uri, id)
	if r.code != 0 || primary(t, uri) != id {
		t.Fatalf("answered yes: %+v", r)
	}
	r = run(t, "", false, "keys", "promote", "--keystore", uri, old)
	if r.code != exitUsage || primary(t, uri) != id || !strings.Contains(r.stderr, "pass --yes") {
		t.Fatalf("no terminal, no --yes must refuse and change nothing: %+v", r)
	}
	r = run(t, "", false, "keys", "promote", "--keystore", uri, "--yes", id)
	if r.code != 0 || primary(t, uri) != id || strings.Contains(r.stderr, "warning") {
		t.Fatalf("--yes: %+v", r)
	}
}

// writeReport writes an audit report as `kmsctl audit --resources '*.*'
// -o json` would: every value under /registry, one snapshot.
func writeReport(t *testing.T, keyIDs map[string]int, at time.Time) string {
	t.Helper()
	return writeAudit(t, auditOut{Report: &audit.Report{Revision: 9, Consistent: true, KeyIDs: keyIDs, Providers: map[string]int{},
		Resources: []audit.ResourceReport{{Scope: audit.Scope{Resource: "*.*", Prefix: "/registry/"}}}}, Time: at})
}

func writeAudit(t *testing.T, a auditOut) string {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "audit.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// retiredKeyset makes a keyset whose first version, old, is disabled and
// whose second, neu, is primary.
func retiredKeyset(t *testing.T) (uri, old, neu string) {
	t.Helper()
	uri = newKeyset(t)
	old = primary(t, uri)
	neu = addKey(t, uri)
	if r := run(t, "", false, "keys", "promote", "--keystore", uri, "--yes", neu); r.code != 0 {
		t.Fatalf("promote: %+v", r)
	}
	if r := run(t, "", false, "keys", "disable", "--keystore", uri, old); r.code != 0 {
		t.Fatalf("disable: %+v", r)
	}
	return uri, old, neu
}

// TestDestroyReportChecks: an --audit-report that shows 0 objects under
// the version is still refused (exit 3) when it is narrower than the whole
// etcd prefix, not one snapshot, not of this keystore's etcd, or too old;
// --force accepts it with a warning naming what it overrides.
func TestDestroyReportChecks(t *testing.T) {
	whole := []audit.ResourceReport{{Scope: audit.Scope{Resource: "*.*", Prefix: "/registry/"}}}
	tests := []struct {
		name   string
		report func(old, neu string) auditOut
		args   []string
		code   int
		stderr string
	}{
		{"secrets only", func(_, neu string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: true, KeyIDs: map[string]int{neu: 5},
				Resources: []audit.ResourceReport{{Scope: audit.Scope{Resource: "secrets", Prefix: "/registry/secrets/"}}}}, Time: time.Now()}
		}, nil, exitProblem, "covers only [/registry/secrets/]"},
		{"encryption config resources", func(_, neu string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: true, KeyIDs: map[string]int{neu: 5},
				Resources: []audit.ResourceReport{{Scope: audit.Scope{Resource: "secrets", Prefix: "/registry/secrets/"}},
					{Scope: audit.Scope{Resource: "configmaps", Prefix: "/registry/configmaps/"}}}}, Time: time.Now()}
		}, nil, exitProblem, "not every value under /registry/"},
		{"another etcd prefix", func(_, neu string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: true, KeyIDs: map[string]int{neu: 5},
				Resources: []audit.ResourceReport{{Scope: audit.Scope{Resource: "*.*", Prefix: "/kube/"}}}}, Time: time.Now()}
		}, nil, exitProblem, "not every value under /registry/"},
		{"not one snapshot", func(_, neu string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: false, KeyIDs: map[string]int{neu: 5}, Resources: whole}, Time: time.Now()}
		}, nil, exitProblem, "not one etcd snapshot"},
		{"another keystore", func(_, _ string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: true, KeyIDs: map[string]int{"tink:7:0123456789abcdef": 5}, Resources: whole}, Time: time.Now()}
		}, nil, exitProblem, "no object under any other version of this keystore"},
		{"too old", func(_, neu string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: true, KeyIDs: map[string]int{neu: 5}, Resources: whole}, Time: time.Now().Add(-2 * time.Hour)}
		}, nil, exitProblem, "2h0m0s old (--audit-max-age 1h0m0s)"},
		{"from the future", func(_, neu string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: true, KeyIDs: map[string]int{neu: 5}, Resources: whole}, Time: time.Now().Add(time.Hour)}
		}, nil, exitProblem, "in the future"},
		{"old, within a longer bound", func(_, neu string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: true, KeyIDs: map[string]int{neu: 5}, Resources: whole}, Time: time.Now().Add(-2 * time.Hour)}
		}, []string{"--audit-max-age", "3h"}, 0, ""},
		{"all good", func(old, neu string) auditOut {
			return auditOut{Report: &audit.Report{Consistent: true, KeyIDs: map[string]int{neu: 5, old: 0}, Resources: whole}, Time: time.Now()}
		}, nil, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uri, old, neu := retiredKeyset(t)
			p := writeAudit(t, tt.report(old, neu))
			args := append([]string{"keys", "destroy", "--keystore", uri, "--audit-report", p, "--yes", old}, tt.args...)
			r := run(t, "", false, args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) || strings.Contains(r.stderr, "WARNING") {
				t.Fatalf("exit %d, want %d; stderr %q, want %q", r.code, tt.code, r.stderr, tt.stderr)
			}
			if s := state(t, uri, old); (s == keystore.KeyDestroyed || s == "absent") != (tt.code == 0) {
				t.Fatalf("state %s after exit %d", s, r.code)
			}
			if tt.code == 0 {
				return
			}
			// The same for disable, on the version before it was disabled.
			if r := run(t, "", false, "keys", "enable", "--keystore", uri, old); r.code != 0 {
				t.Fatalf("enable: %+v", r)
			}
			r = run(t, "", false, "keys", "disable", "--keystore", uri, "--audit-report", p, old)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) || state(t, uri, old) != keystore.KeyEnabled {
				t.Fatalf("disable: exit %d, want %d; stderr %q, want %q", r.code, tt.code, r.stderr, tt.stderr)
			}
			if r := run(t, "", false, "keys", "disable", "--keystore", uri, "--audit-report", p, "--force", old); r.code != 0 || state(t, uri, old) != keystore.KeyDisabled {
				t.Fatalf("disable --force: %+v", r)
			}
			r = run(t, "", false, append(args, "--force")...)
			if r.code != 0 || !strings.Contains(r.stderr, "WARNING: --force") || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("--force: %+v", r)
			}
			if s := state(t, uri, old); s != keystore.KeyDestroyed && s != "absent" {
				t.Fatalf("--force: state %s", s)
			}
		})
	}
}

func TestDestroyGuards(t *testing.T) {
	uri := newKeyset(t)
	old := primary(t, uri)
	id := addKey(t, uri)
	run(t, "", false, "keys", "promote", "--keystore", uri, "--yes", id)
	inUse := writeReport(t, map[string]int{old: 3, id: 10}, time.Now())
	unused := writeReport(t, map[string]int{id: 13}, time.Now())

	// Still enabled: destroy refuses before anything else.
	if r := run(t, "", false, "keys", "destroy", "--keystore", uri, "--audit-report", unused, "--yes", old); r.code != exitFailed || state(t, uri, old) != keystore.KeyEnabled {
		t.Fatalf("destroy of an enabled version: %+v", r)
	}
	// disable with evidence of use refuses (exit 3), without evidence goes.
	if r := run(t, "", false, "keys", "disable", "--keystore", uri, "--audit-report", inUse, old); r.code != exitProblem || state(t, uri, old) != keystore.KeyEnabled {
		t.Fatalf("disable in use: %+v", r)
	}
	if r := run(t, "", false, "keys", "disable", "--keystore", uri, old); r.code != 0 || state(t, uri, old) != keystore.KeyDisabled {
		t.Fatalf("disable: %+v", r)
	}

	tests := []struct {
		name    string
		args    []string
		stdin   string
		tty     bool
		code    int
		stderr  string
		destroy bool
	}{
		{name: "no evidence", args: []string{"--yes"}, code: exitUsage, stderr: "needs evidence"},
		{name: "in use", args: []string{"--audit-report", inUse, "--yes"}, code: exitProblem, stderr: "3 objects stored under it"},
		{name: "unused, no --yes off a terminal", args: []string{"--audit-report", unused}, code: exitUsage, stderr: "pass --yes"},
		{name: "unused, answered no", args: []string{"--audit-report", unused}, stdin: "no\n", tty: true, code: exitFailed, stderr: "Will DESTROY"},
		{name: "bad report", args: []string{"--audit-report", "/nonexistent", "--yes"}, code: exitUsage},
		{name: "stale report warns", args: []string{"--audit-report", writeReport(t, map[string]int{old: 1}, time.Now().Add(-48*time.Hour)), "--yes"}, code: exitProblem, stderr: "old"},
		{name: "in use, forced", args: []string{"--audit-report", inUse, "--force", "--yes"}, code: 0, stderr: "WARNING: --force", destroy: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, tt.stdin, tt.tty, append([]string{"keys", "destroy", "--keystore", uri, old}, tt.args...)...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d, want %d; stderr %q, want %q", r.code, tt.code, r.stderr, tt.stderr)
			}
			if got := state(t, uri, old) == keystore.KeyDestroyed || state(t, uri, old) == "absent"; got != tt.destroy {
				t.Fatalf("destroyed = %v, want %v", got, tt.destroy)
			}
		})
	}
}

func TestDestroyUnused(t *testing.T) {
	uri := newKeyset(t)
	old := primary(t, uri)
	id := addKey(t, uri)
	run(t, "", false, "keys", "promote", "--keystore", uri, "--yes", id)
	run(t, "", false, "keys", "disable", "--keystore", uri, old)
	r := run(t, "", false, "keys", "destroy", "--keystore", uri, "--audit-report", writeReport(t, map[string]int{id: 5}, time.Now()), "--yes", old)
	if r.code != 0 || strings.Contains(r.stderr, "WARNING") {
		t.Fatalf("%+v", r)
	}
	if s := state(t, uri, old); s != keystore.KeyDestroyed && s != "absent" {
		t.Fatalf("state %s", s)
	}
}

// fakePlugin is a KMS v2 server made of function fields, on a unix socket.
type fakePlugin struct {
	kmsapi.UnimplementedKeyManagementServiceServer
	status func() *kmsapi.StatusResponse
}

func (f *fakePlugin) Status(context.Context, *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	return f.status(), nil
}

func (f *fakePlugin) Encrypt(_ context.Context, r *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	return &kmsapi.EncryptResponse{Ciphertext: append([]byte("ct:"), r.Plaintext...), KeyId: f.status().KeyId}, nil
}

func (f *fakePlugin) Decrypt(_ context.Context, r *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	return &kmsapi.DecryptResponse{Plaintext: bytes.TrimPrefix(r.Ciphertext, []byte("ct:"))}, nil
}

func startPlugin(t *testing.T, status func() *kmsapi.StatusResponse) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmsctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kms.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(s, &fakePlugin{status: status})
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return "unix://" + sock
}

func hashKeyID(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:])[:16]
}

const sampleMetrics = `# TYPE keywarden_healthy gauge
keywarden_healthy 1
# TYPE keywarden_fips140_enabled gauge
keywarden_fips140_enabled{mode="only",module="v1.0.0"} 1
# TYPE keywarden_keystore_up gauge
keywarden_keystore_up 1
# TYPE keywarden_root_key_info gauge
keywarden_root_key_info{backend="file",key_id_hash="%s"} 1
# TYPE keywarden_kek_generations_total counter
keywarden_kek_generations_total{reason="startup"} 1
keywarden_kek_generations_total{reason="max_age"} 0
# TYPE keywarden_grpc_server_handled_total counter
keywarden_grpc_server_handled_total{grpc_code="OK",grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary"} 90
keywarden_grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary"} 10
# TYPE keywarden_grpc_server_handling_seconds histogram
keywarden_grpc_server_handling_seconds_bucket{grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary",le="0.001"} 50
keywarden_grpc_server_handling_seconds_bucket{grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary",le="0.01"} 100
keywarden_grpc_server_handling_seconds_bucket{grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary",le="+Inf"} 100
keywarden_grpc_server_handling_seconds_sum{grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary"} 0.2
keywarden_grpc_server_handling_seconds_count{grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary"} 100
`

func TestStatusAndMetrics(t *testing.T) {
	healthz := "ok"
	sock := startPlugin(t, func() *kmsapi.StatusResponse {
		return &kmsapi.StatusResponse{Version: "v2", Healthz: healthz, KeyId: "tink:1:aa"}
	})
	metricsFor := "tink:1:aa"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, sampleMetrics, hashKeyID(metricsFor))
	}))
	defer srv.Close()

	r := run(t, "", false, "status", "--socket", sock, "--metrics-url", srv.URL, "-o", "json")
	var out statusOut
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil {
		t.Fatalf("%+v", r)
	}
	m := out.Metrics
	if m == nil || !*m.Healthy || !*m.KeystoreUp || !*m.RootKeyMatchesStatus || m.Backend != "file" || len(m.RPCs) != 1 {
		t.Fatalf("metrics %+v", m)
	}
	if d := m.RPCs[0]; d.Calls != 100 || d.Errors["InvalidArgument"] != 10 || d.P50 != 0.001 || d.P99 < 0.0098 || d.P99 > 0.01 {
		t.Fatalf("rpc summary %+v", d)
	}
	if m.KEKGenerations["startup"] != 1 || len(m.KEKGenerations) != 1 {
		t.Fatalf("generations %v", m.KEKGenerations)
	}
	if f := m.FIPS140; f == nil || f.Mode != "only" || f.Module != "v1.0.0" {
		t.Fatalf("plugin FIPS 140 %+v", f)
	}
	if own := (fips140State{Mode: fipsmode.Mode(), Module: fipsmode.Module()}); out.KmsctlFIPS140 != own {
		t.Fatalf("kmsctl FIPS 140 %+v, want %+v", out.KmsctlFIPS140, own)
	}
	if r := run(t, "", false, "status", "--socket", sock, "--metrics-url", srv.URL); r.code != 0 || !strings.Contains(r.stdout, "Decrypt") ||
		!strings.Contains(r.stdout, "plugin: only (Go module v1.0.0); kmsctl: "+fipsmode.Mode()) {
		t.Fatalf("table: %+v", r)
	}
	if r := run(t, "", false, "status", "--socket", sock); r.code != 0 || strings.Contains(r.stdout, "METRICS") ||
		!strings.Contains(r.stdout, "plugin: ? (--metrics-url shows it); kmsctl: "+fipsmode.Mode()) {
		t.Fatalf("without --metrics-url: %+v", r)
	}
	if r := run(t, "", false, "check", "--socket", sock); r.code != 0 {
		t.Fatalf("check: %+v", r)
	}

	metricsFor = "tink:2:bb"
	if r := run(t, "", false, "status", "--socket", sock, "--metrics-url", srv.URL); r.code != exitProblem {
		t.Fatalf("root key hash mismatch: exit %d, want 3", r.code)
	}
	healthz = "keystore Unavailable"
	if r := run(t, "", false, "status", "--socket", sock); r.code != exitProblem {
		t.Fatalf("unhealthy: exit %d, want 3", r.code)
	}
	if r := run(t, "", false, "status", "--socket", sock, "--metrics-url", "http://127.0.0.1:1/metrics"); r.code != exitFailed {
		t.Fatalf("metrics unreachable: exit %d, want 1", r.code)
	}
}

func TestQuantile(t *testing.T) {
	u := func(f float64) *float64 { return &f }
	c := func(n uint64) *uint64 { return &n }
	h := &dto.Histogram{SampleCount: c(10), Bucket: []*dto.Bucket{
		{UpperBound: u(1), CumulativeCount: c(5)},
		{UpperBound: u(2), CumulativeCount: c(10)},
	}}
	if q := quantile(0.5, h); q != 1 {
		t.Fatalf("p50 %v", q)
	}
	if q := quantile(0.75, h); q != 1.5 {
		t.Fatalf("p75 %v", q)
	}
	if q := quantile(0.5, &dto.Histogram{}); q != 0 {
		t.Fatalf("empty %v", q)
	}
}

func TestRotateGuards(t *testing.T) {
	uri := newKeyset(t)
	key := primary(t, uri)
	sock := startPlugin(t, func() *kmsapi.StatusResponse { return &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: key} })
	dir := t.TempDir()
	stateFile := filepath.Join(dir, "rotate.json")
	base := []string{"rotate", "--keystore", uri, "--socket", sock, "--etcd-endpoints", "http://127.0.0.1:1", "--kubeconfig", filepath.Join(dir, "none"), "--state-file", stateFile}

	if r := run(t, "", false, append(base, "--dry-run", "--resume")...); r.code != exitUsage {
		t.Fatalf("dry-run+resume: %+v", r)
	}
	if r := run(t, "", false, append(base, "--resume")...); r.code != exitUsage || !strings.Contains(r.stderr, "no rotation recorded") {
		t.Fatalf("resume without state: %+v", r)
	}
	if r := run(t, "", false, base...); r.code != exitUsage || !strings.Contains(r.stderr, "pass --yes") {
		t.Fatalf("no --yes off a terminal: %+v", r)
	}
	if len(listKeys(t, uri)) != 1 {
		t.Fatal("rotate changed the keystore without --yes")
	}
	if r := run(t, "", false, append(base, "--new-key", "tink:9:nope", "--yes")...); r.code != exitUsage {
		t.Fatalf("unknown --new-key: %+v", r)
	}
	// A plugin that serves another key than the keystore's primary: stop.
	key = "tink:7:other"
	if r := run(t, "", false, append(base, "--yes")...); r.code != exitProblem || !strings.Contains(r.stderr, "is not") {
		t.Fatalf("plugin on another keystore: %+v", r)
	}
	key = primary(t, uri)
	// An unfinished rotation blocks a new one.
	if err := os.WriteFile(stateFile, []byte(`{"version":1,"keystore":"`+uri+`","oldKeyID":"`+key+`","steps":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "", false, append(base, "--yes")...); r.code != exitUsage || !strings.Contains(r.stderr, "in progress") {
		t.Fatalf("rotation in progress: %+v", r)
	}
}

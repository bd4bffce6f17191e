package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/kms"
	"github.com/keywarden/keywarden/kms/kmsgrpc"
	"github.com/keywarden/keywarden/metrics"
)

// kmsctl status and check work against a keywarden with two roots: its
// roots: key_id, and root_key_info's joined backend label.
func TestStatusAndCheckTwoRoots(t *testing.T) {
	ctx := context.Background()
	var roots []keystore.Backend
	for range 2 {
		b, err := byuri.Open(ctx, newKeyset(t))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		roots = append(roots, b)
	}
	m := metrics.New()
	svc, err := kms.New(ctx, kms.Config{Roots: roots, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "kmsctl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "kms.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := kmsgrpc.NewServer(svc, kmsgrpc.Options{Metrics: m})
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	hs := httptest.NewServer(metrics.Handler(m, svc.Healthy))
	defer hs.Close()

	r := run(t, "", false, "status", "--socket", "unix://"+sock, "--metrics-url", hs.URL+"/metrics", "-o", "json")
	var out statusOut
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil {
		t.Fatalf("status: %+v", r)
	}
	if !strings.HasPrefix(out.KeyID, "roots:2:") || out.Healthz != "ok" {
		t.Fatalf("status %+v", out)
	}
	if mo := out.Metrics; mo == nil || !*mo.RootKeyMatchesStatus || mo.Backend != "file+file" {
		t.Fatalf("status metrics %+v", out.Metrics)
	}
	if r := run(t, "", false, "check", "--socket", "unix://"+sock); r.code != 0 || !strings.Contains(r.stdout, "roots:2:") {
		t.Fatalf("check: %+v", r)
	}
}

package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestHandler(t *testing.T) {
	m := New()
	ready, reason := true, "ok"
	h := Handler(m, func() (bool, string) { return ready, reason })

	for _, p := range []string{"/healthz", "/livez", "/readyz"} {
		if code, body := get(t, h, p); code != 200 || strings.TrimSpace(body) != "ok" {
			t.Fatalf("%s = %d %q", p, code, body)
		}
	}
	ready, reason = false, "keystore Unavailable since 2026-01-01T00:00:00Z"
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "Unavailable") {
		t.Fatalf("/readyz unhealthy = %d %q", code, body)
	}
	// Liveness does not follow the keystore: restarting would not help.
	if code, _ := get(t, h, "/healthz"); code != 200 {
		t.Fatalf("/healthz = %d while keystore down", code)
	}
	if code, _ := get(t, h, "/nope"); code != http.StatusNotFound {
		t.Fatalf("/nope = %d", code)
	}
}

func TestRecordedMetrics(t *testing.T) {
	m := New()
	m.SetVersion("v9")
	m.SetFIPS140("on", "latest")
	m.SetFIPS140("only", "v1.0.0") // replaces, never accumulates
	m.ObserveKeystore("file", "unwrap", "ok", 3*time.Millisecond)
	m.CacheHit()
	m.CacheMiss()
	m.SetCacheSize(2)
	m.KEKGenerated("root_rotation", time.Unix(1700000000, 0))
	m.SetRootKey("file", "tink:1:aa", time.Unix(1600000000, 0))
	m.SetRootKey("file", "tink:2:bb", time.Unix(1700000050, 0)) // replaces, never accumulates
	m.SetHealth(true, false, time.Unix(1700000100, 0))
	m.SetCircuitOpen(true)
	m.KEKRenewalFailed()
	m.KEKsRevoked(3)
	_, body := get(t, Handler(m, func() (bool, string) { return true, "ok" }), "/metrics")
	for _, want := range []string{
		`keywarden_build_info{version="v9"} 1`,
		`keywarden_fips140_enabled{mode="only",module="v1.0.0"} 1`,
		`keywarden_keystore_operation_duration_seconds_count{backend="file",op="unwrap",result="ok"} 1`,
		`keywarden_kek_cache_hits_total 1`,
		`keywarden_kek_cache_misses_total 1`,
		`keywarden_kek_cache_entries 2`,
		`keywarden_kek_generations_total{reason="root_rotation"} 1`,
		`keywarden_kek_generations_total{reason="startup"} 0`,
		`keywarden_kek_created_timestamp_seconds 1.7e+09`,
		`keywarden_root_key_info{backend="file",key_id_hash="` + HashKeyID("tink:2:bb") + `"} 1`,
		`keywarden_root_key_first_seen_timestamp_seconds{backend="file",key_id_hash="` + HashKeyID("tink:2:bb") + `"} 1.70000005e+09`,
		`keywarden_healthy 1`,
		`keywarden_keystore_up 0`,
		`keywarden_keystore_last_success_timestamp_seconds 1.7000001e+09`,
		`keywarden_keystore_circuit_open 1`,
		`keywarden_kek_renewal_failures_total 1`,
		`keywarden_kek_revoked_total 3`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("missing %s", want)
		}
	}
	if strings.Contains(body, HashKeyID("tink:1:aa")) || strings.Contains(body, "1.6e+09") {
		t.Error("old root key still exported")
	}
	if strings.Contains(body, "tink:2:bb") {
		t.Error("raw key_id in a label")
	}
	if strings.Contains(body, `mode="on"`) {
		t.Error("earlier FIPS 140 mode still exported")
	}
	m.SetFIPS140("off", "latest")
	if _, body := get(t, Handler(m, func() (bool, string) { return true, "ok" }), "/metrics"); !strings.Contains(body, `keywarden_fips140_enabled{mode="off",module="latest"} 0`) {
		t.Error(`mode "off" is not exported as 0`)
	}
	if len(HashKeyID("x")) != 16 {
		t.Error("hash label is not 16 hex digits")
	}
}

func TestNilMetricsIsSafe(t *testing.T) {
	var m *Metrics
	m.SetVersion("v")
	m.SetFIPS140("on", "v1.0.0")
	m.ObserveKeystore("a", "b", "c", time.Second)
	m.CacheHit()
	m.CacheMiss()
	m.SetCacheSize(1)
	m.KEKGenerated("startup", time.Now())
	m.SetKEKUses(1)
	m.SetRootKey("a", "b", time.Now())
	m.SetHealth(true, true, time.Now())
	if code, _ := get(t, Handler(nil, func() (bool, string) { return true, "ok" }), "/readyz"); code != 200 {
		t.Fatal("handler without metrics broken")
	}
}

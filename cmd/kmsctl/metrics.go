package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// maxMetricsBody bounds what status reads from /metrics.
const maxMetricsBody = 8 << 20

// metricsSummary is the part of keywarden's /metrics an operator looks at
// first.
type metricsSummary struct {
	URL     string `json:"url"`
	Healthy *bool  `json:"healthy,omitempty"`
	// KeystoreUp is the last keystore health check; KeystoreLastSuccess
	// how long ago one last succeeded.
	KeystoreUp           *bool              `json:"keystoreUp,omitempty"`
	KeystoreLastSuccess  string             `json:"keystoreLastSuccess,omitempty"`
	Backend              string             `json:"backend,omitempty"`
	RootKeyIDHash        string             `json:"rootKeyIDHash,omitempty"`
	RootKeyMatchesStatus *bool              `json:"rootKeyMatchesStatus,omitempty"`
	RPCs                 []rpcSummary       `json:"rpcs"`
	KEKGenerations       map[string]float64 `json:"kekGenerations,omitempty"`
	KEKUses              float64            `json:"kekUses"`
	KEKAge               string             `json:"kekAge,omitempty"`
	CacheHits            float64            `json:"kekCacheHits"`
	CacheMisses          float64            `json:"kekCacheMisses"`
	CacheEntries         float64            `json:"kekCacheEntries"`
	Version              string             `json:"version,omitempty"`
	// FIPS140 is the plugin's FIPS 140-3 mode; nil from a keywarden
	// that does not export it.
	FIPS140 *fips140State `json:"fips140,omitempty"`
}

// rpcSummary is one KMS method: calls, failures by code, latency quantiles
// estimated from the histogram as Prometheus' histogram_quantile does.
type rpcSummary struct {
	Method string             `json:"method"`
	Calls  float64            `json:"calls"`
	Errors map[string]float64 `json:"errors,omitempty"`
	P50    float64            `json:"p50Seconds"`
	P99    float64            `json:"p99Seconds"`
}

func fetchMetrics(ctx context.Context, url string, timeout time.Duration) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, usageError{fmt.Errorf("--metrics-url: %w", err)}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching metrics: %s from %s", resp.Status, url)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, maxMetricsBody))
	if err != nil {
		return nil, fmt.Errorf("parsing metrics from %s: %w", url, err)
	}
	return mfs, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return math.NaN()
}

// summarize reduces keywarden's metrics; statusKeyID, if set, is checked
// against the root_key_info hash.
func summarize(url string, mfs map[string]*dto.MetricFamily, statusKeyID string, now time.Time) *metricsSummary {
	s := &metricsSummary{URL: url, KEKGenerations: map[string]float64{}}
	one := func(name string) (*dto.Metric, bool) {
		mf := mfs[name]
		if mf == nil || len(mf.GetMetric()) == 0 {
			return nil, false
		}
		return mf.GetMetric()[0], true
	}
	boolOf := func(name string) *bool {
		if m, ok := one(name); ok {
			b := value(m) == 1
			return &b
		}
		return nil
	}
	s.Healthy = boolOf("keywarden_healthy")
	s.KeystoreUp = boolOf("keywarden_keystore_up")
	if m, ok := one("keywarden_keystore_last_success_timestamp_seconds"); ok && value(m) > 0 {
		s.KeystoreLastSuccess = now.Sub(time.Unix(int64(value(m)), 0)).Round(time.Second).String() + " ago"
	}
	if mf := mfs["keywarden_root_key_info"]; mf != nil {
		for _, m := range mf.GetMetric() {
			if value(m) == 1 {
				s.Backend, s.RootKeyIDHash = label(m, "backend"), label(m, "key_id_hash")
			}
		}
		if statusKeyID != "" && s.RootKeyIDHash != "" {
			h := sha256.Sum256([]byte(statusKeyID))
			match := hex.EncodeToString(h[:])[:16] == s.RootKeyIDHash
			s.RootKeyMatchesStatus = &match
		}
	}
	if mf := mfs["keywarden_kek_generations_total"]; mf != nil {
		for _, m := range mf.GetMetric() {
			if v := value(m); v > 0 {
				s.KEKGenerations[label(m, "reason")] = v
			}
		}
	}
	if m, ok := one("keywarden_kek_uses"); ok {
		s.KEKUses = value(m)
	}
	if m, ok := one("keywarden_kek_created_timestamp_seconds"); ok && value(m) > 0 {
		s.KEKAge = now.Sub(time.Unix(int64(value(m)), 0)).Round(time.Second).String()
	}
	if m, ok := one("keywarden_kek_cache_hits_total"); ok {
		s.CacheHits = value(m)
	}
	if m, ok := one("keywarden_kek_cache_misses_total"); ok {
		s.CacheMisses = value(m)
	}
	if m, ok := one("keywarden_kek_cache_entries"); ok {
		s.CacheEntries = value(m)
	}
	if m, ok := one("keywarden_build_info"); ok {
		s.Version = label(m, "version")
	}
	if m, ok := one("keywarden_fips140_enabled"); ok {
		s.FIPS140 = &fips140State{Mode: label(m, "mode"), Module: label(m, "module")}
	}
	rpcs := map[string]*rpcSummary{}
	get := func(method string) *rpcSummary {
		if rpcs[method] == nil {
			rpcs[method] = &rpcSummary{Method: method, Errors: map[string]float64{}}
		}
		return rpcs[method]
	}
	if mf := mfs["keywarden_grpc_server_handled_total"]; mf != nil {
		for _, m := range mf.GetMetric() {
			r := get(label(m, "grpc_method"))
			v := value(m)
			r.Calls += v
			if c := label(m, "grpc_code"); c != "OK" && v > 0 {
				r.Errors[c] += v
			}
		}
	}
	if mf := mfs["keywarden_grpc_server_handling_seconds"]; mf != nil {
		for _, m := range mf.GetMetric() {
			r := get(label(m, "grpc_method"))
			r.P50 = quantile(0.5, m.GetHistogram())
			r.P99 = quantile(0.99, m.GetHistogram())
		}
	}
	for _, r := range rpcs {
		s.RPCs = append(s.RPCs, *r)
	}
	sort.Slice(s.RPCs, func(i, j int) bool { return s.RPCs[i].Method < s.RPCs[j].Method })
	return s
}

// quantile estimates the q-quantile of a cumulative histogram by linear
// interpolation inside the bucket, as PromQL's histogram_quantile does.
func quantile(q float64, h *dto.Histogram) float64 {
	n := float64(h.GetSampleCount())
	if h == nil || n == 0 {
		return 0
	}
	bs := slices.Clone(h.GetBucket())
	sort.Slice(bs, func(i, j int) bool { return bs[i].GetUpperBound() < bs[j].GetUpperBound() })
	rank := q * n
	lower, below := 0.0, 0.0
	for _, b := range bs {
		c := float64(b.GetCumulativeCount())
		if c >= rank {
			if math.IsInf(b.GetUpperBound(), 1) {
				return lower
			}
			if c == below {
				return b.GetUpperBound()
			}
			return lower + (b.GetUpperBound()-lower)*(rank-below)/(c-below)
		}
		lower, below = b.GetUpperBound(), c
	}
	return lower
}

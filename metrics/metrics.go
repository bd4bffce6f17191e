// Package metrics holds keywarden's Prometheus collectors and its HTTP
// endpoints: /metrics, /healthz (liveness) and /readyz (the same health
// truth that KMS Status reports).
//
// Every metric is prefixed keywarden_, durations are in seconds, and no label
// takes an unbounded value: key IDs appear only as a short hash.
package metrics

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric name.
const Namespace = "keywarden"

// Buckets for KMS RPCs and keystore calls: from 50 µs (a warm Decrypt) to
// 10 s (a keystore timeout).
var latencyBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Metrics holds every collector keywarden exports. The zero value is not
// usable; a nil *Metrics is, and records nothing (for tests and tools).
type Metrics struct {
	Registry *prometheus.Registry

	keystoreSeconds *prometheus.HistogramVec
	cacheHits       prometheus.Counter
	cacheMisses     prometheus.Counter
	cacheSize       prometheus.Gauge
	kekGenerations  *prometheus.CounterVec
	kekUses         prometheus.Gauge
	kekAge          prometheus.Gauge
	rootKeyInfo     *prometheus.GaugeVec
	rootKeySeen     *prometheus.GaugeVec
	lastCheck       prometheus.Gauge
	healthy         prometheus.Gauge
	keystoreUp      prometheus.Gauge
	circuitOpen     prometheus.Gauge
	renewalFailures prometheus.Counter
	keksRevoked     prometheus.Counter
	unwrapsByRoot   *prometheus.CounterVec
	buildInfo       *prometheus.GaugeVec
	fips140         *prometheus.GaugeVec

	rpc *rpcMetrics

	mu       sync.Mutex
	rootKey  [2]string // backend, hash currently exported
	rootSeen time.Time // and when that version was first seen
}

// New registers every collector, plus the Go and process collectors, on a
// fresh registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		rpc:      newRPCMetrics(),
		keystoreSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "keystore", Name: "operation_duration_seconds",
			Help:    "Latency of calls to the root keystore, by backend, operation and result class.",
			Buckets: latencyBuckets,
		}, []string{"backend", "op", "result"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "kek_cache", Name: "hits_total",
			Help: "Decrypts whose local KEK was already unwrapped in memory.",
		}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "kek_cache", Name: "misses_total",
			Help: "Decrypts that had to unwrap their local KEK through the keystore (concurrent misses for one KEK count once each).",
		}),
		cacheSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "kek_cache", Name: "entries",
			Help: "Unwrapped local KEKs held in memory.",
		}),
		kekGenerations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "kek", Name: "generations_total",
			Help: "Local KEKs made or adopted, by reason (startup, state, root_rotation, max_uses, max_age).",
		}, []string{"reason"}),
		kekUses: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "kek", Name: "uses",
			Help: "Encrypts sealed with the current local KEK.",
		}),
		kekAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "kek", Name: "created_timestamp_seconds",
			Help: "When the current local KEK was made (Unix seconds).",
		}),
		rootKeyInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "root_key", Name: "info",
			Help: "The current root key version: key_id_hash is the first 16 hex digits of SHA-256(key_id), as kube-apiserver hashes it.",
		}, []string{"backend", "key_id_hash"}),
		rootKeySeen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "root_key", Name: "first_seen_timestamp_seconds",
			Help: "When this keywarden first saw the current root key version as current (Unix seconds), kept across restarts in --state-file. Not the version's creation time. Labels as keywarden_root_key_info.",
		}, []string{"backend", "key_id_hash"}),
		lastCheck: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "keystore", Name: "last_success_timestamp_seconds",
			Help: "When the keystore last answered a health check (Unix seconds).",
		}),
		healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "healthy",
			Help: "1 when Status reports healthz ok, else 0.",
		}),
		keystoreUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "keystore", Name: "up",
			Help: "1 when the last keystore health check succeeded, else 0; also 0 from a Decrypt refused because the keystore is down until the next check.",
		}),
		circuitOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "keystore", Name: "circuit_open",
			Help: "1 while the keystore is known down: Decrypts that need it fail fast with Unavailable until a background check reaches it.",
		}),
		renewalFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "kek", Name: "renewal_failures_total",
			Help: "Attempts to make a new local KEK that failed (the current one stays in use up to its hard stop).",
		}),
		keksRevoked: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "kek", Name: "revoked_total",
			Help: "Unwrapped local KEKs dropped from memory because their root key version was found disabled, destroyed or gone.",
		}),
		unwrapsByRoot: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "keystore", Name: "root_unwraps_total",
			Help: "Local KEKs unwrapped, by the root that served them: root is its place in the --keystore list (0 is the primary), backend its backend name.",
		}, []string{"root", "backend"}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "build_info",
			Help: "Always 1; labels carry the version.",
		}, []string{"version"}),
		fips140: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "fips140_enabled",
			Help: "1 if keywarden runs in FIPS 140-3 mode (GODEBUG fips140=on or only), else 0. mode: off, on or only (only: algorithms the FIPS module does not approve are refused); module: the Go Cryptographic Module's version (v1.0.0 when built with GOFIPS140=v1.0.0, latest otherwise). docs/fips.md.",
		}, []string{"mode", "module"}),
	}
	m.Registry.MustRegister(
		m.rpc.started, m.rpc.handled, m.rpc.seconds, m.keystoreSeconds, m.cacheHits, m.cacheMisses, m.cacheSize,
		m.kekGenerations, m.kekUses, m.kekAge, m.rootKeyInfo, m.rootKeySeen, m.lastCheck, m.healthy, m.keystoreUp,
		m.circuitOpen, m.renewalFailures, m.keksRevoked, m.unwrapsByRoot, m.buildInfo, m.fips140,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	for _, r := range []string{"startup", "state", "root_rotation", "max_uses", "max_age"} {
		m.kekGenerations.WithLabelValues(r)
	}
	return m
}

// HashKeyID is the label form of a key_id.
func HashKeyID(keyID string) string {
	s := sha256.Sum256([]byte(keyID))
	return hex.EncodeToString(s[:8])
}

// SetVersion records the build version.
func (m *Metrics) SetVersion(v string) {
	if m == nil {
		return
	}
	m.buildInfo.WithLabelValues(v).Set(1)
}

// SetFIPS140 records the process's FIPS 140-3 mode ("off", "on" or "only")
// and the Go Cryptographic Module's version.
func (m *Metrics) SetFIPS140(mode, module string) {
	if m == nil {
		return
	}
	v := 1.0
	if mode == "off" {
		v = 0
	}
	m.fips140.Reset()
	m.fips140.WithLabelValues(mode, module).Set(v)
}

// ObserveKeystore records one keystore call. result is a fixed class name.
func (m *Metrics) ObserveKeystore(backend, op, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.keystoreSeconds.WithLabelValues(backend, op, result).Observe(d.Seconds())
}

// CacheHit counts a Decrypt served by an in-memory KEK.
func (m *Metrics) CacheHit() {
	if m != nil {
		m.cacheHits.Inc()
	}
}

// CacheMiss counts a Decrypt that needed the keystore.
func (m *Metrics) CacheMiss() {
	if m != nil {
		m.cacheMisses.Inc()
	}
}

// SetCacheSize records the number of cached KEKs.
func (m *Metrics) SetCacheSize(n int) {
	if m != nil {
		m.cacheSize.Set(float64(n))
	}
}

// KEKGenerated counts a new current local KEK.
func (m *Metrics) KEKGenerated(reason string, created time.Time) {
	if m == nil {
		return
	}
	m.kekGenerations.WithLabelValues(reason).Inc()
	m.kekAge.Set(float64(created.Unix()))
	m.kekUses.Set(0)
}

// SetKEKUses records how many Encrypts the current KEK has sealed.
func (m *Metrics) SetKEKUses(n uint64) {
	if m != nil {
		m.kekUses.Set(float64(n))
	}
}

// SetRootKey exports the current root key version as a hashed label, and
// when this keywarden first saw it as current. A new version replaces the
// previous one's series.
func (m *Metrics) SetRootKey(backend, keyID string, firstSeen time.Time) {
	if m == nil {
		return
	}
	h := HashKeyID(keyID)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rootKey == [2]string{backend, h} && m.rootSeen.Equal(firstSeen) {
		return
	}
	m.rootKeyInfo.Reset()
	m.rootKeyInfo.WithLabelValues(backend, h).Set(1)
	m.rootKeySeen.Reset()
	m.rootKeySeen.WithLabelValues(backend, h).Set(float64(firstSeen.Unix()))
	m.rootKey = [2]string{backend, h}
	m.rootSeen = firstSeen
}

// SetHealth records the outcome of a health check.
func (m *Metrics) SetHealth(healthy, keystoreUp bool, lastSuccess time.Time) {
	if m == nil {
		return
	}
	m.healthy.Set(b2f(healthy))
	m.keystoreUp.Set(b2f(keystoreUp))
	if !lastSuccess.IsZero() {
		m.lastCheck.Set(float64(lastSuccess.Unix()))
	}
}

// SetCircuitOpen records whether the keystore breaker is open.
func (m *Metrics) SetCircuitOpen(open bool) {
	if m != nil {
		m.circuitOpen.Set(b2f(open))
	}
}

// KEKRenewalFailed counts a failed attempt to make a new local KEK.
func (m *Metrics) KEKRenewalFailed() {
	if m != nil {
		m.renewalFailures.Inc()
	}
}

// KEKsRevoked counts unwrapped local KEKs dropped because their root key
// version may no longer be used.
func (m *Metrics) KEKsRevoked(n int) {
	if m != nil {
		m.keksRevoked.Add(float64(n))
	}
}

// RootUnwrap counts a local KEK unwrapped by root number root (its place in
// the --keystore list) of the given backend.
func (m *Metrics) RootUnwrap(root int, backend string) {
	if m != nil {
		m.unwrapsByRoot.WithLabelValues(strconv.Itoa(root), backend).Inc()
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

package follow

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/metrics"
)

// Metrics are follow mode's Prometheus metrics, on the registry given to
// NewMetrics. Key IDs appear only hashed (metrics.HashKeyID, as keywarden
// and kube-apiserver label them), so labels stay bounded and public.
type Metrics struct {
	objects     *prometheus.GaugeVec
	notCurrent  *prometheus.GaugeVec
	currentKey  *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec
	failures    *prometheus.CounterVec
	rotations   prometheus.Counter
	leader      prometheus.Gauge
}

// The steps the metrics name; a rotation's pickup, migrate and audit are
// rotation's step names.
const (
	StepStatus = "status"
)

// NewMetrics registers follow mode's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsctl_follow_objects",
			Help: "KMS v2 objects in etcd per resource and key_id (first 16 hex digits of its SHA-256), at the last audit.",
		}, []string{"resource", "key_id_hash"}),
		notCurrent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsctl_follow_objects_not_current",
			Help: "KMS v2 objects in etcd per resource under a key_id other than the one keywarden serves now, at the last audit.",
		}, []string{"resource"}),
		currentKey: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsctl_follow_current_key_info",
			Help: "The key_id keywarden's Status reports now (hashed); 1 for the current one.",
		}, []string{"key_id_hash"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsctl_follow_last_success_timestamp_seconds",
			Help: "When a step (pickup, migrate, audit) last succeeded, in seconds since the epoch.",
		}, []string{"step"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsctl_follow_failures_total",
			Help: "Steps that failed (status, pickup, migrate, audit); follow mode retries them.",
		}, []string{"step"}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsctl_follow_rotations_total",
			Help: "Key changes followed to the end: picked up, migrated, and audited with no object left under another key.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kmsctl_follow_leader",
			Help: "1 while this replica holds the lease and acts, 0 while it stands by.",
		}),
	}
	reg.MustRegister(m.objects, m.notCurrent, m.currentKey, m.lastSuccess, m.failures, m.rotations, m.leader)
	for _, s := range []string{StepStatus, StepPickup, StepMigrate, StepAudit} {
		m.failures.WithLabelValues(s) // exported at 0 from the start, so rate() sees the first failure
	}
	return m
}

// SetLeader records whether this replica acts.
func (m *Metrics) SetLeader(on bool) {
	if m == nil {
		return
	}
	v := 0.0
	if on {
		v = 1
	}
	m.leader.Set(v)
}

func (m *Metrics) current(keyID string) {
	if m == nil {
		return
	}
	m.currentKey.Reset()
	m.currentKey.WithLabelValues(metrics.HashKeyID(keyID)).Set(1)
}

func (m *Metrics) failed(step string) {
	if m != nil {
		m.failures.WithLabelValues(step).Inc()
	}
}

func (m *Metrics) succeeded(step string, t time.Time) {
	if m != nil {
		m.lastSuccess.WithLabelValues(step).Set(float64(t.UnixNano()) / 1e9)
	}
}

func (m *Metrics) rotated() {
	if m != nil {
		m.rotations.Inc()
	}
}

// Audited replaces the object counts with counts, an audit's result, for
// current as the key keywarden serves.
func (m *Metrics) Audited(counts Counts, current string) {
	if m == nil {
		return
	}
	m.objects.Reset()
	m.notCurrent.Reset()
	for res, keys := range counts {
		m.notCurrent.WithLabelValues(res).Set(0)
		for k, n := range keys {
			m.objects.WithLabelValues(res, metrics.HashKeyID(k)).Add(float64(n))
			if !keystore.SameVersion(k, current) {
				m.notCurrent.WithLabelValues(res).Add(float64(n))
			}
		}
	}
}

// MetricNames are the names of the metrics NewMetrics registers (the alert
// tests check alerts.yaml against them).
func MetricNames() []string {
	return []string{
		"kmsctl_follow_objects", "kmsctl_follow_objects_not_current", "kmsctl_follow_current_key_info",
		"kmsctl_follow_last_success_timestamp_seconds", "kmsctl_follow_failures_total",
		"kmsctl_follow_rotations_total", "kmsctl_follow_leader",
	}
}

package metrics

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// kmsMethods are the KMS v2 methods keywarden serves; their series exist
// (at zero) from the start, so rates and alerts work before the first call.
var kmsMethods = []string{
	"/v2.KeyManagementService/Status",
	"/v2.KeyManagementService/Encrypt",
	"/v2.KeyManagementService/Decrypt",
}

// numCodes is the number of gRPC status codes (OK through Unauthenticated).
const numCodes = int(codes.Unauthenticated) + 1

// rpcMetrics are the per-RPC series. Their names and labels are those of
// go-grpc-middleware's Prometheus provider (grpc_server_started_total,
// grpc_server_handled_total, grpc_server_handling_seconds with grpc_type,
// grpc_service, grpc_method, grpc_code), so its dashboards work; but every
// child is resolved once, when the method is first seen, and a call costs
// two counter increments and one histogram observation with no label
// lookup. (The provider hashes label values on each of its five updates per
// call, and its message counters say nothing for unary RPCs.)
type rpcMetrics struct {
	started *prometheus.CounterVec
	handled *prometheus.CounterVec
	seconds *prometheus.HistogramVec

	known map[string]*RPC // the KMS methods: read-only after New
	mu    sync.Mutex
	other map[string]*RPC // anything else a client calls
}

// RPC holds one method's resolved series.
type RPC struct {
	started prometheus.Counter
	handled [numCodes]prometheus.Counter
	seconds prometheus.Observer
}

func newRPCMetrics() *rpcMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	r := &rpcMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "grpc_server", Name: "started_total",
			Help: "KMS v2 RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "grpc_server", Name: "handled_total",
			Help: "KMS v2 RPCs completed on the server, by gRPC code.",
		}, append(labels, "grpc_code")),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "grpc_server", Name: "handling_seconds",
			Help:    "Time from receiving a KMS v2 RPC to its answer, in seconds.",
			Buckets: latencyBuckets,
		}, labels),
		known: map[string]*RPC{},
		other: map[string]*RPC{},
	}
	for _, m := range kmsMethods {
		r.known[m] = r.resolve(m)
	}
	return r
}

func (r *rpcMetrics) resolve(fullMethod string) *RPC {
	service, method := "unknown", fullMethod
	if s, m, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/"); ok {
		service, method = s, m
	}
	x := &RPC{
		started: r.started.WithLabelValues("unary", service, method),
		seconds: r.seconds.WithLabelValues("unary", service, method),
	}
	for c := range numCodes {
		x.handled[c] = r.handled.WithLabelValues("unary", service, method, codes.Code(c).String())
	}
	return x
}

// RPC returns the series of a gRPC method (its full name, as in
// grpc.UnaryServerInfo). A nil *Metrics returns a nil *RPC, which records
// nothing.
func (m *Metrics) RPC(fullMethod string) *RPC {
	if m == nil {
		return nil
	}
	if x, ok := m.rpc.known[fullMethod]; ok {
		return x
	}
	m.rpc.mu.Lock()
	defer m.rpc.mu.Unlock()
	x, ok := m.rpc.other[fullMethod]
	if !ok {
		x = m.rpc.resolve(fullMethod)
		m.rpc.other[fullMethod] = x
	}
	return x
}

// Started counts a call.
func (x *RPC) Started() {
	if x != nil {
		x.started.Inc()
	}
}

// Handled counts a call's end with its code and observes its duration.
func (x *RPC) Handled(code codes.Code, d time.Duration) {
	if x == nil {
		return
	}
	if int(code) >= numCodes || int(code) < 0 {
		code = codes.Unknown
	}
	x.handled[code].Inc()
	x.seconds.Observe(d.Seconds())
}

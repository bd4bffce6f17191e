package metrics

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HealthFunc reports readiness: ok, or a short reason.
type HealthFunc func() (ok bool, reason string)

// Handler serves /metrics, /healthz, /livez and /readyz.
//
// /healthz and /livez are liveness: they answer 200 while the process serves
// HTTP. A keystore outage must not make the kubelet restart the plugin, which
// would only throw away the local KEKs that keep the apiserver working.
// /readyz is readiness: the cached keystore health that KMS Status reports.
func Handler(m *Metrics, ready HealthFunc) http.Handler {
	mux := http.NewServeMux()
	if m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	}
	live := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	}
	mux.HandleFunc("GET /healthz", live)
	mux.HandleFunc("GET /livez", live)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ok, reason := ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, reason)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

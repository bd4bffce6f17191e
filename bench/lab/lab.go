package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/bench/floor"
	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/keystore/keystoretest"
	"github.com/keywarden/keywarden/kms"
	"github.com/keywarden/keywarden/kms/kmsgrpc"
	"github.com/keywarden/keywarden/metrics"
)

// Modes of a Server.
const (
	// ModeLocalKEK is keywarden's kms.Service, unchanged.
	ModeLocalKEK = "local-kek"
	// ModePerCall is the benchmark-only PerCall service: one keystore call
	// per request.
	ModePerCall = "per-call"
)

// Config configures a Server.
type Config struct {
	// Keystore is the root keystore URI, as keywarden's --keystore.
	Keystore string
	// Delay is added to every keystore call (keystoretest.Spy).
	Delay time.Duration
	// Mode is ModeLocalKEK (default) or ModePerCall.
	Mode string
	// KEKMaxUses bounds one local KEK's Encrypts (0: keywarden's default);
	// the storm uses it to make ciphertexts under several KEKs.
	KEKMaxUses uint64
	// Bare leaves out keywarden's interceptors (metrics, logging,
	// recovery): a diagnostic that splits keywarden's cost over the floor
	// into its service's and its interceptors'. Never how keywarden runs.
	Bare   bool
	Logger *slog.Logger
}

// Server is keywarden's server as cmd/keywarden wires it (kms.Service
// served by kms/kmsgrpc: metrics, logging, recovery, gRPC limits), with the keystore behind
// a keystoretest.Spy so that a benchmark can slow it down and count its
// calls. It serves the "slow keystore" scenario, which needs the delay
// inside the server process, and the in-process go test benchmarks.
type Server struct {
	Spy     *keystoretest.Spy
	Metrics *metrics.Metrics
	GRPC    *grpc.Server
	kms     *kms.Service
	healthy func() (bool, string)
	cancel  context.CancelFunc
}

// New opens the keystore and builds the service and its gRPC server.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	backend, err := byuri.Open(ctx, cfg.Keystore)
	if err != nil {
		return nil, fmt.Errorf("open keystore: %w", err)
	}
	spy := keystoretest.NewSpy(backend)
	spy.SetDelay(cfg.Delay)
	l := &Server{Spy: spy, Metrics: metrics.New()}
	var svc service.Service
	switch cfg.Mode {
	case "", ModeLocalKEK:
		k, err := kms.New(ctx, kms.Config{Backend: spy, Metrics: l.Metrics, Logger: cfg.Logger, KEKMaxUses: cfg.KEKMaxUses})
		if err != nil {
			_ = backend.Close()
			return nil, err
		}
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		go k.Run(rctx)
		l.kms, l.cancel, l.healthy, svc = k, cancel, k.Healthy, k
	case ModePerCall:
		l.healthy = func() (bool, string) { return true, "ok" }
		svc = &PerCall{Backend: spy}
	default:
		_ = backend.Close()
		return nil, fmt.Errorf("unknown lab mode %q (want %s or %s)", cfg.Mode, ModeLocalKEK, ModePerCall)
	}
	if cfg.Bare {
		l.GRPC = floor.NewGRPCServer("lab", svc)
	} else {
		l.GRPC = kmsgrpc.NewServer(svc, kmsgrpc.Options{Metrics: l.Metrics, Logger: cfg.Logger})
	}
	return l, nil
}

// SpyCounts is what /spy answers: keystore calls since start.
type SpyCounts struct {
	Wraps   int64 `json:"wraps"`
	Unwraps int64 `json:"unwraps"`
	KeyIDs  int64 `json:"key_ids"`
}

// Counts reads the keystore call counters.
func (l *Server) Counts() SpyCounts {
	return SpyCounts{Wraps: l.Spy.Wraps.Load(), Unwraps: l.Spy.Unwraps.Load(), KeyIDs: l.Spy.KeyIDs.Load()}
}

// Handler serves keywarden's /metrics, /healthz, /readyz and, for the
// benchmark, GET /spy with SpyCounts as JSON.
func (l *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", metrics.Handler(l.Metrics, l.healthy))
	mux.HandleFunc("GET /spy", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(l.Counts())
	})
	return mux
}

// Serve serves KMS v2 on ln until Close.
func (l *Server) Serve(ln net.Listener) error { return l.GRPC.Serve(ln) }

// Close stops the server, the health loop and the keystore.
func (l *Server) Close() error {
	l.GRPC.Stop()
	if l.cancel != nil {
		l.cancel()
	}
	return l.Spy.Close()
}

// Command keywarden is a Kubernetes KMS v2 plugin. kube-apiserver reaches it
// over a unix socket; it wraps DEK seeds under a local KEK, itself wrapped by
// a root key in a pluggable keystore.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/keywarden/keywarden/internal/buildinfo"
	"github.com/keywarden/keywarden/internal/fipsmode"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/keystore/recovery"
	"github.com/keywarden/keywarden/kms"
	"github.com/keywarden/keywarden/kms/envelope"
	"github.com/keywarden/keywarden/kms/kmsgrpc"
	"github.com/keywarden/keywarden/metrics"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "keywarden:", err)
		os.Exit(1)
	}
}

type options struct {
	listen          string
	keystores       []string
	metricsAddr     string
	healthAddr      string
	checkInterval   time.Duration
	keystoreTimeout time.Duration
	grace           time.Duration
	kekMaxUses      uint64
	kekMaxAge       time.Duration
	cacheSize       int
	revalidate      time.Duration
	maxUnwraps      int
	stateFile       string
	recoveryKey     string
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
	version         bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("keywarden", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "unix:///run/keywarden/kms.sock", "KMS v2 socket, unix:///absolute/path; its directory is made 0700, the socket 0600")
	fs.Func("keystore", "root keystore URI: file:///etc/keywarden/keyset.json, pkcs11:token=…;object=…?module-path=…&pin-source=file:…; repeat it for several roots (at most 4), the first primary: each new local KEK is wrapped under every one, and Decrypt uses the first that answers", func(v string) error {
		if v == "" {
			return errors.New("empty keystore URI")
		}
		if slices.Contains(o.keystores, v) {
			return errors.New("the same keystore twice")
		}
		if len(o.keystores) == envelope.MaxRoots {
			return fmt.Errorf("at most %d keystores", envelope.MaxRoots)
		}
		o.keystores = append(o.keystores, v)
		return nil
	})
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:8095", "address for /metrics, /healthz, /livez, /readyz (empty disables)")
	fs.StringVar(&o.healthAddr, "health-addr", "", "a second address for /healthz, /livez, /readyz alone, for the kubelet's probes, e.g. 127.0.0.1:8096, so --metrics-addr can move to the node's address (empty: none)")
	fs.DurationVar(&o.checkInterval, "check-interval", kms.DefaultCheckInterval, "how often the keystore is checked (root key_id, health)")
	fs.DurationVar(&o.keystoreTimeout, "keystore-timeout", kms.DefaultKeystoreTimeout, "timeout of every keystore call")
	fs.DurationVar(&o.grace, "keystore-grace", kms.DefaultGrace, "how long the keystore may fail checks, while a local KEK is in hand, before Status turns unhealthy")
	fs.Uint64Var(&o.kekMaxUses, "kek-max-uses", kms.DefaultKEKMaxUses, "Encrypts one local KEK may seal before a new one is made")
	fs.DurationVar(&o.kekMaxAge, "kek-max-age", kms.DefaultKEKMaxAge, "age after which a new local KEK is made")
	fs.IntVar(&o.cacheSize, "kek-cache-size", kms.DefaultCacheSize, "unwrapped local KEKs kept in memory for Decrypt")
	fs.DurationVar(&o.revalidate, "kek-revalidate-interval", kms.DefaultRevalidateInterval, "how often the root key versions of the KEKs in memory are re-checked: a disabled or destroyed version stops decrypting within about this long")
	fs.IntVar(&o.maxUnwraps, "keystore-max-unwraps", kms.DefaultMaxUnwraps, "keystore unwraps (distinct local KEKs) in flight at once; a Decrypt needing one more gets ResourceExhausted")
	fs.StringVar(&o.recoveryKey, "recovery-public-key", "", "public recovery keyset (file:///… or a path, from kmsctl recovery init): every new local KEK is also sealed to it, for offline recovery with the private keyset; a private keyset is refused (optional)")
	fs.StringVar(&o.stateFile, "state-file", "", "keep the current wrapped local KEK here so restarts reuse it (optional)")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long SIGTERM waits for in-flight RPCs")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return o, nil
}

func newLogger(o *options, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	ho := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	default:
		return nil, fmt.Errorf("--log-format must be json or text, not %q", o.logFormat)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.version {
		fmt.Fprint(stdout, buildinfo.String("keywarden"))
		return nil
	}
	if len(o.keystores) == 0 {
		return errors.New("--keystore is required (e.g. file:///etc/keywarden/keyset.json)")
	}
	log, err := newLogger(o, stderr)
	if err != nil {
		return err
	}
	sockPath, err := socketPath(o.listen)
	if err != nil {
		return err
	}

	var roots []keystore.Backend
	defer func() {
		for _, b := range roots {
			_ = b.Close()
		}
	}()
	names := make([]string, 0, len(o.keystores))
	for i, uri := range o.keystores {
		b, err := byuri.Open(ctx, uri)
		if err != nil {
			if len(o.keystores) == 1 {
				return fmt.Errorf("open keystore: %w", err)
			}
			// With several roots, one that does not open (its key gone,
			// its credentials refused) must not take the others down
			// with it: that is what a second root is for. A malformed
			// URI still fails here.
			lb, lerr := byuri.OpenLater(uri, err)
			if lerr != nil {
				return fmt.Errorf("open keystore %d of %d: %w", i+1, len(o.keystores), lerr)
			}
			log.Warn("root keystore did not open; starting without it, and trying it again at its next use",
				"root", i, "backend", lb.Name(), "error", err)
			b = lb
		}
		roots = append(roots, b)
		names = append(names, b.Name())
	}

	var rec *recovery.PublicKey
	if o.recoveryKey != "" {
		if rec, err = recovery.OpenPublic(o.recoveryKey); err != nil {
			return fmt.Errorf("--recovery-public-key: %w", err)
		}
		// Under fips140=only OpenPublic refused it; under on, it works
		// outside the approved algorithms, which the operator should know.
		if fipsmode.Mode() == fipsmode.On {
			log.Warn("FIPS 140-3 mode: the recovery key's HPKE (X25519) is not an approved algorithm; every new local KEK is also sealed with it (docs/fips.md)")
		}
	}

	m := metrics.New()
	m.SetVersion(buildinfo.Version())
	m.SetFIPS140(fipsmode.Mode(), fipsmode.Module())
	cfg := kms.Config{
		Metrics:            m,
		Logger:             log,
		CheckInterval:      o.checkInterval,
		KeystoreTimeout:    o.keystoreTimeout,
		Grace:              o.grace,
		KEKMaxUses:         o.kekMaxUses,
		KEKMaxAge:          o.kekMaxAge,
		CacheSize:          o.cacheSize,
		RevalidateInterval: o.revalidate,
		MaxUnwraps:         o.maxUnwraps,
		StateFile:          o.stateFile,
	}
	if rec != nil {
		cfg.Recovery = rec
	}
	if len(roots) == 1 {
		cfg.Backend = roots[0]
	} else {
		cfg.Roots = roots
	}
	svc, err := kms.New(ctx, cfg)
	if err != nil {
		return err
	}
	if ok, reason := svc.Healthy(); !ok {
		log.Warn("starting unhealthy; will keep checking the keystore", "reason", reason)
	}

	ln, err := listenUnix(sockPath, log)
	if err != nil {
		return err
	}
	srv := kmsgrpc.NewServer(svc, kmsgrpc.Options{Metrics: m, Logger: log})

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go svc.Run(runCtx)

	// The HTTP servers: --metrics-addr (metrics and health) and, if set,
	// --health-addr (health alone, for probes that must stay on loopback).
	var httpSrvs []*http.Server
	httpErr := make(chan error, 2)
	for _, h := range []struct {
		flag, addr string
		m          *metrics.Metrics
	}{{"--metrics-addr", o.metricsAddr, m}, {"--health-addr", o.healthAddr, nil}} {
		if h.addr == "" {
			continue
		}
		hl, err := net.Listen("tcp", h.addr)
		if err != nil {
			_ = ln.Close()
			for _, s := range httpSrvs {
				_ = s.Close()
			}
			return fmt.Errorf("listen on %s: %w", h.flag, err)
		}
		s := &http.Server{Handler: metrics.Handler(h.m, svc.Healthy), ReadHeaderTimeout: 5 * time.Second}
		httpSrvs = append(httpSrvs, s)
		go func() { httpErr <- s.Serve(hl) }()
		if h.m != nil {
			log.Info("serving metrics and health", "addr", hl.Addr().String())
		} else {
			log.Info("serving health", "addr", hl.Addr().String())
		}
	}

	grpcErr := make(chan error, 1)
	go func() { grpcErr <- srv.Serve(ln) }()
	log.Info("keywarden serving KMS v2", "version", buildinfo.Version(), "commit", buildinfo.Commit(), "socket", sockPath, "keystore", strings.Join(names, ","), "recovery_key", recoveryKeyID(rec),
		"fips140", fipsmode.Mode(), "fips140_module", fipsmode.Module())

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining in-flight RPCs", "timeout", o.shutdownTimeout.String())
	case serveErr = <-grpcErr:
	case serveErr = <-httpErr:
	}
	drained := make(chan struct{})
	go func() { srv.GracefulStop(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(o.shutdownTimeout):
		log.Warn("shutdown timeout: closing remaining RPCs")
		srv.Stop()
	}
	for _, s := range httpSrvs {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.Shutdown(sctx)
		scancel()
	}
	ln.Remove(log)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

// recoveryKeyID names the recovery key for the start-up log ("" if none).
func recoveryKeyID(rec *recovery.PublicKey) string {
	if rec == nil {
		return ""
	}
	id, _ := rec.KeyID(context.Background())
	return id
}

// Command kwlab is a BENCHMARK-ONLY keywarden server: kms.Service wired as
// cmd/keywarden wires it, with the root keystore behind keystoretest.Spy so
// that every keystore call can be slowed down (--keystore-delay) and
// counted (GET /spy on --http-addr), and an optional per-call mode
// (--mode per-call: one keystore call per request, no local KEK) to compare
// with. It exists for the "slow keystore" and "cold-start storm" scenarios
// of bench/; never deploy it.
//
//	kwlab --listen unix:///tmp/kwb/lab/kms.sock --keystore file:///tmp/kwb/keyset.json \
//	      --keystore-delay 20ms --mode local-kek --http-addr 127.0.0.1:18095
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keywarden/keywarden/bench/floor"
	"github.com/keywarden/keywarden/bench/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "kwlab:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("kwlab", flag.ContinueOnError)
	listen := fs.String("listen", "", "KMS v2 socket, unix:///absolute/path")
	keystore := fs.String("keystore", "", "root keystore URI, as keywarden's --keystore")
	delay := fs.Duration("keystore-delay", 0, "latency added to every keystore call")
	mode := fs.String("mode", lab.ModeLocalKEK, "local-kek (keywarden's kms.Service) or per-call (benchmark-only: a keystore call per request)")
	maxUses := fs.Uint64("kek-max-uses", 0, "Encrypts per local KEK (0: keywarden's default)")
	bare := fs.Bool("bare", false, "diagnostic: serve without keywarden's interceptors (metrics, logging, recovery)")
	httpAddr := fs.String("http-addr", "", "address for /metrics, /readyz and /spy (keystore call counts); empty disables")
	logLevel := fs.String("log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	path, err := floor.SocketPath(*listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv, err := lab.New(ctx, lab.Config{
		Keystore: *keystore, Delay: *delay, Mode: *mode, KEKMaxUses: *maxUses, Bare: *bare, Logger: log,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	if *httpAddr != "" {
		hl, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return err
		}
		hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(hl) }()
		defer hs.Close()
	}
	ln, err := floor.Listen(path)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("kwlab serving", "socket", path, "mode", *mode, "keystore_delay", delay.String())
	select {
	case <-ctx.Done():
		srv.GRPC.GracefulStop()
		_ = os.Remove(path)
		return nil
	case err := <-errc:
		return err
	}
}

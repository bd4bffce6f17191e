// Command kwfloor is the benchmark floor: a no-op KMS v2 plugin that copies
// bytes, served through k8s.io/kms/pkg/service on the same kind of gRPC
// server and unix socket as keywarden. Whatever keywarden costs beyond it is
// keywarden's own.
//
//	kwfloor --listen unix:///tmp/kwb/floor/kms.sock
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keywarden/keywarden/bench/floor"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "kwfloor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("kwfloor", flag.ContinueOnError)
	listen := fs.String("listen", "", "KMS v2 socket, unix:///absolute/path")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path, err := floor.SocketPath(*listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	ln, err := floor.Listen(path)
	if err != nil {
		return err
	}
	srv := floor.NewGRPCServer(path, floor.Service{})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		srv.GracefulStop()
		_ = os.Remove(path)
		return nil
	case err := <-errc:
		return err
	}
}

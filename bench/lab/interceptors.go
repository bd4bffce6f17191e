package lab

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/metrics"
)

// KeywardenInterceptors mirrors cmd/keywarden's interceptor chain: the
// Prometheus RPC metrics, the per-RPC log (debug for successes, so usually
// only a level check) and panic recovery, with the same costs on the hot
// path.
func KeywardenInterceptors(m *metrics.Metrics, log *slog.Logger) grpc.ServerOption {
	return grpc.ChainUnaryInterceptor(
		m.GRPC.UnaryServerInterceptor(),
		logRPC(log),
		recovery.UnaryServerInterceptor(recovery.WithRecoveryHandler(func(p any) error {
			log.Error("panic in RPC handler", "panic", fmt.Sprint(p))
			return status.Error(codes.Internal, "internal error")
		})),
	)
}

func logRPC(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		level := slog.LevelDebug
		code := status.Code(err)
		switch {
		case code == codes.Internal || code == codes.Unknown:
			level = slog.LevelError
		case err != nil:
			level = slog.LevelWarn
		}
		if !log.Enabled(ctx, level) {
			return resp, err
		}
		method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
		log.LogAttrs(ctx, level, "kms rpc", slog.String("method", method), slog.String("code", code.String()),
			slog.Duration("duration", time.Since(start)))
		return resp, err
	}
}

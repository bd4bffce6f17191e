// Package kmsgrpc serves a KMS v2 service over gRPC the way keywarden does:
// message caps, one interceptor for metrics, logging and panic recovery,
// and the service registered through k8s.io/kms/pkg/service. cmd/keywarden
// and the benchmark servers in bench/ both use it, so the benchmarks
// measure the code the binary runs.
package kmsgrpc

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/metrics"
)

// MaxMsgSize caps gRPC messages both ways. A KMS v2 DecryptRequest is at
// most about 34 kB (1 kB ciphertext, 1 kB key_id, 32 kB annotations);
// 256 KiB leaves room and stays far below gRPC's 4 MiB default.
const MaxMsgSize = 256 << 10

// Options configures NewServer.
//
// There is no per-call timeout: the caller's deadline, which gRPC carries
// to the handler's context, bounds each call (kube-apiserver sets its
// EncryptionConfiguration timeout, 3 s by default, on every one), and the
// service bounds each keystore call itself (kms.Config.KeystoreTimeout).
// k8s.io/kms/pkg/service.NewGRPCService takes an address and a timeout,
// but uses them only in its own ListenAndServe, which keywarden does not
// call, so NewServer passes neither.
type Options struct {
	// Metrics records every RPC; nil records nothing.
	Metrics *metrics.Metrics
	// Logger gets one line per failed RPC (debug for successes) and
	// recovered panics; nil discards.
	Logger *slog.Logger
}

// NewServer returns a gRPC server with svc registered and keywarden's
// interceptor installed.
func NewServer(svc service.Service, o Options) *grpc.Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxMsgSize),
		grpc.MaxSendMsgSize(MaxMsgSize),
		grpc.UnaryInterceptor(Interceptor(o.Metrics, o.Logger)),
	)
	kmsapi.RegisterKeyManagementServiceServer(srv, service.NewGRPCService("", 0, svc))
	return srv
}

// Interceptor counts and times every RPC by method and code, logs it with
// the apiserver's request uid (successes at debug: the cold-start storm
// would flood info; failures at warn; bugs at error), and turns a panic in
// the handler into codes.Internal instead of a dead plugin. It is one
// function rather than a chain of three, with the method's series resolved
// in advance: it runs on every Encrypt and Decrypt. Neither plaintext nor
// key bytes are in any logged field.
func Interceptor(m *metrics.Metrics, log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		rpc := m.RPC(info.FullMethod)
		rpc.Started()
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				log.LogAttrs(ctx, slog.LevelError, "panic in RPC handler", slog.String("method", info.FullMethod), slog.String("panic", fmt.Sprint(p)))
				resp, err = nil, status.Error(codes.Internal, "internal error")
			}
			d := time.Since(start)
			code := status.Code(err)
			rpc.Handled(code, d)
			logRPC(ctx, log, info.FullMethod, req, code, err, d)
		}()
		return handler(ctx, req)
	}
}

func logRPC(ctx context.Context, log *slog.Logger, fullMethod string, req any, code codes.Code, err error, d time.Duration) {
	level := slog.LevelDebug
	switch {
	case code == codes.Internal || code == codes.Unknown:
		level = slog.LevelError
	case err != nil:
		level = slog.LevelWarn
	}
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]),
		slog.String("code", code.String()),
		slog.Duration("duration", d),
	}
	if u, ok := req.(interface{ GetUid() string }); ok && u.GetUid() != "" {
		attrs = append(attrs, slog.String("uid", u.GetUid()))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	log.LogAttrs(ctx, level, "kms rpc", attrs...)
}

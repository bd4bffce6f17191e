// Package floor is the benchmark floor: a no-op KMS v2 service that copies
// bytes, and the gRPC and unix-socket plumbing every benchmark server
// shares with it. It imports nothing of keywarden's, so a floor process
// carries only what any KMS v2 plugin must (gRPC, protobuf,
// k8s.io/kms/pkg/service): whatever keywarden costs beyond it is its own.
package floor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"
	"k8s.io/kms/pkg/service"
)

// MaxMsgSize is the gRPC message cap keywarden's server uses; the floor and
// the lab servers use it too so that the servers differ only in their work.
const MaxMsgSize = 256 << 10

// KeyID is the key_id the floor answers.
const KeyID = "floor"

// Service is the no-op KMS v2 service: Encrypt and Decrypt copy their
// input. Copying (rather than aliasing) keeps it honest: a real plugin
// returns fresh bytes.
type Service struct{}

var _ service.Service = Service{}

// Status implements service.Service.
func (Service) Status(context.Context) (*service.StatusResponse, error) {
	return &service.StatusResponse{Version: "v2", Healthz: "ok", KeyID: KeyID}, nil
}

// Encrypt implements service.Service.
func (Service) Encrypt(_ context.Context, _ string, pt []byte) (*service.EncryptResponse, error) {
	return &service.EncryptResponse{Ciphertext: append([]byte(nil), pt...), KeyID: KeyID}, nil
}

// Decrypt implements service.Service.
func (Service) Decrypt(_ context.Context, _ string, req *service.DecryptRequest) ([]byte, error) {
	return append([]byte(nil), req.Ciphertext...), nil
}

// NewGRPCServer returns a gRPC server with keywarden's message caps and svc
// registered through k8s.io/kms/pkg/service, as cmd/keywarden does. opts
// add interceptors; the floor passes none.
func NewGRPCServer(name string, svc service.Service, opts ...grpc.ServerOption) *grpc.Server {
	all := append([]grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMsgSize), grpc.MaxSendMsgSize(MaxMsgSize)}, opts...)
	srv := grpc.NewServer(all...)
	kmsapi.RegisterKeyManagementServiceServer(srv, service.NewGRPCService(name, 10*time.Second, svc))
	return srv
}

// Listen listens on a unix socket at path, 0600 in a 0700 directory, as
// keywarden does. A stale socket (a socket file nobody answers on) is
// replaced; anything else at path is refused.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%s is in use", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	return ln, err
}

// SocketPath returns the path of a unix:///absolute/path address.
func SocketPath(addr string) (string, error) {
	p, ok := strings.CutPrefix(addr, "unix://")
	if !ok || !filepath.IsAbs(p) {
		return "", fmt.Errorf("%q: want unix:///absolute/path", addr)
	}
	return filepath.Clean(p), nil
}

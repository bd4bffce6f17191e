package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/internal/follow"
)

func TestFollowUsage(t *testing.T) {
	etcd := []string{"--etcd-endpoints", "http://127.0.0.1:1"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no etcd", []string{"follow"}, "etcd-endpoints"},
		{"argument", append([]string{"follow", "extra"}, etcd...), "unknown command"},
		{"log format", append([]string{"follow", "--log-format", "xml"}, etcd...), "--log-format"},
		{"via", append([]string{"follow", "--via", "magic"}, etcd...), "--via"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, "", false, tt.args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, exitUsage, tt.want)
			}
		})
	}
}

// TestFollowStatus: follow mode acts only on a key_id every keywarden
// reports, healthy.
func TestFollowStatus(t *testing.T) {
	status := func(key, health string) func() *kmsapi.StatusResponse {
		return func() *kmsapi.StatusResponse {
			return &kmsapi.StatusResponse{Version: "v2", Healthz: health, KeyId: key}
		}
	}
	a, a2 := startPlugin(t, status("k1", "ok")), startPlugin(t, status("k1", "ok"))
	b, sick := startPlugin(t, status("k2", "ok")), startPlugin(t, status("k1", "keystore down"))
	tests := []struct {
		name    string
		sockets []string
		want    string
		wantErr error
	}{
		{"one", []string{a}, "k1", nil},
		{"agree", []string{a, a2}, "k1", nil},
		{"disagree", []string{a, b}, "", follow.ErrNodesDisagree},
		{"unhealthy", []string{a, sick}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &followFlags{sock: socketFlags{socket: tt.sockets[0], timeout: 5 * time.Second}, nodeSockets: tt.sockets[1:]}
			got, err := (&globals{}).followStatus(f)(context.Background())
			switch {
			case tt.want != "" && (err != nil || got != tt.want):
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			case tt.want == "" && err == nil:
				t.Fatalf("got %q, want an error", got)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

// DefaultCallTimeout is the per-call deadline the client sets, as
// kube-apiserver does on every KMS call.
const DefaultCallTimeout = 10 * time.Second

// Client talks KMS v2 to one socket the way kube-apiserver does: insecure
// transport over a unix socket, authority "localhost", a deadline on every
// call, and one connection unless more are asked for. With several
// connections calls go round robin.
type Client struct {
	conns   []*grpc.ClientConn
	kms     []kmsapi.KeyManagementServiceClient
	next    atomic.Uint64
	Timeout time.Duration
}

// Dial connects to the unix socket at path with conns connections (at
// least one) and waits until each is ready.
func Dial(ctx context.Context, path string, conns int) (*Client, error) {
	c := &Client{Timeout: DefaultCallTimeout}
	for range max(conns, 1) {
		cc, err := grpc.NewClient("passthrough:///"+path,
			grpc.WithAuthority("localhost"),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", addr)
			}),
		)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("dial %s: %w", path, err)
		}
		c.conns = append(c.conns, cc)
		c.kms = append(c.kms, kmsapi.NewKeyManagementServiceClient(cc))
	}
	// One Status per connection makes each connect now, not in the first
	// measured call.
	for i := range c.kms {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.kms[i].Status(sctx, &kmsapi.StatusRequest{}, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("status %s: %w", path, err)
		}
	}
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() error {
	var errs []error
	for _, cc := range c.conns {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

func (c *Client) pick() kmsapi.KeyManagementServiceClient {
	if len(c.kms) == 1 {
		return c.kms[0]
	}
	return c.kms[c.next.Add(1)%uint64(len(c.kms))]
}

// Status calls Status.
func (c *Client) Status(ctx context.Context) (*kmsapi.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	return c.pick().Status(ctx, &kmsapi.StatusRequest{})
}

// Encrypt calls Encrypt.
func (c *Client) Encrypt(ctx context.Context, uid string, pt []byte) (*kmsapi.EncryptResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	return c.pick().Encrypt(ctx, &kmsapi.EncryptRequest{Uid: uid, Plaintext: pt})
}

// Decrypt calls Decrypt with what Encrypt returned.
func (c *Client) Decrypt(ctx context.Context, uid string, e *kmsapi.EncryptResponse) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	resp, err := c.pick().Decrypt(ctx, &kmsapi.DecryptRequest{
		Uid: uid, Ciphertext: e.Ciphertext, KeyId: e.KeyId, Annotations: e.Annotations,
	})
	if err != nil {
		return nil, err
	}
	return resp.Plaintext, nil
}

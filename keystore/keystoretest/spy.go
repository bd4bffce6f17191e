package keystoretest

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

// Spy wraps a real backend, counts its calls, and can add latency or fail on
// demand. It is the one test double for "a keystore that is slow, down or
// being watched"; the keys underneath stay real.
type Spy struct {
	keystore.Backend

	Wraps, Unwraps, KeyIDs atomic.Int64

	mu    sync.Mutex
	delay time.Duration
	err   error
}

// NewSpy wraps b.
func NewSpy(b keystore.Backend) *Spy { return &Spy{Backend: b} }

// SetDelay adds d to every call (honouring the caller's context).
func (s *Spy) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// SetErr makes every call fail with err (nil restores service).
func (s *Spy) SetErr(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

func (s *Spy) before(ctx context.Context) error {
	s.mu.Lock()
	d, err := s.delay, s.err
	s.mu.Unlock()
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

// Wrap implements keystore.Backend.
func (s *Spy) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	s.Wraps.Add(1)
	if err := s.before(ctx); err != nil {
		return keystore.Wrapped{}, err
	}
	return s.Backend.Wrap(ctx, pt, aad)
}

// Unwrap implements keystore.Backend.
func (s *Spy) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	s.Unwraps.Add(1)
	if err := s.before(ctx); err != nil {
		return nil, err
	}
	return s.Backend.Unwrap(ctx, w, aad)
}

// KeyID implements keystore.Backend.
func (s *Spy) KeyID(ctx context.Context) (string, error) {
	s.KeyIDs.Add(1)
	if err := s.before(ctx); err != nil {
		return "", err
	}
	return s.Backend.KeyID(ctx)
}

// Package remote holds what every network keystore backend (awskms, gcpkms,
// azurekv, vault) does the same way: the URI options they share, per-attempt
// timeouts, retries with backoff and full jitter for idempotent calls, the
// error classes every keystore means the same way, the health probe, the
// associated data gcpkms and azurekv bind (BoundAAD), and a TTL cache for
// the key metadata that KeyID serves.
package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/keywarden/keywarden/keystore"
)

// Defaults shared by the remote backends; each backend's URI may override
// the timeout and the key-id TTL.
const (
	DefaultTimeout  = 5 * time.Second
	DefaultAttempts = 3
	DefaultKeyIDTTL = time.Minute
	baseBackoff     = 50 * time.Millisecond
	maxBackoff      = 2 * time.Second
)

// Retry runs one remote call, retrying it only when it failed with a class
// worth retrying (ErrUnavailable, ErrThrottled). Only idempotent calls
// (encrypt, decrypt, reads) go through Do; a call that changes key state
// (rotate, create) is run once with Once.
type Retry struct {
	// Attempts is the total number of tries (at least 1).
	Attempts int
	// Timeout bounds each attempt; the caller's context bounds them all.
	Timeout time.Duration
	// Base and Max shape the exponential backoff (full jitter).
	Base, Max time.Duration
}

// DefaultRetry is three attempts of at most timeout each.
func DefaultRetry(timeout time.Duration) Retry {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return Retry{Attempts: DefaultAttempts, Timeout: timeout, Base: baseBackoff, Max: maxBackoff}
}

// Retryable reports whether err is of a class a retry can help with.
func Retryable(err error) bool {
	return errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, keystore.ErrThrottled)
}

// Do runs op with a per-attempt timeout until it succeeds, fails with a
// class Retryable refuses, the attempts run out, or ctx ends. op must return
// errors already sorted into keystore's classes. When ctx ends, the error
// wraps ctx.Err() so that callers see context.Canceled or DeadlineExceeded.
func (r Retry) Do(ctx context.Context, op func(ctx context.Context) error) error {
	attempts := max(r.Attempts, 1)
	var err error
	for i := range attempts {
		if i > 0 {
			if werr := sleep(ctx, r.backoff(i)); werr != nil {
				return fmt.Errorf("%w (after %d attempts, last: %v)", werr, i, err)
			}
		}
		err = r.once(ctx, op)
		if err == nil || !Retryable(err) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// Once runs op a single time under the per-attempt timeout.
func (r Retry) Once(ctx context.Context, op func(ctx context.Context) error) error {
	return r.once(ctx, op)
}

func (r Retry) once(ctx context.Context, op func(ctx context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	actx, cancel := ctx, context.CancelFunc(func() {})
	if r.Timeout > 0 {
		actx, cancel = context.WithTimeout(ctx, r.Timeout)
	}
	defer cancel()
	err := op(actx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		// The caller gave up: report that, whatever the SDK made of it.
		if errors.Is(err, ctx.Err()) {
			return err
		}
		return fmt.Errorf("%w: %v", ctx.Err(), err)
	case actx.Err() != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || !classified(err)):
		// Our own per-attempt timeout: the keystore is too slow.
		return fmt.Errorf("%w: no answer within %s", keystore.ErrUnavailable, r.Timeout)
	}
	return err
}

// Budget is the longest Do can take when its caller's context never ends:
// every attempt timing out, with the longest backoff before each retry.
func (r Retry) Budget() time.Duration {
	attempts := max(r.Attempts, 1)
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return time.Duration(attempts)*timeout + time.Duration(attempts-1)*max(r.Max, 0)
}

// FetchTimeout bounds a Cache's shared fetch for a backend using r: a key
// read and the health probe's encrypt and decrypt, with a token renewal in
// front, are at most four calls through r.
func (r Retry) FetchTimeout() time.Duration { return 4 * r.Budget() }

func (r Retry) backoff(attempt int) time.Duration {
	d := r.Base << (attempt - 1)
	if d <= 0 || d > r.Max {
		d = r.Max
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d) + 1
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// classified reports whether err already carries one of keystore's classes.
func classified(err error) bool {
	for _, s := range []error{
		keystore.ErrInvalid, keystore.ErrKeyNotFound, keystore.ErrKeyDisabled,
		keystore.ErrPermission, keystore.ErrThrottled, keystore.ErrUnavailable, keystore.ErrConfig,
	} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// Cache holds one value fetched from the keystore (key metadata: the primary
// version and what KeyID reports) for a TTL. Concurrent refreshes share one
// fetch, which runs detached from every caller's cancellation and is bounded
// by the cache's own timeout instead: a caller that gives up leaves the
// others waiting on a fetch that goes on. The zero value is not usable; use
// NewCache.
type Cache[T any] struct {
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time

	mu  sync.RWMutex
	val T
	at  time.Time
	ok  bool

	sf singleflight.Group
}

// NewCache makes a cache whose values live ttl and whose shared fetch may
// take at most timeout (a Retry's FetchTimeout). now is
// injected by tests (nil means time.Now).
func NewCache[T any](ttl, timeout time.Duration, now func() time.Time) *Cache[T] {
	if now == nil {
		now = time.Now
	}
	if timeout <= 0 {
		timeout = DefaultRetry(0).FetchTimeout()
	}
	return &Cache[T]{ttl: ttl, timeout: timeout, now: now}
}

// Peek returns the cached value, fresh or not, and whether there is one.
func (c *Cache[T]) Peek() (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.val, c.ok
}

// Prime fills the cache when a backend opens. A keystore that refuses (no
// such key, no permission, a misconfiguration) fails Open; one that does not
// answer yet (Retryable) does not: keywarden starts unhealthy, and its health
// checks keep trying.
func (c *Cache[T]) Prime(ctx context.Context, fetch func(ctx context.Context) (T, error)) error {
	if _, err := c.Refresh(ctx, fetch); err != nil && !Retryable(err) {
		return err
	}
	return nil
}

// Last returns the cached value whatever its age, fetching one only when
// there is none yet: Wrap uses the key KeyID last reported, and does not wait
// for a refresh.
func (c *Cache[T]) Last(ctx context.Context, fetch func(ctx context.Context) (T, error)) (T, error) {
	if v, ok := c.Peek(); ok {
		return v, nil
	}
	return c.Refresh(ctx, fetch)
}

// Set stores v as fresh.
func (c *Cache[T]) Set(v T) {
	c.mu.Lock()
	c.val, c.at, c.ok = v, c.now(), true
	c.mu.Unlock()
}

// Invalidate makes the next Get fetch, keeping the old value for Peek.
func (c *Cache[T]) Invalidate() {
	c.mu.Lock()
	c.at = time.Time{}
	c.mu.Unlock()
}

// Get returns the cached value if it is younger than the TTL, and otherwise
// fetches, stores and returns a new one. A failed fetch returns its error
// and keeps the old value for Peek; the next Get tries again.
func (c *Cache[T]) Get(ctx context.Context, fetch func(ctx context.Context) (T, error)) (T, error) {
	c.mu.RLock()
	v, at, ok := c.val, c.at, c.ok
	c.mu.RUnlock()
	if ok && !at.IsZero() && c.now().Sub(at) < c.ttl {
		return v, nil
	}
	return c.Refresh(ctx, fetch)
}

// Refresh fetches now, whatever the age of the cached value. The fetch is
// shared with concurrent callers, so it runs under ctx's values but not its
// cancellation, for at most the cache's timeout; ctx ending returns at once
// with ctx's error and leaves the fetch to the others.
func (c *Cache[T]) Refresh(ctx context.Context, fetch func(ctx context.Context) (T, error)) (T, error) {
	return c.fetch(ctx, "fresh", fetch, c.Set)
}

// Update fetches now, as Refresh does, and stores the value for Peek and
// Last without making it fresh: Get's next fetch is as due as it was. The
// Manager calls (List, revalidation's) read the key with a plain fetch;
// were that stored as fresh, the fetch Get runs (which also probes
// encrypt and decrypt, for health) would be put off for as long as
// revalidation kept reading within the TTL, that is, for ever. Update's
// fetch is not shared with Refresh's, so neither answers for the other.
func (c *Cache[T]) Update(ctx context.Context, fetch func(ctx context.Context) (T, error)) (T, error) {
	return c.fetch(ctx, "update", fetch, func(v T) {
		c.mu.Lock()
		c.val, c.ok = v, true
		c.mu.Unlock()
	})
}

func (c *Cache[T]) fetch(ctx context.Context, key string, fetch func(ctx context.Context) (T, error), store func(T)) (T, error) {
	if err := ctx.Err(); err != nil {
		var zero T
		return zero, err
	}
	ch := c.sf.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
		defer cancel()
		v, err := fetch(fctx)
		if err != nil && fctx.Err() != nil {
			// Our own bound, not any caller's: the keystore is too slow.
			return nil, fmt.Errorf("%w: no answer within %s (%v)", keystore.ErrUnavailable, c.timeout, err)
		}
		if err != nil {
			return nil, err
		}
		store(v)
		return v, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			var zero T
			return zero, r.Err
		}
		return r.Val.(T), nil
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

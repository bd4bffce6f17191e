package remote

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

func TestRetryDo(t *testing.T) {
	tests := []struct {
		name      string
		errs      []error // returned by successive attempts; nil after the end
		wantCalls int
		want      error
	}{
		{"ok", nil, 1, nil},
		{"unavailable then ok", []error{keystore.ErrUnavailable}, 2, nil},
		{"throttled throughout", []error{keystore.ErrThrottled, keystore.ErrThrottled, keystore.ErrThrottled, nil}, 3, keystore.ErrThrottled},
		{"invalid not retried", []error{keystore.ErrInvalid}, 1, keystore.ErrInvalid},
		{"permission not retried", []error{keystore.ErrPermission}, 1, keystore.ErrPermission},
		{"unclassified not retried", []error{errors.New("bug")}, 1, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Retry{Attempts: 3, Timeout: time.Second, Base: time.Millisecond, Max: 2 * time.Millisecond}
			calls := 0
			err := r.Do(context.Background(), func(context.Context) error {
				calls++
				if calls <= len(tc.errs) {
					return tc.errs[calls-1]
				}
				return nil
			})
			if calls != tc.wantCalls {
				t.Fatalf("%d calls, want %d", calls, tc.wantCalls)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want == nil && tc.name != "unclassified not retried" && err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRetryTimeouts(t *testing.T) {
	r := Retry{Attempts: 2, Timeout: 20 * time.Millisecond, Base: time.Millisecond, Max: time.Millisecond}
	hang := func(ctx context.Context) error {
		<-ctx.Done()
		return fmt.Errorf("sdk: %w", ctx.Err())
	}
	// Our per-attempt timeout: the keystore is too slow, Unavailable.
	if err := r.Do(context.Background(), hang); !errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("per-attempt timeout: %v, want ErrUnavailable only", err)
	}
	// The caller's deadline: reported as such.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	r.Timeout = time.Second
	if err := r.Do(ctx, hang); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("caller deadline: %v, want DeadlineExceeded", err)
	}
	// An SDK that hides the context error is still reported as cancelled.
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if err := r.Do(cctx, func(context.Context) error { return keystore.ErrUnavailable }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v, want Canceled", err)
	}
}

func TestCache(t *testing.T) {
	now := time.Unix(0, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c := NewCache[int](time.Minute, time.Minute, clock)
	var fetches atomic.Int64
	fetch := func(context.Context) (int, error) {
		time.Sleep(5 * time.Millisecond)
		return int(fetches.Add(1)), nil
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if v, err := c.Get(ctx, fetch); err != nil || v != 1 {
				t.Errorf("Get = %d, %v", v, err)
			}
		})
	}
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d concurrent fetches, want 1", n)
	}
	mu.Lock()
	now = now.Add(59 * time.Second)
	mu.Unlock()
	if v, _ := c.Get(ctx, fetch); v != 1 {
		t.Fatalf("refetched before the TTL: %d", v)
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	if v, _ := c.Get(ctx, fetch); v != 2 {
		t.Fatalf("not refetched after the TTL: %d", v)
	}
	c.Invalidate()
	failing := func(context.Context) (int, error) { return 0, keystore.ErrUnavailable }
	if _, err := c.Get(ctx, failing); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("failed fetch: %v", err)
	}
	if v, ok := c.Peek(); !ok || v != 2 {
		t.Fatalf("Peek after a failed fetch = %d, %v; want the last good value", v, ok)
	}
}

func TestCacheLast(t *testing.T) {
	now := time.Unix(0, 0)
	c := NewCache[int](time.Second, time.Minute, func() time.Time { return now })
	fetches := 0
	fetch := func(context.Context) (int, error) { fetches++; return fetches, nil }
	for range 2 {
		if v, err := c.Last(context.Background(), fetch); v != 1 || err != nil {
			t.Fatalf("Last = %d, %v; want 1 (one fetch)", v, err)
		}
	}
	now = now.Add(time.Hour) // stale: Last still does not fetch
	if v, _ := c.Last(context.Background(), fetch); v != 1 || fetches != 1 {
		t.Fatalf("Last on a stale value = %d after %d fetches; want 1 after 1", v, fetches)
	}
}

func TestCachePrime(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		wantErr bool
		cached  bool
	}{
		{name: "ok", cached: true},
		{name: "unavailable does not fail Open", err: keystore.ErrUnavailable},
		{name: "throttled does not fail Open", err: keystore.ErrThrottled},
		{name: "permission fails Open", err: keystore.ErrPermission, wantErr: true},
		{name: "not found fails Open", err: keystore.ErrKeyNotFound, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCache[int](time.Minute, time.Minute, nil)
			err := c.Prime(context.Background(), func(context.Context) (int, error) { return 7, tc.err })
			if (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, tc.err)) {
				t.Fatalf("Prime = %v, want error %v", err, tc.wantErr)
			}
			if _, ok := c.Peek(); ok != tc.cached {
				t.Fatalf("cached = %v, want %v", ok, tc.cached)
			}
		})
	}
}

// TestCacheRefreshDetached: the fetch that concurrent callers share must not
// die with the caller that happened to start it.
func TestCacheRefreshDetached(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := NewCache[int](time.Minute, time.Minute, nil)
		release := make(chan struct{})
		fetch := func(ctx context.Context) (int, error) {
			<-release
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			return 42, nil
		}
		first, cancel := context.WithCancel(context.Background())
		firstErr := make(chan error, 1)
		go func() {
			_, err := c.Refresh(first, fetch)
			firstErr <- err
		}()
		synctest.Wait() // the first caller's fetch is running
		type result struct {
			v   int
			err error
		}
		second := make(chan result, 1)
		go func() {
			v, err := c.Refresh(context.Background(), func(context.Context) (int, error) {
				return 0, errors.New("second fetch: the first one should have been shared")
			})
			second <- result{v, err}
		}()
		synctest.Wait() // the second caller waits on the shared fetch
		cancel()
		if err := <-firstErr; !errors.Is(err, context.Canceled) {
			t.Fatalf("first caller: %v, want its own Canceled", err)
		}
		close(release)
		if r := <-second; r.err != nil || r.v != 42 {
			t.Fatalf("second caller got %d, %v; want 42 from the shared fetch", r.v, r.err)
		}
		if v, ok := c.Peek(); !ok || v != 42 {
			t.Fatalf("cache holds %d, %v; want 42", v, ok)
		}
	})
}

// TestCacheRefreshBounded: with every caller gone, the detached fetch still
// ends at the cache's timeout, and a caller still waiting on it is told the
// keystore did not answer (not that its own context ended).
func TestCacheRefreshBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := NewCache[int](time.Minute, 3*time.Second, nil)
		hang := func(ctx context.Context) (int, error) {
			<-ctx.Done()
			return 0, fmt.Errorf("sdk: %w", ctx.Err())
		}
		start := time.Now()
		_, err := c.Refresh(context.Background(), hang)
		if !errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Refresh of a hung keystore: %v, want ErrUnavailable only", err)
		}
		if d := time.Since(start); d != 3*time.Second {
			t.Fatalf("Refresh returned after %s, want the 3s timeout", d)
		}
	})
}

// TestCacheUpdateKeepsGetDue: a Manager read (Update) every half TTL must
// not put off Get's own fetch, which is the one that probes for health.
// Before Update existed, List refreshed with Refresh and Get's probing fetch
// never ran while revalidation kept reading within the TTL.
func TestCacheUpdateKeepsGetDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := NewCache[int](time.Minute, time.Second, nil)
		probes, plain := 0, 0
		probe := func(context.Context) (int, error) { probes++; return 1, nil }
		read := func(context.Context) (int, error) { plain++; return 2, nil }
		if _, err := c.Get(context.Background(), probe); err != nil {
			t.Fatal(err)
		}
		for range 6 { // three TTLs, a Manager read every half TTL
			time.Sleep(30 * time.Second)
			if v, err := c.Update(context.Background(), read); err != nil || v != 2 {
				t.Fatalf("Update: %d, %v", v, err)
			}
			if v, ok := c.Peek(); !ok || v != 2 {
				t.Fatalf("Peek after Update: %d, %v; want the updated 2", v, ok)
			}
			if _, err := c.Get(context.Background(), probe); err != nil {
				t.Fatal(err)
			}
		}
		if probes != 4 || plain != 6 {
			t.Fatalf("%d probing fetches and %d plain ones in 3 TTLs, want 4 (one per TTL and the first) and 6", probes, plain)
		}
	})
}

package kms

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/kms/envelope"
)

// clock is a settable test clock for Config.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// uncachedKEKs returns n requests, each under its own local KEK that s has
// never seen: made by other services on the same keyset.
func uncachedKEKs(t *testing.T, e *env, n int) []*service.DecryptRequest {
	t.Helper()
	var out []*service.DecryptRequest
	for range n {
		out = append(out, req(encrypt(t, e.service(nil), seed(t))))
	}
	return out
}

// A root version disabled in a Manager keystore stops decrypting in a
// running service at the first check after RevalidateInterval, even for
// KEKs it holds unwrapped; re-enabling it brings it back.
func TestDisabledVersionStopsDecryptingManager(t *testing.T) {
	e := newEnv(t)
	clk := newClock()
	s := e.service(func(c *Config) { c.Backend = e.file; c.Now = clk.Now; c.RevalidateInterval = time.Minute })
	if _, ok := s.cfg.Backend.(keystore.Manager); !ok {
		t.Fatal("the file backend no longer implements keystore.Manager: this test covers nothing")
	}
	ctx := context.Background()
	pt := seed(t)
	r := encrypt(t, s, pt)
	old := r.KeyID
	e.rotate()
	s.Check(ctx)
	if st, _ := s.Status(ctx); st.KeyID == old {
		t.Fatal("rotation not noticed")
	}
	if _, err := s.Decrypt(ctx, "u", req(r)); err != nil {
		t.Fatalf("Decrypt under OLD before disable: %v", err)
	}
	if err := e.file.Disable(ctx, old); err != nil {
		t.Fatal(err)
	}
	clk.advance(time.Minute)
	s.Check(ctx)
	if _, err := s.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("Decrypt under a disabled version after a check: %v, want FailedPrecondition", err)
	}
	// The current KEK (under NEW) is untouched.
	if _, err := s.Decrypt(ctx, "u", req(encrypt(t, s, pt))); err != nil {
		t.Fatalf("Decrypt under NEW: %v", err)
	}
	if err := e.file.Enable(ctx, old); err != nil {
		t.Fatal(err)
	}
	clk.advance(negativeTTL)
	if got, err := s.Decrypt(ctx, "u", req(r)); err != nil || string(got) != string(pt) {
		t.Fatalf("Decrypt after enable: %v", err)
	}
}

// A keystore without Manager gets the same promise through a background
// re-unwrap of one KEK per root version, at most once per RevalidateInterval.
func TestDisabledVersionStopsDecryptingReverify(t *testing.T) {
	e := newEnv(t)
	clk := newClock()
	s := e.service(func(c *Config) { c.Now = clk.Now; c.RevalidateInterval = time.Minute })
	if _, ok := s.cfg.Backend.(keystore.Manager); ok {
		t.Fatal("the Spy implements keystore.Manager: this test covers nothing")
	}
	ctx := context.Background()
	r := encrypt(t, s, seed(t))
	old := r.KeyID
	e.rotate()
	s.Check(ctx)
	if err := e.file.Disable(ctx, old); err != nil {
		t.Fatal(err)
	}
	// Within the interval nothing is re-verified: the cost stays bounded.
	unwraps := e.spy.Unwraps.Load()
	s.Check(ctx)
	if n := e.spy.Unwraps.Load() - unwraps; n != 0 {
		t.Fatalf("%d re-verifying unwraps within RevalidateInterval, want 0", n)
	}
	clk.advance(time.Minute)
	s.Check(ctx)
	// One unwrap per cached root version (OLD and NEW), not one per KEK.
	if n := e.spy.Unwraps.Load() - unwraps; n != 2 {
		t.Fatalf("%d re-verifying unwraps for 2 root versions, want 2", n)
	}
	if _, err := s.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("Decrypt under a disabled version after re-verification: %v, want FailedPrecondition", err)
	}
	if _, err := s.Encrypt(ctx, "u", seed(t)); err != nil {
		t.Fatalf("Encrypt under NEW: %v", err)
	}
}

// versionGate is a keystore without Manager that refuses chosen root
// versions as disabled, the way a cloud console's "disable key" does.
type versionGate struct {
	keystore.Backend
	mu       sync.Mutex
	disabled map[string]bool
}

func (g *versionGate) off(id string) bool { g.mu.Lock(); defer g.mu.Unlock(); return g.disabled[id] }

func (g *versionGate) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	if g.off(w.KeyID) {
		return nil, fmt.Errorf("%w: %s", keystore.ErrKeyDisabled, w.KeyID)
	}
	return g.Backend.Unwrap(ctx, w, aad)
}

func (g *versionGate) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	id, err := g.KeyID(ctx)
	if err == nil && g.off(id) {
		return keystore.Wrapped{}, fmt.Errorf("%w: %s", keystore.ErrKeyDisabled, id)
	}
	return g.Backend.Wrap(ctx, pt, aad)
}

// When the current KEK's own root version is disabled, keywarden stops
// using it at once: Encrypt answers Unavailable (nothing is written that no
// restarted keywarden could read), Decrypt under it FailedPrecondition,
// Status is not ok; a promoted enabled version brings everything back.
func TestCurrentVersionDisabled(t *testing.T) {
	e := newEnv(t)
	clk := newClock()
	g := &versionGate{Backend: e.spy, disabled: map[string]bool{}}
	s := e.service(func(c *Config) { c.Backend = g; c.Now = clk.Now; c.RevalidateInterval = time.Minute })
	ctx := context.Background()
	r := encrypt(t, s, seed(t))
	g.mu.Lock()
	g.disabled[r.KeyID] = true
	g.mu.Unlock()
	clk.advance(time.Minute)
	s.Check(ctx)
	if _, err := s.Encrypt(ctx, "u", seed(t)); codeOf(err) != codes.Unavailable {
		t.Fatalf("Encrypt under a disabled current version: %v, want Unavailable", err)
	}
	if _, err := s.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("Decrypt under a disabled current version: %v, want FailedPrecondition", err)
	}
	if st, _ := s.Status(ctx); st.Healthz == "ok" {
		t.Fatalf("Status ok with the current root version disabled: %+v", st)
	}
	e.rotate()
	s.Check(ctx)
	if st, _ := s.Status(ctx); st.Healthz != "ok" || st.KeyID == r.KeyID {
		t.Fatalf("Status after promoting an enabled version: %+v", st)
	}
	if _, err := s.Decrypt(ctx, "u", req(encrypt(t, s, seed(t)))); err != nil {
		t.Fatalf("round trip after promoting an enabled version: %v", err)
	}
}

type rpcCtxKey struct{}

// hungWrap is a keystore whose Wrap hangs until released (or its context
// ends). A Wrap made with an RPC's context is recorded and refused at once,
// so a test can prove Encrypt never calls Wrap itself.
type hungWrap struct {
	keystore.Backend
	hang    atomic.Bool
	onRPC   atomic.Bool
	calls   atomic.Int64
	entered chan struct{}
	release chan struct{}
}

func (h *hungWrap) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	if ctx.Value(rpcCtxKey{}) != nil {
		h.onRPC.Store(true)
		return keystore.Wrapped{}, fmt.Errorf("%w: called on the RPC path", keystore.ErrUnavailable)
	}
	if h.hang.Load() {
		h.calls.Add(1)
		select {
		case h.entered <- struct{}{}:
		default:
		}
		select {
		case <-h.release:
		case <-ctx.Done():
			return keystore.Wrapped{}, ctx.Err()
		}
	}
	return h.Backend.Wrap(ctx, pt, aad)
}

// Past its age bound, with the keystore's Wrap hung, Encrypt answers from
// the current KEK without calling the keystore; one renewal runs in the
// background and lands once the keystore answers.
func TestEncryptNeverWaitsForKeystore(t *testing.T) {
	e := newEnv(t)
	clk := newClock()
	h := &hungWrap{Backend: e.spy, entered: make(chan struct{}, 1), release: make(chan struct{})}
	renewed := make(chan error, 8)
	s := e.service(func(c *Config) {
		c.Backend = h
		c.Now = clk.Now
		c.KEKMaxAge = time.Hour
		c.KeystoreTimeout = time.Hour // only the release ends the hang
	})
	s.afterRenew = func(err error) { renewed <- err }
	rpc := context.WithValue(context.Background(), rpcCtxKey{}, true)
	first := encrypt(t, s, seed(t)).Annotations[envelope.AnnotationKey]

	h.hang.Store(true)
	clk.advance(2 * time.Hour)
	for range 5 {
		r, err := s.Encrypt(rpc, "u", seed(t))
		if err != nil {
			t.Fatalf("Encrypt past max_age with the keystore hung: %v", err)
		}
		if string(r.Annotations[envelope.AnnotationKey]) != string(first) {
			t.Fatal("KEK replaced while the keystore is hung")
		}
	}
	if h.onRPC.Load() {
		t.Fatal("Encrypt called the keystore's Wrap on the RPC path")
	}
	select {
	case <-h.entered: // the background renewal is waiting on the keystore
	case err := <-renewed:
		t.Fatalf("renewal finished before the keystore answered: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no background renewal started")
	}
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("%d renewals in flight, want 1", n)
	}
	close(h.release)
	if err := <-renewed; err != nil {
		t.Fatalf("background renewal: %v", err)
	}
	r := encrypt(t, s, seed(t))
	if string(r.Annotations[envelope.AnnotationKey]) == string(first) {
		t.Fatal("KEK not replaced after the keystore answered")
	}
}

// The hard stop: past hardKEKUses a KEK seals nothing more, whatever the
// keystore does, and Encrypt answers Unavailable.
func TestEncryptHardStop(t *testing.T) {
	e := newEnv(t)
	s := e.service(func(c *Config) { c.KEKMaxUses = 2 })
	s.hardUses = 4
	e.spy.SetErr(fmt.Errorf("%w: down", keystore.ErrUnavailable)) // no renewal can land
	for i := range 4 {
		if _, err := s.Encrypt(context.Background(), "u", seed(t)); err != nil {
			t.Fatalf("Encrypt %d (within the hard stop): %v", i+1, err)
		}
	}
	if _, err := s.Encrypt(context.Background(), "u", seed(t)); codeOf(err) != codes.Unavailable {
		t.Fatalf("Encrypt past the hard stop: %v, want Unavailable", err)
	}
}

// The breaker: a keystore that is down (refusing or hung) opens it; while
// open, Decrypts that need the keystore fail fast with Unavailable and make
// no keystore call, cached KEKs still decrypt, and a check that reaches the
// keystore closes it.
func TestBreaker(t *testing.T) {
	for _, mode := range []string{"unavailable", "hang"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			clk := newClock()
			s := e.service(func(c *Config) { c.Now = clk.Now; c.KeystoreTimeout = 50 * time.Millisecond })
			ctx := context.Background()
			cached := req(encrypt(t, s, seed(t)))
			cold := uncachedKEKs(t, e, 3)
			switch mode {
			case "unavailable":
				e.spy.SetErr(fmt.Errorf("%w: connection refused", keystore.ErrUnavailable))
				s.Check(ctx)
			case "hang":
				e.spy.SetDelay(time.Hour) // every call ends at KeystoreTimeout
				// The first uncached Decrypt meets the hang, and opens it.
				if _, err := s.Decrypt(ctx, "u", cold[0]); codeOf(err) != codes.Unavailable {
					t.Fatalf("Decrypt timing out on the keystore: %v, want Unavailable", err)
				}
				// Counted as checks and wraps count their own timeouts.
				if got := unwrapResults(t, s); got["Unavailable"] != 1 || len(got) != 1 {
					t.Fatalf("unwrap results %v, want one Unavailable", got)
				}
			}
			if !s.circuitOpen() {
				t.Fatal("breaker still closed with the keystore down")
			}
			calls := e.spy.Unwraps.Load()
			for _, q := range cold[1:] {
				if _, err := s.Decrypt(ctx, "u", q); codeOf(err) != codes.Unavailable {
					t.Fatalf("uncached Decrypt with the breaker open: %v, want Unavailable", err)
				}
			}
			if n := e.spy.Unwraps.Load() - calls; n != 0 {
				t.Fatalf("%d keystore unwraps with the breaker open, want 0", n)
			}
			if _, err := s.Decrypt(ctx, "u", cached); err != nil {
				t.Fatalf("cached Decrypt with the breaker open: %v", err)
			}
			if _, err := s.Encrypt(ctx, "u", seed(t)); err != nil {
				t.Fatalf("Encrypt with the breaker open: %v", err)
			}
			s.Check(ctx) // still down: the probe fails, the breaker stays open
			if !s.circuitOpen() {
				t.Fatal("breaker closed by a failed probe")
			}
			e.spy.SetErr(nil)
			e.spy.SetDelay(0)
			s.Check(ctx)
			if s.circuitOpen() {
				t.Fatal("breaker still open after the keystore answered a check")
			}
			for _, q := range cold {
				if _, err := s.Decrypt(ctx, "u", q); err != nil {
					t.Fatalf("uncached Decrypt after recovery: %v", err)
				}
			}
		})
	}
}

// With the keystore hung, unwraps in flight are bounded: one past the
// bound is refused at once with ResourceExhausted, without a keystore call.
func TestUnwrapsInFlightBounded(t *testing.T) {
	e := newEnv(t)
	s := e.service(func(c *Config) { c.MaxUnwraps = 2; c.KeystoreTimeout = time.Hour })
	cold := uncachedKEKs(t, e, 3)
	e.spy.SetDelay(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, q := range cold[:2] {
		wg.Go(func() { _, _ = s.Decrypt(ctx, "u", q) })
	}
	for e.spy.Unwraps.Load() < 2 {
		time.Sleep(time.Millisecond) // wait for both flights to reach the keystore
	}
	// The deadline only keeps a broken build from hanging the test.
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if _, err := s.Decrypt(dctx, "u", cold[2]); codeOf(err) != codes.ResourceExhausted {
		t.Fatalf("Decrypt past the in-flight bound: %v, want ResourceExhausted", err)
	}
	if n := e.spy.Unwraps.Load(); n != 2 {
		t.Fatalf("%d keystore unwraps, want 2 (the refused one made none)", n)
	}
	cancel()
	wg.Wait()
}

// Status: the breaker alone (no request refused) changes nothing within the
// grace; once an uncached Decrypt is refused, Status says so at once;
// after the keystore is back, ok returns only after recoveryChecks
// successful checks in a row, so a flapping keystore cannot flap Status.
func TestHealthWithBreaker(t *testing.T) {
	e := newEnv(t)
	clk := newClock()
	s := e.service(func(c *Config) { c.Now = clk.Now; c.Grace = time.Hour })
	ctx := context.Background()
	cold := uncachedKEKs(t, e, 1)[0]
	healthz := func() string { st, _ := s.Status(ctx); return st.Healthz }

	e.spy.SetErr(fmt.Errorf("%w: down", keystore.ErrUnavailable))
	s.Check(ctx)
	if h := healthz(); h != "ok" {
		t.Fatalf("healthz %q with the keystore down but nothing refused, within grace", h)
	}
	if _, err := s.Decrypt(ctx, "u", cold); codeOf(err) != codes.Unavailable {
		t.Fatalf("uncached Decrypt: %v", err)
	}
	if h := healthz(); h == "ok" || !strings.Contains(h, "Unavailable") {
		t.Fatalf("healthz %q right after a refused Decrypt, want an Unavailable reason", h)
	}
	s.Check(ctx) // the check agrees
	if h := healthz(); h == "ok" || !strings.Contains(h, "Unavailable") {
		t.Fatalf("healthz %q at the check after a refused Decrypt, want an Unavailable reason", h)
	}
	e.spy.SetErr(nil)
	var seen []string
	for range recoveryChecks {
		s.Check(ctx)
		seen = append(seen, healthz())
	}
	want := append(slices.Repeat([]string{"not ok"}, recoveryChecks-1), "ok")
	for i := range seen {
		if (seen[i] == "ok") != (want[i] == "ok") {
			t.Fatalf("healthz over %d recovering checks: %q, want ok only at the last", recoveryChecks, seen)
		}
	}
	// Flapping: a single failure after recovery, within grace, with no
	// refused request, keeps Status ok.
	e.spy.SetErr(fmt.Errorf("%w: blip", keystore.ErrUnavailable))
	s.Check(ctx)
	if h := healthz(); h != "ok" {
		t.Fatalf("healthz %q after a blip", h)
	}
	e.spy.SetErr(nil)
	s.Check(ctx)
	if _, err := s.Decrypt(ctx, "u", cold); err != nil {
		t.Fatalf("Decrypt after the blip: %v", err)
	}
}

// unwrapResults counts keywarden_keystore_operation_duration_seconds
// observations of op="unwrap" by their result label.
func unwrapResults(t *testing.T, s *Service) map[string]uint64 {
	t.Helper()
	mfs, err := s.cfg.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "keywarden_keystore_operation_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var op, res string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "op":
					op = l.GetValue()
				case "result":
					res = l.GetValue()
				}
			}
			if op == "unwrap" {
				out[res] += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return out
}

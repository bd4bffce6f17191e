package kms

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/kms/envelope"
)

// recoveryChecks is how many checks in a row must reach the keystore before
// Status, having gone not ok while the keystore was down, says ok again.
const recoveryChecks = 3

// breaker remembers that the keystore is down, so that Decrypts needing it
// fail fast instead of each waiting out its caller's deadline. It opens on
// any keystore call that ends Unavailable or times out (a check, an unwrap,
// a wrap) and closes only when Check reaches the keystore again. The cached
// path never reads it.
type breaker struct {
	down      atomic.Bool
	downSince atomic.Int64 // unix nanos when it last opened
	refused   atomic.Int64 // unix nanos of the first Decrypt refused since then; 0 if none
	inflight  atomic.Int64 // keystore unwraps in flight, for MaxUnwraps
}

var (
	// errCircuitOpen answers a Decrypt that needs the keystore while it is
	// known down.
	errCircuitOpen = fmt.Errorf("%w: failing fast until a background check reaches it", keystore.ErrUnavailable)
	// errOverloaded answers a Decrypt that would start one unwrap more
	// than MaxUnwraps.
	errOverloaded = errors.New("too many keystore unwraps in flight")
)

func (s *Service) circuitOpen() bool { return s.down.Load() }

// keystoreErr classifies the error of a keystore call made under ctx. A
// timeout of our own (ctx's deadline, not the caller's) means the keystore
// did not answer: it becomes ErrUnavailable, so the caller sees Unavailable
// rather than a DeadlineExceeded it did not cause. An unavailable root is
// marked down; the breaker opens when every root is (with one root: when it
// is).
func (s *Service) keystoreErr(ctx context.Context, r *root, err error) error {
	if err == nil {
		return nil
	}
	err = s.ownTimeout(ctx, err)
	if !errors.Is(err, keystore.ErrUnavailable) {
		return err
	}
	if r.down.CompareAndSwap(false, true) && s.multi() {
		s.log.Warn("root keystore down: Decrypts go to the next root until a check reaches it", "root", r.index, "backend", r.name, "error", err)
	}
	if s.allDown() && s.down.CompareAndSwap(false, true) {
		s.downSince.Store(s.cfg.Now().UnixNano())
		s.cfg.Metrics.SetCircuitOpen(true)
		s.log.Warn("keystore down: Decrypts that need it now fail fast until a check reaches it", "error", err)
	}
	return err
}

// ownTimeout names a keystore call that ran out of keywarden's own
// --keystore-timeout (ctx is the call's bounded context) what it is, the
// keystore not answering, so that metrics and the breaker count it as
// Unavailable, the class checks and wraps give it too.
func (s *Service) ownTimeout(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil && !errors.Is(err, keystore.ErrUnavailable) {
		return fmt.Errorf("%w: no answer within %s", keystore.ErrUnavailable, s.cfg.KeystoreTimeout)
	}
	return err
}

// rootUp records that a check reached r again.
func (s *Service) rootUp(r *root) {
	if r.down.CompareAndSwap(true, false) && s.multi() {
		s.log.Info("root keystore answers again", "root", r.index, "backend", r.name)
	}
	if !s.allDown() {
		s.closeCircuit()
	}
}

func (s *Service) closeCircuit() {
	if s.down.CompareAndSwap(true, false) {
		s.refused.Store(0)
		s.cfg.Metrics.SetCircuitOpen(false)
		s.log.Info("keystore answers again", "down_since", time.Unix(0, s.downSince.Load()).UTC().Format(time.RFC3339))
	}
}

// refuse records that a Decrypt failed because the keystore is down. The
// first one since the breaker opened turns Status not ok at once (the next
// check keeps it so, by the same rule), and holds it until recoveryChecks
// checks in a row reach the keystore.
func (s *Service) refuse() {
	if !s.refused.CompareAndSwap(0, s.cfg.Now().UnixNano()) {
		return
	}
	if s.wasOK.Load() {
		s.held.Store(true)
	}
	s.health.Store(&health{reason: refusedReason("Unavailable", s.downSince.Load())})
	s.cfg.Metrics.SetHealth(false, false, time.Unix(0, s.lastOK.Load()))
}

func refusedReason(class string, downSince int64) string {
	return "keystore " + class + " since " + time.Unix(0, downSince).UTC().Format(time.RFC3339) + ", Decrypts that need it refused"
}

// probe makes one real call to root r while it is down: its copy of the
// current KEK unwrapped again. Any answer but "unavailable" (even a
// refusal: revalidation deals with that) means the root is reachable.
func (s *Service) probe(ctx context.Context, r *root) error {
	cur := s.cur.Load()
	if cur == nil {
		return nil // check just made or adopted one: the keystore answered
	}
	a, err := envelope.DecodeAnnotation(cur.annotation)
	if err != nil {
		return err
	}
	c, ok := copyFor(a, r, s.v2())
	if !ok {
		return nil // check just made one under every root: r answered
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.KeystoreTimeout)
	defer cancel()
	start := time.Now()
	key, err := r.b.Unwrap(cctx, keystore.Wrapped{KeyID: c.KeyID, Ciphertext: c.RootCT}, envelope.RootAAD())
	clear(key)
	err = s.keystoreErr(cctx, r, err)
	s.cfg.Metrics.ObserveKeystore(r.name, "unwrap", class(err), time.Since(start))
	if errors.Is(err, keystore.ErrUnavailable) {
		return s.rootErr(r, fmt.Errorf("probe: unwrap the current local KEK: %w", err))
	}
	return nil
}

package kms

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Backoff between failed attempts to make a new local KEK from Encrypt's
// trigger. The periodic check tries on its own schedule regardless.
const (
	renewBackoffMin = time.Second
	renewBackoffMax = time.Minute
)

// renewal is the background replacement of a local KEK past its bounds.
type renewal struct {
	renewing   atomic.Bool  // one renewal in flight
	renewAfter atomic.Int64 // unix nanos: no new attempt before
	renewFails int          // consecutive failed mints; guarded by mintMu
}

var errKEKSpent = fmt.Errorf("local KEK reached the hard stop of %d uses and no new one could be made yet", uint64(hardKEKUses))

// renewSoon starts a background replacement of k, unless one is running,
// the keystore is known down, or the last attempt failed less than a
// backoff ago. Encrypt calls it; it never blocks.
func (s *Service) renewSoon(k *kek, reason string) {
	if s.down.Load() || s.cfg.Now().UnixNano() < s.renewAfter.Load() || !s.renewing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		err := s.renew(k, reason)
		s.renewing.Store(false)
		if s.afterRenew != nil {
			s.afterRenew(err)
		}
	}()
}

// renew replaces k, unless another caller already did, on a context of its
// own: no RPC's deadline ever covers a keystore call.
func (s *Service) renew(k *kek, reason string) error {
	s.mintMu.Lock()
	defer s.mintMu.Unlock()
	// The periodic check may have replaced k, or just failed to, while
	// this waited for the lock.
	if s.cur.Load() != k || s.cfg.Now().UnixNano() < s.renewAfter.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.KeystoreTimeout)
	defer cancel()
	_, err := s.mint(ctx, reason)
	return err
}

// mintFailed records a failed attempt to make a new local KEK and backs the
// next triggered one off. Callers hold mintMu.
func (s *Service) mintFailed(err error, reason string) {
	s.renewFails++
	d := min(renewBackoffMin<<min(s.renewFails-1, 6), renewBackoffMax)
	s.renewAfter.Store(s.cfg.Now().Add(d).UnixNano())
	s.cfg.Metrics.KEKRenewalFailed()
	if cur := s.cur.Load(); cur != nil && !errors.Is(err, context.Canceled) {
		s.log.Warn("a new local KEK could not be made; still using the current one",
			"reason", reason, "error", err, "uses", cur.uses.Load(), "hard_stop", s.hardUses, "retry_after", d.String())
	}
}

package kms

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Backoff between failed attempts to make a spare local KEK from Encrypt's
// trigger. The periodic check tries on its own schedule regardless.
const (
	renewBackoffMin = time.Second
	renewBackoffMax = time.Minute
)

// renewal replaces a local KEK past its bounds without Encrypt ever calling
// the keystore: a spare KEK is made and wrapped in the background (from
// half the use bound on, or once a bound is reached), and the Encrypt that
// finds the current KEK past its bound moves to the spare in memory.
type renewal struct {
	next       atomic.Pointer[kek] // the spare: wrapped, never used yet
	renewing   atomic.Bool         // one spare being made at a time
	renewAfter atomic.Int64        // unix nanos: no triggered attempt before
	renewFails int                 // consecutive failed mints; guarded by mintMu
}

var errKEKSpent = fmt.Errorf("local KEK reached the hard stop of %d uses and no new one could be made yet", uint64(hardKEKUses))

// rollover moves Encrypt from k, which is past a bound, to the spare if one
// is ready under the same root version; otherwise it asks for one and k
// stays in use. It never blocks.
func (s *Service) rollover(k *kek, reason string) *kek {
	n := s.next.Load()
	if n == nil || n.rootKeyID != k.rootKeyID {
		s.prepareSoon(k)
		return k
	}
	if !s.next.CompareAndSwap(n, nil) {
		return s.currentOr(k) // another Encrypt took it
	}
	n.created = s.cfg.Now() // its age counts from its first use; n is ours alone here
	if !s.cur.CompareAndSwap(k, n) {
		return s.currentOr(k) // the check replaced k first; n is dropped unused
	}
	// The state file follows at the next check (uses changed), off this path.
	s.installed(n, reason)
	return n
}

func (s *Service) currentOr(k *kek) *kek {
	if c := s.cur.Load(); c != nil {
		return c
	}
	return k
}

// prepareSoon starts making a spare for k in the background, unless one is
// being made, the keystore is known down, or the last attempt failed less
// than a backoff ago. It never blocks.
func (s *Service) prepareSoon(k *kek) {
	if s.down.Load() || s.cfg.Now().UnixNano() < s.renewAfter.Load() || !s.renewing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		err := s.prepare(k)
		s.renewing.Store(false)
		if s.afterRenew != nil {
			s.afterRenew(err)
		}
	}()
}

// prepare makes the spare for k on a context of its own: no RPC's deadline
// ever covers a keystore call.
func (s *Service) prepare(k *kek) error {
	s.mintMu.Lock()
	defer s.mintMu.Unlock()
	// The periodic check may have replaced k, or just failed to, while
	// this waited for the lock.
	if s.cur.Load() != k || s.cfg.Now().UnixNano() < s.renewAfter.Load() {
		return nil
	}
	if n := s.next.Load(); n != nil && n.rootKeyID == k.rootKeyID {
		return nil
	}
	// One KeystoreTimeout per root: each root's Wrap has its own.
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.KeystoreTimeout*time.Duration(len(s.roots)))
	defer cancel()
	n, err := s.newLocalKEK(ctx, "spare")
	if err != nil {
		return err
	}
	s.next.Store(n)
	return nil
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

package kms

import (
	"context"
	"fmt"
	"time"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/kms/envelope"
)

// revalidate asks the keystore whether the root key version of every
// unwrapped local KEK in memory may still be used, and drops the KEKs of
// any version that may not: after that, a Decrypt under it goes to the
// keystore and gets its refusal (FailedPrecondition or NotFound), which the
// negative cache remembers. Without this, a disabled version would keep
// decrypting until a restart.
//
// A keystore.Manager answers for every version with one List; a version it
// does not list (or a backend without List, or a List that fails) is
// checked by unwrapping one of its KEKs again. Either way the cost is one
// call per root version per RevalidateInterval, never per KEK, never on an
// RPC. complete is false if a version could not be checked (the keystore
// failed transiently): Check then tries again at its next run. revoked is
// why the current KEK was dropped, or nil.
func (s *Service) revalidate(ctx context.Context) (revoked error, complete bool) {
	byRoot := map[string][]string{} // root key_id -> cache keys of its KEKs
	sample := map[string]*kek{}     // root key_id -> one of its KEKs
	for _, key := range s.cache.Keys() {
		if k, ok := s.cache.Peek(key); ok {
			byRoot[k.rootKeyID] = append(byRoot[k.rootKeyID], key)
			sample[k.rootKeyID] = k
		}
	}
	if cur := s.cur.Load(); cur != nil {
		// The LRU may have let the current KEK go; it is checked anyway.
		if _, ok := sample[cur.rootKeyID]; !ok {
			byRoot[cur.rootKeyID] = nil
			sample[cur.rootKeyID] = cur
		}
	}
	if len(byRoot) == 0 {
		return nil, true
	}
	states := s.versionStates(ctx)
	complete = true
	for root, keys := range byRoot {
		var refusal error
		st, listed := states[root]
		switch {
		case listed && st == keystore.KeyEnabled:
			continue
		case listed:
			refusal = fmt.Errorf("%w: root key version is %s", keystore.ErrKeyDisabled, st)
		default:
			refusal = s.reverify(ctx, sample[root])
			if refusal != nil && !lasting(refusal) {
				complete = false
				continue
			}
		}
		if refusal == nil {
			continue
		}
		if err := s.revoke(root, keys, refusal); err != nil {
			revoked = err
		}
	}
	return revoked, complete
}

// versionStates lists the versions of every root that can list them (nil
// if none can). Only a single-root KEK is judged by them: a KEK under
// several roots is named by RootsKeyID, which no List shows, so it is
// re-checked by unwrap, and stays while any of its roots still unwraps it.
func (s *Service) versionStates(ctx context.Context) map[string]keystore.KeyState {
	var states map[string]keystore.KeyState
	for _, r := range s.roots {
		m, ok := r.b.(keystore.Manager)
		if !ok {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, s.cfg.KeystoreTimeout)
		start := time.Now()
		vs, err := m.List(cctx)
		err = s.keystoreErr(cctx, r, err)
		cancel()
		s.cfg.Metrics.ObserveKeystore(r.name, "list", class(err), time.Since(start))
		if err != nil {
			s.log.Debug("keystore List failed; re-checking root versions by unwrap", "error", s.rootErr(r, err))
			continue
		}
		if states == nil {
			states = make(map[string]keystore.KeyState, len(vs))
		}
		for _, v := range vs {
			states[v.KeyID] = v.State
		}
	}
	return states
}

// reverify unwraps k again: nil if a root still unwraps it, else why not.
func (s *Service) reverify(ctx context.Context, k *kek) error {
	a, err := envelope.DecodeAnnotation(k.annotation)
	if err != nil {
		return err
	}
	key, _, err := s.unwrapAny(ctx, a, true)
	clear(key)
	return err
}

// revoke drops every unwrapped KEK under root; if the current KEK is one of
// them it is dropped too (Encrypt answers Unavailable, Status is not ok)
// and the next check makes a new one under the keystore's primary, if that
// one is usable: nothing new is sealed under a version no restarted
// keywarden could unwrap. It returns refusal if the current KEK went.
func (s *Service) revoke(root string, keys []string, refusal error) error {
	for _, key := range keys {
		s.cache.Remove(key)
	}
	s.cfg.Metrics.KEKsRevoked(len(keys))
	s.cfg.Metrics.SetCacheSize(s.cache.Len())
	var cur error
	s.mintMu.Lock()
	if n := s.next.Load(); n != nil && n.rootKeyID == root {
		s.next.CompareAndSwap(n, nil)
	}
	if c := s.cur.Load(); c != nil && c.rootKeyID == root {
		s.cur.Store(nil)
		cur = refusal
	}
	s.mintMu.Unlock()
	s.log.Warn("root key version may no longer be used: its unwrapped local KEKs are dropped",
		"root_key_id", root, "keks", len(keys), "current", cur != nil, "error", refusal)
	return cur
}

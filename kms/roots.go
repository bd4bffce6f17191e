package kms

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/kms/envelope"
)

// root is one root keystore: Config.Roots[index]. With one root, keywarden
// works exactly as it did before several were allowed: version-1
// annotations, the root's own key_id. With several, every new local KEK is
// wrapped under each of them at mint time (a version-2 annotation whose
// key_id is envelope.RootsKeyID of theirs), and a KEK not in memory is
// unwrapped by the first of them, in order, that answers.
type root struct {
	b     keystore.Backend
	name  string // b.Name(), for metrics, logs and the version-2 annotation
	index int
	// down: this root's last call ended Unavailable and no check has
	// reached it since. The Service's breaker opens when every root is
	// down; a Decrypt skips a root that is down while another may answer.
	down atomic.Bool
	// keyIDErr is the error of this root's key_id read in the last
	// check, and keyID what it read ("" on error); guarded by checkMu.
	keyIDErr error
	keyID    string
}

func (s *Service) multi() bool { return len(s.roots) > 1 }

// v2 says whether a new local KEK is wrapped into a version-2 annotation:
// with several roots, or with a recovery key.
func (s *Service) v2() bool { return s.multi() || s.cfg.Recovery != nil }

func (s *Service) allDown() bool {
	for _, r := range s.roots {
		if !r.down.Load() {
			return false
		}
	}
	return true
}

// rootsLabel is the backend label of keywarden_root_key_info: the backend
// name, or the names of every root joined with '+'.
func rootsLabel(roots []*root) string {
	names := make([]string, len(roots))
	for i, r := range roots {
		names[i] = r.name
	}
	return strings.Join(names, "+")
}

// rootErr names the root an error came from, when there are several.
func (s *Service) rootErr(r *root, err error) error {
	if !s.multi() {
		return err
	}
	return fmt.Errorf("root %d (%s): %w", r.index, r.name, err)
}

// readKeyID reads the current key_id: the one root's, or RootsKeyID of
// every root's in order. Each root is asked under its own timeout; any
// failure fails the read (a new local KEK must be wrapped under every
// root). Callers hold checkMu.
func (s *Service) readKeyID(ctx context.Context) (string, error) {
	ids := make([]string, len(s.roots))
	var first error
	for i, r := range s.roots {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.KeystoreTimeout)
		start := time.Now()
		kid, err := r.b.KeyID(cctx)
		err = s.keystoreErr(cctx, r, err)
		cancel()
		s.cfg.Metrics.ObserveKeystore(r.name, "key_id", class(err), time.Since(start))
		r.keyIDErr, r.keyID = err, kid
		if err != nil {
			r.keyID = ""
		}
		if err != nil && first == nil {
			first = s.rootErr(r, err)
		}
		ids[i] = kid
	}
	if first != nil {
		return "", first
	}
	if rec := s.cfg.Recovery; rec != nil {
		kid, err := rec.KeyID(ctx)
		if err != nil {
			return "", fmt.Errorf("recovery key: %w", err)
		}
		ids = append(ids, kid)
	}
	if !s.v2() {
		return ids[0], nil
	}
	kid, err := envelope.RootsKeyID(ids)
	if err != nil {
		return "", fmt.Errorf("%w: %v", keystore.ErrInvalid, err)
	}
	return kid, nil
}

// wrapAll wraps a new local KEK under every root, in order, each under its
// own timeout, and returns its annotation and key_id. Never per request:
// only when a local KEK is made. wrapped says that every root wrapped it
// (an error is then in what they returned).
func (s *Service) wrapAll(ctx context.Context, key []byte) (ann []byte, keyID string, wrapped bool, err error) {
	ws := make([]keystore.Wrapped, len(s.roots))
	for i, r := range s.roots {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.KeystoreTimeout)
		start := time.Now()
		w, err := r.b.Wrap(cctx, key, envelope.RootAAD())
		err = s.keystoreErr(cctx, r, err)
		cancel()
		s.cfg.Metrics.ObserveKeystore(r.name, "wrap", class(err), time.Since(start))
		if err != nil {
			return nil, "", false, s.rootErr(r, err)
		}
		ws[i] = w
	}
	names := make([]string, len(s.roots), len(s.roots)+1)
	for i, r := range s.roots {
		names[i] = r.name
	}
	if rec := s.cfg.Recovery; rec != nil {
		// A local seal to a public key: no remote call, no timeout of
		// its own.
		w, err := rec.Wrap(ctx, key, envelope.RootAAD())
		if err != nil {
			return nil, "", false, fmt.Errorf("seal local KEK to the recovery key: %w", err)
		}
		ws = append(ws, w)
		names = append(names, rec.Name())
	}
	if !s.v2() {
		ann, err = envelope.EncodeKEK(ws[0].KeyID, ws[0].Ciphertext)
		if err != nil {
			return nil, "", true, fmt.Errorf("%w: keystore returned an unusable wrapped KEK: %v", keystore.ErrInvalid, err)
		}
		return ann, ws[0].KeyID, true, nil
	}
	copies := make([]envelope.Copy, len(ws))
	ids := make([]string, len(ws))
	for i, w := range ws {
		copies[i] = envelope.Copy{Backend: names[i], KeyID: w.KeyID, RootCT: w.Ciphertext}
		ids[i] = w.KeyID
	}
	if ann, err = envelope.EncodeKEK2(copies); err == nil {
		keyID, err = envelope.RootsKeyID(ids)
	}
	if err != nil {
		return nil, "", true, fmt.Errorf("%w: keystores returned unusable wrapped KEKs: %v", keystore.ErrInvalid, err)
	}
	return ann, keyID, true, nil
}

// attempt is one root asked to unwrap one copy.
type attempt struct {
	r *root
	c envelope.Copy
}

// attempts lists, in the order they are tried, the (root, copy) pairs that
// may unwrap a's KEK. Roots go in configured order. A version-1
// annotation does not say which backend made it, so every root may try its
// one copy. In a version-2 one, a root tries the copies its backend kind
// made: first the one at its own place (the copy it made when the roots
// have not been reordered since), then the others, so that removing or
// reordering roots never strands a KEK.
func (s *Service) attempts(a envelope.Annotation) []attempt {
	var out []attempt
	for i, r := range s.roots {
		if a.Version == envelope.Version1 {
			out = append(out, attempt{r, a.Copies[0]})
			continue
		}
		if i < len(a.Copies) && a.Copies[i].Backend == r.name {
			out = append(out, attempt{r, a.Copies[i]})
		}
		for j, c := range a.Copies {
			if j != i && c.Backend == r.name {
				out = append(out, attempt{r, c})
			}
		}
	}
	return out
}

var errNoRoot = fmt.Errorf("%w: no configured root keystore is of a backend that wrapped this local KEK", keystore.ErrKeyNotFound)

// unwrapAny unwraps a's local KEK with the first root that answers, in
// configured order, each call under its own KeystoreTimeout. It falls back
// to the next root on any failure: unavailable, throttled, permission,
// unknown or disabled version, and a failed authentication (a root given
// another root's copy). A root known down is skipped while another may
// answer. If every one fails, the error is the first transient one (a
// retry may succeed, so it must not be remembered as a refusal), else the
// first one. breaker says whether an unavailable root marks it down (every
// caller but adoption at start-up).
//
// The copies are not checked against each other: every copy in an
// annotation we made wraps the same KEK, and the annotation is bound into
// every ciphertext's AAD, so a forged copy can only open ciphertexts sealed
// under the KEK it wraps (see docs/security.md, several roots).
func (s *Service) unwrapAny(ctx context.Context, a envelope.Annotation, breaker bool) ([]byte, *root, error) {
	var first, transient error
	var skipped []string
	for _, at := range s.attempts(a) {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		if s.multi() && at.r.down.Load() && !s.allDown() {
			e := s.rootErr(at.r, errCircuitOpen)
			first, transient = cmp.Or(first, e), cmp.Or(transient, e)
			skipped = append(skipped, at.r.name+": down")
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, s.cfg.KeystoreTimeout)
		start := time.Now()
		key, err := at.r.b.Unwrap(cctx, keystore.Wrapped{KeyID: at.c.KeyID, Ciphertext: at.c.RootCT}, envelope.RootAAD())
		if breaker {
			err = s.keystoreErr(cctx, at.r, err)
		} else {
			err = s.ownTimeout(cctx, err)
		}
		cancel()
		s.cfg.Metrics.ObserveKeystore(at.r.name, "unwrap", class(err), time.Since(start))
		if err == nil {
			s.cfg.Metrics.RootUnwrap(at.r.index, at.r.name)
			if at.r.index != 0 {
				s.log.Info("local KEK unwrapped by a fallback root", "root", at.r.index, "backend", at.r.name,
					"root_key_id", at.c.KeyID, "key_id", a.KeyID, "skipped", skipped)
			}
			return key, at.r, nil
		}
		if !s.multi() && a.Version == envelope.Version1 {
			// One root, one copy: the error as it always was.
			return nil, nil, fmt.Errorf("unwrap local KEK under root key %q: %w", at.c.KeyID, err)
		}
		err = fmt.Errorf("unwrap local KEK: root %d (%s) under %q: %w", at.r.index, at.r.name, at.c.KeyID, err)
		first = cmp.Or(first, err)
		if !lasting(err) {
			transient = cmp.Or(transient, err)
		}
		skipped = append(skipped, at.r.name+": "+class(err))
	}
	if first == nil {
		return nil, nil, errNoRoot
	}
	return nil, nil, cmp.Or(transient, first)
}

// copyFor returns the copy of the current KEK that r made when it was
// minted, if the KEK was minted under the configured roots. v2 is
// Service.v2.
func copyFor(a envelope.Annotation, r *root, v2 bool) (envelope.Copy, bool) {
	if !v2 {
		return a.Copies[0], a.Version == envelope.Version1
	}
	if a.Version != envelope.Version2 || r.index >= len(a.Copies) || a.Copies[r.index].Backend != r.name {
		return envelope.Copy{}, false
	}
	return a.Copies[r.index], true
}

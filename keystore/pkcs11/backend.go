//go:build !nopkcs11

package pkcs11

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
)

// Name is the backend name used in metrics and logs.
const Name = "pkcs11"

const (
	// Ciphertext layout: format byte, IV, GCM ciphertext with its tag.
	formatGCM byte = 0x01
	ivSize         = 12
	tagSize        = 16
	overhead       = 1 + ivSize + tagSize

	// keywarden wraps 32-byte KEKs; the bounds leave room and stop hostile
	// sizes before they reach the HSM.
	maxPlaintext = 1024
	maxAAD       = 16 << 10
)

// Backend is a keystore.Backend whose root key versions live on a PKCS#11
// token. It is safe for concurrent use.
//
// It composes the token (token.go: finding it, logging in), a session pool
// (pool.go) and the list of root key objects read from the token
// (objects.go); run retries an operation across the faults after which all
// three start afresh.
type Backend struct {
	cfg  config
	mod  *module
	tok  *token
	pool *pool
	rand io.Reader
	now  func() time.Time

	// loadMu serializes (re)loading the object list, so a burst of calls
	// after a reset searches the token once.
	loadMu sync.Mutex

	// mu guards the object list.
	mu       sync.Mutex
	st       *state // nil: must (re)load
	stamp    uint64 // bumped whenever st is dropped
	seenKeys bool   // some load found root key versions
	lastMiss time.Time
}

var (
	_ keystore.Backend = (*Backend)(nil)
	_ keystore.Manager = (*Backend)(nil)
)

// Open opens the token and root key that uri names. It fails with ErrConfig
// if the token holds no keywarden root key under the label (create one with
// Init), ErrPermission if the PIN is refused and ErrUnavailable if the
// token cannot be reached.
func Open(ctx context.Context, uri string) (*Backend, error) {
	b, err := open(ctx, uri)
	if err != nil {
		return nil, err
	}
	st, err := b.snapshot(ctx, false)
	if err == nil && len(st.versions) == 0 && len(st.pointers) == 0 {
		err = fmt.Errorf("%w: token %s has no root key under label %q (create one with: kmsctl keys init)", keystore.ErrConfig, b.cfg.token, b.cfg.label)
	}
	if err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

// open connects to the token, logs in and checks that it can do AES-GCM.
func open(ctx context.Context, uri string) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	mod, err := acquireModule(cfg.module)
	if err != nil {
		return nil, err
	}
	tok := &token{match: cfg.token, pin: cfg.pin, mod: mod}
	ti, err := tok.find()
	if err != nil {
		mod.release()
		return nil, err
	}
	b := &Backend{cfg: cfg, mod: mod, tok: tok, pool: newPool(poolSize(ti), mod, tok.openSession), rand: rand.Reader, now: time.Now}
	if err := tok.checkMechanism(); err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

// Name implements keystore.Backend.
func (b *Backend) Name() string { return Name }

// Close implements keystore.Backend. It waits for calls in flight (a library
// call cannot be interrupted), closes this backend's sessions and, if it was
// the last user of the module, finalizes it. It never logs out: the login
// belongs to the whole process, and ends with its last session.
func (b *Backend) Close() error {
	if b.pool.close() {
		b.mod.release()
	}
	return nil
}

// KeyID implements keystore.Backend. It reads the primary pointer from the
// token on every call, so it doubles as a health check and sees a promotion
// made by kmsctl at once.
func (b *Backend) KeyID(ctx context.Context) (string, error) {
	var kid string
	err := b.run(ctx, func(s session, st *state) error {
		fresh, err := b.refreshPrimary(s, st)
		if err != nil {
			return err
		}
		if fresh.primary == nil {
			return fresh.pointerErr
		}
		kid = fresh.primary.keyID
		return nil
	})
	if err != nil {
		return "", err
	}
	return kid, ctx.Err()
}

// Wrap implements keystore.Backend: CKM_AES_GCM inside the HSM under the
// primary version (as of the last KeyID or load), with a fresh 96-bit IV.
func (b *Backend) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Wrapped{}, err
	}
	if len(pt) == 0 || len(pt) > maxPlaintext {
		return keystore.Wrapped{}, fmt.Errorf("%w: plaintext is %d bytes; want 1 to %d", keystore.ErrInvalid, len(pt), maxPlaintext)
	}
	if len(aad) > maxAAD {
		return keystore.Wrapped{}, fmt.Errorf("%w: associated data is %d bytes, over %d", keystore.ErrInvalid, len(aad), maxAAD)
	}
	var w keystore.Wrapped
	err := b.run(ctx, func(s session, st *state) error {
		v := st.primary
		if v == nil {
			return st.pointerErr
		}
		iv := make([]byte, ivSize)
		if _, err := io.ReadFull(b.rand, iv); err != nil {
			return fmt.Errorf("%w: read random IV: %v", keystore.ErrUnavailable, err)
		}
		var ct []byte
		err := b.mod.callIn(s.gen, func(c *p11.Ctx) error {
			params := p11.NewGCMParams(iv, aad, tagSize*8)
			defer params.Free()
			if err := c.EncryptInit(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, v.handle); err != nil {
				return classify("C_EncryptInit", err)
			}
			var err error
			if ct, err = c.Encrypt(s.h, pt); err != nil {
				return classify("C_Encrypt", err)
			}
			// Some HSMs (FIPS mode) choose the IV themselves and write it
			// back into the parameters; keep the one actually used.
			if used := params.IV(); len(used) == ivSize {
				iv = used
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(ct) != len(pt)+tagSize {
			return fmt.Errorf("%w: PKCS#11 module returned %d bytes of AES-GCM output for %d bytes of input", keystore.ErrUnavailable, len(ct), len(pt))
		}
		out := make([]byte, 0, overhead+len(pt))
		out = append(out, formatGCM)
		out = append(out, iv...)
		out = append(out, ct...)
		w = keystore.Wrapped{KeyID: v.keyID, Ciphertext: out}
		return nil
	})
	if err != nil {
		return keystore.Wrapped{}, err
	}
	return w, ctx.Err()
}

// Unwrap implements keystore.Backend. The HSM enforces a disabled version
// (CKA_DECRYPT off) itself, so a Disable made by kmsctl in another process
// takes effect at once.
func (b *Backend) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := parseKeyID(w.KeyID); err != nil {
		return nil, err
	}
	ct := w.Ciphertext
	if len(ct) <= overhead || len(ct) > overhead+maxPlaintext || ct[0] != formatGCM {
		return nil, fmt.Errorf("%w: not a pkcs11 keystore ciphertext (%d bytes)", keystore.ErrInvalid, len(ct))
	}
	if len(aad) > maxAAD {
		return nil, fmt.Errorf("%w: associated data is %d bytes, over %d", keystore.ErrInvalid, len(aad), maxAAD)
	}
	var pt []byte
	err := b.run(ctx, func(s session, st *state) error {
		v, err := b.lookup(s, st, w.KeyID)
		if err != nil {
			return err
		}
		return b.mod.callIn(s.gen, func(c *p11.Ctx) error {
			params := p11.NewGCMParams(ct[1:1+ivSize], aad, tagSize*8)
			defer params.Free()
			if err := c.DecryptInit(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, v.handle); err != nil {
				return classify("C_DecryptInit", err)
			}
			var err error
			pt, err = c.Decrypt(s.h, ct[1+ivSize:])
			if err == nil {
				return nil
			}
			err = classify("C_Decrypt", err)
			if faultOf(err) == faultSession && b.tok.healthy(c, s.h) {
				// SoftHSM (2.6) reports a failed GCM tag check as
				// CKR_GENERAL_ERROR. If the token still answers, the
				// failure was the ciphertext's, not the token's.
				var oe *opError
				errors.As(err, &oe)
				return &opError{op: oe.op, fault: faultData, err: fmt.Errorf("authentication failed (the token, which still answers, reported %w)", oe.err)}
			}
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	if len(pt) != len(ct)-overhead {
		return nil, fmt.Errorf("%w: PKCS#11 module returned %d bytes of plaintext for %d bytes of ciphertext", keystore.ErrUnavailable, len(pt), len(ct))
	}
	return pt, ctx.Err()
}

// run runs fn on a pooled session with the current object list. If the
// session, login, token or library failed, it reopens everything and tries
// again; on the second such failure it also re-initializes the module. The
// context is checked before every attempt and while waiting for a session;
// a library call in progress cannot be interrupted.
func (b *Backend) run(ctx context.Context, fn func(s session, st *state) error) error {
	var err error
	for attempt := range 3 {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		var s session
		s, err = b.pool.acquire(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
		} else {
			var st *state
			if st, err = b.ensureState(s); err == nil {
				err = fn(s, st)
			}
			b.pool.release(s, err)
		}
		if err == nil {
			return nil
		}
		switch faultOf(err) {
		case faultHandle:
			b.invalidate()
		case faultSession:
			gen := s.gen
			if gen == 0 {
				gen = b.mod.generation()
			}
			b.reset()
			if attempt > 0 {
				b.mod.reinit(gen, b.now())
			}
		default:
			return err
		}
	}
	if faultOf(err) == faultHandle {
		// Still stale after a fresh search: the object went away under us.
		var ck p11.Error
		errors.As(err, &ck)
		return fmt.Errorf("%w: the key object vanished while in use (%v)", keystore.ErrKeyNotFound, ck)
	}
	return err
}

// reset forgets every session, the slot and the object list, so the next
// call finds the token again, logs in and searches its objects. The slot and
// the object list are dropped before the pool's epoch moves on, so that a
// session opened in the new epoch finds the token and reads its objects
// again.
func (b *Backend) reset() {
	b.tok.forget()
	b.invalidate()
	b.pool.reset()
}

// short keeps error messages bounded when a caller sends a huge key_id.
func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// sortVersions orders versions by creation, oldest first.
func sortVersions(vs []*version) {
	slices.SortStableFunc(vs, func(a, b *version) int { return a.created.Compare(b.created) })
}

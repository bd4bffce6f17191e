//go:build !nopkcs11

package pkcs11

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
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

	// minMissRefresh bounds how often an Unwrap for an unknown key_id makes
	// us search the token again.
	minMissRefresh = time.Second
)

// Backend is a keystore.Backend whose root key versions live on a PKCS#11
// token. It is safe for concurrent use.
type Backend struct {
	cfg  config
	mod  *module
	rand io.Reader
	now  func() time.Time
	pool *pool

	// loadMu serializes (re)loading the object list, so a burst of calls
	// after a reset searches the token once.
	loadMu sync.Mutex

	mu          sync.Mutex
	slot        uint
	slotGen     uint64 // module generation slot was found in; 0: unknown
	st          *state // nil: must (re)load
	stamp       uint64 // bumped whenever st is dropped
	seenKeys    bool   // some load found root key versions
	lastMiss    time.Time
	rejectedPIN [sha256.Size]byte // hash of the last PIN the token refused
	hasRejected bool
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
	b := &Backend{cfg: cfg, mod: mod, rand: rand.Reader, now: time.Now}
	ti, err := b.tokenInfo()
	if err != nil {
		mod.release()
		return nil, err
	}
	b.pool = newPool(poolSize(ti), mod, b.openSession)
	if err := b.checkMechanism(); err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

// tokenInfo finds the slot of the configured token and returns its info.
func (b *Backend) tokenInfo() (p11.TokenInfo, error) {
	var (
		found   []uint
		info    p11.TokenInfo
		visible []string
	)
	gen, err := b.mod.call(func(c *p11.Ctx) error {
		slots, err := c.GetSlotList(true)
		if err != nil {
			return err
		}
		for _, id := range slots {
			if want := b.cfg.token.slotID; want != nil && id != *want {
				continue
			}
			ti, err := c.GetTokenInfo(id)
			if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
				continue
			}
			if !b.cfg.token.matches(ti) {
				if len(visible) < 8 {
					visible = append(visible, fmt.Sprintf("%q (serial %s)", ti.Label, ti.SerialNumber))
				}
				continue
			}
			found = append(found, id)
			info = ti
		}
		return nil
	})
	if err != nil {
		return info, classify("C_GetSlotList", err)
	}
	switch len(found) {
	case 0:
		seen := "none"
		if len(visible) > 0 {
			seen = strings.Join(visible, ", ")
		}
		return info, sessionFault("find token", fmt.Errorf("no initialized token matches %s (tokens present: %s)", b.cfg.token, seen))
	case 1:
	default:
		return info, fmt.Errorf("%w: %d tokens match %s; add serial= to the URI", keystore.ErrConfig, len(found), b.cfg.token)
	}
	b.mu.Lock()
	b.slot, b.slotGen = found[0], gen
	b.mu.Unlock()
	return info, nil
}

func (m tokenMatch) matches(ti p11.TokenInfo) bool {
	trim := func(s string) string { return strings.TrimRight(s, " \x00") }
	return (m.label == "" || trim(ti.Label) == m.label) &&
		(m.serial == "" || trim(ti.SerialNumber) == m.serial) &&
		(m.manufacturer == "" || trim(ti.ManufacturerID) == m.manufacturer) &&
		(m.model == "" || trim(ti.Model) == m.model)
}

// checkMechanism refuses a token without CKM_AES_GCM. There is no fallback:
// AES key wrap (RFC 3394/5649) is deterministic and binds no associated data,
// so it would change the contract rather than implement it.
func (b *Backend) checkMechanism() error {
	b.mu.Lock()
	slot := b.slot
	b.mu.Unlock()
	var mi p11.MechanismInfo
	_, err := b.mod.call(func(c *p11.Ctx) error {
		var err error
		mi, err = c.GetMechanismInfo(slot, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, nil)})
		return err
	})
	var ck p11.Error
	if errors.As(err, &ck) && ck == p11.CKR_MECHANISM_INVALID {
		return fmt.Errorf("%w: token %s does not support CKM_AES_GCM, which keywarden needs (there is no fallback mechanism)", keystore.ErrConfig, b.cfg.token)
	}
	if err != nil {
		return classify("C_GetMechanismInfo", err)
	}
	if mi.Flags&(p11.CKF_ENCRYPT|p11.CKF_DECRYPT) != p11.CKF_ENCRYPT|p11.CKF_DECRYPT {
		return fmt.Errorf("%w: token %s cannot encrypt and decrypt with CKM_AES_GCM", keystore.ErrConfig, b.cfg.token)
	}
	return nil
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
			if faultOf(err) == faultSession && b.tokenHealthy(c, s) {
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

// tokenHealthy probes the token and the session after an ambiguous failure.
// It runs inside a callIn, so it uses the context directly.
func (b *Backend) tokenHealthy(c *p11.Ctx, s session) bool {
	b.mu.Lock()
	slot := b.slot
	b.mu.Unlock()
	if _, err := c.GetTokenInfo(slot); err != nil {
		return false
	}
	_, err := c.GetSessionInfo(s.h)
	return err == nil
}

// lookup finds the version a key_id names, searching the token again (at
// most once a second) for a version added since the last load.
func (b *Backend) lookup(s session, st *state, keyID string) (*version, error) {
	if v := st.byKeyID[keyID]; v != nil {
		return v, nil
	}
	b.mu.Lock()
	now := b.now()
	again := now.Sub(b.lastMiss) >= minMissRefresh
	if again {
		b.lastMiss = now
	}
	b.mu.Unlock()
	if again {
		fresh, err := b.reload(s)
		if err != nil {
			return nil, err
		}
		if v := fresh.byKeyID[keyID]; v != nil {
			return v, nil
		}
	}
	return nil, fmt.Errorf("%w: no version %q under label %q on token %s", keystore.ErrKeyNotFound, short(keyID), b.cfg.label, b.cfg.token)
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

// openSession opens a read-write session on the token and logs in, for the
// pool. The login is shared by every session of the process;
// CKR_USER_ALREADY_LOGGED_IN is success. It returns the module generation
// the handle belongs to.
func (b *Backend) openSession() (p11.SessionHandle, uint64, error) {
	b.mu.Lock()
	slot, slotGen := b.slot, b.slotGen
	b.mu.Unlock()
	if slotGen != b.mod.generation() {
		if _, err := b.tokenInfo(); err != nil {
			return 0, 0, err
		}
		b.mu.Lock()
		slot = b.slot
		b.mu.Unlock()
	}
	var h p11.SessionHandle
	gen, err := b.mod.call(func(c *p11.Ctx) error {
		var err error
		h, err = c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return classify("C_OpenSession", err)
		}
		if err := b.login(c, h); err != nil {
			_ = c.CloseSession(h)
			return err
		}
		return nil
	})
	if err != nil {
		return 0, 0, classify("C_OpenSession", err)
	}
	return h, gen, nil
}

// login logs the process in as the token's user. PKCS#11 keeps one login
// per process and token: while another backend in this process holds a
// session on the token, C_Login answers CKR_USER_ALREADY_LOGGED_IN and the
// PIN is not checked again.
func (b *Backend) login(c *p11.Ctx, h p11.SessionHandle) error {
	pin, err := b.cfg.pin()
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(pin))
	b.mu.Lock()
	refused := b.hasRejected && b.rejectedPIN == sum
	b.mu.Unlock()
	if refused {
		// Tokens lock the user PIN after a few failures; retrying a PIN
		// already refused would walk into that lock.
		return fmt.Errorf("%w: token %s refused this PIN before; not trying it again (fix the PIN file)", keystore.ErrPermission, b.cfg.token)
	}
	err = c.Login(h, p11.CKU_USER, pin)
	var ck p11.Error
	if errors.As(err, &ck) && ck == p11.CKR_USER_ALREADY_LOGGED_IN {
		return nil
	}
	err = classify("C_Login", err)
	if faultOf(err) == faultPIN {
		b.mu.Lock()
		b.rejectedPIN, b.hasRejected = sum, true
		b.mu.Unlock()
	}
	return err
}

// reset forgets every session, the slot and the object list, so the next
// call finds the token again, logs in and searches its objects. The slot and
// the object list are dropped before the pool's epoch moves on, so that a
// session opened in the new epoch finds the token and reads its objects
// again.
func (b *Backend) reset() {
	b.mu.Lock()
	b.st = nil
	b.stamp++
	b.slotGen = 0
	b.mu.Unlock()
	b.pool.reset()
}

// invalidate forgets the object list only.
func (b *Backend) invalidate() {
	b.mu.Lock()
	b.st = nil
	b.stamp++
	b.mu.Unlock()
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

//go:build !nopkcs11

package pkcs11

import (
	"context"
	"fmt"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
)

// defaultSessions is the session pool size. Every Wrap/Unwrap holds one
// session for two library calls; a network HSM is latency-bound, so a few
// more sessions than cores keep it busy. Tokens that report a lower session
// limit get that limit instead.
const defaultSessions = 16

// pool holds a backend's sessions: at most size of them open, idle ones
// handed out again, and those of an earlier epoch (before a reset) or module
// generation closed instead.
type pool struct {
	mod  *module
	open func() (p11.SessionHandle, uint64, error) // opens a logged-in session

	sem  chan struct{} // one slot per open session, idle or in use
	idle chan session

	mu     sync.Mutex
	closed bool
	epoch  uint64 // bumped by reset; older sessions are closed on release
}

type session struct {
	h     p11.SessionHandle
	gen   uint64 // module generation the handle belongs to
	epoch uint64
}

// poolSize is defaultSessions, or less if the token allows fewer sessions.
func poolSize(ti p11.TokenInfo) int {
	n := defaultSessions
	for _, limit := range []uint{ti.MaxSessionCount, ti.MaxRwSessionCount} {
		if limit != p11.CK_EFFECTIVELY_INFINITE && limit != p11.CK_UNAVAILABLE_INFORMATION && int(limit) < n {
			n = max(int(limit), 1)
		}
	}
	return n
}

func newPool(size int, mod *module, open func() (p11.SessionHandle, uint64, error)) *pool {
	return &pool{mod: mod, open: open, sem: make(chan struct{}, size), idle: make(chan session, size)}
}

// size is how many sessions the pool may have open.
func (p *pool) size() int { return cap(p.sem) }

// acquire takes an idle session or opens a new one, waiting for a free slot
// in the pool while ctx allows.
func (p *pool) acquire(ctx context.Context) (session, error) {
	for {
		select {
		case s := <-p.idle:
			if p.usable(s) {
				return s, nil
			}
			p.drop(s)
			continue
		default:
		}
		select {
		case s := <-p.idle:
			if p.usable(s) {
				return s, nil
			}
			p.drop(s)
		case p.sem <- struct{}{}:
			p.mu.Lock()
			closed, epoch := p.closed, p.epoch
			p.mu.Unlock()
			if closed {
				<-p.sem
				return session{}, fmt.Errorf("%w: pkcs11 keystore is closed", keystore.ErrUnavailable)
			}
			h, gen, err := p.open()
			if err != nil {
				<-p.sem
				return session{}, err
			}
			return session{h: h, gen: gen, epoch: epoch}, nil
		case <-ctx.Done():
			return session{}, ctx.Err()
		}
	}
}

// usable reports whether a pooled session may be handed out again.
func (p *pool) usable(s session) bool {
	gen := p.mod.generation() // before p.mu: module lock first, never inside
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && s.epoch == p.epoch && s.gen == gen
}

// release returns s to the pool, or closes it if it failed or belongs to an
// older epoch or module generation.
func (p *pool) release(s session, err error) {
	if faultOf(err) == faultSession || !p.usable(s) {
		p.drop(s)
		return
	}
	p.idle <- s
}

func (p *pool) drop(s session) {
	// A handle from an older module generation is already dead, and its
	// number may now belong to someone else's session: callIn skips it.
	_ = p.mod.callIn(s.gen, func(c *p11.Ctx) error { return c.CloseSession(s.h) })
	<-p.sem
}

// reset starts a new epoch: idle sessions are closed now, those in use on
// release.
func (p *pool) reset() {
	p.mu.Lock()
	p.epoch++
	p.mu.Unlock()
	for {
		select {
		case s := <-p.idle:
			p.drop(s)
		default:
			return
		}
	}
}

// close closes every session, waiting for those in use (a library call
// cannot be interrupted), and refuses new ones. It reports false if the
// pool was already closed.
func (p *pool) close() bool {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	p.closed = true
	p.mu.Unlock()
	// Hold every slot: idle sessions are closed as they are found, and
	// sessions in use close on release once they see closed.
	for held := 0; held < cap(p.sem); {
		select {
		case p.sem <- struct{}{}:
			held++
		case s := <-p.idle:
			p.drop(s)
		}
	}
	return true
}

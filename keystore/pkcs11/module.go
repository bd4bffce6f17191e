//go:build !nopkcs11

package pkcs11

import (
	"errors"
	"fmt"
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
)

// A PKCS#11 module is process-global: C_Initialize may be called once, and
// C_Finalize tears down every session of every user of the module. So the
// backends that name the same module share one *module, reference-counted;
// the last Close finalizes it.
var modules = struct {
	sync.Mutex
	byPath map[string]*module
}{byPath: map[string]*module{}}

type module struct {
	path string

	// mu is held shared by every library call and exclusively by reinit and
	// release, so the module is never finalized under a call in flight.
	mu   sync.RWMutex
	ctx  *p11.Ctx // nil once finalized
	gen  uint64   // bumped by every re-initialization; handles die with it
	refs int      // guarded by modules' lock
	// owned is false if someone else in the process had already initialized
	// the module; then we never finalize it.
	owned      bool
	lastReinit time.Time
}

// minReinitInterval bounds how often a broken token makes us finalize and
// re-initialize the module: a re-initialization of a network HSM's client
// library can take seconds.
const minReinitInterval = time.Second

func acquireModule(path string) (*module, error) {
	modules.Lock()
	defer modules.Unlock()
	if m := modules.byPath[path]; m != nil {
		m.refs++
		return m, nil
	}
	m := &module{path: path, gen: 1}
	var ctx *p11.Ctx
	err := guard(func() error {
		ctx = p11.New(path)
		if ctx == nil {
			return fmt.Errorf("%w: cannot load PKCS#11 module %s (dlopen failed: wrong architecture or missing dependencies?)", keystore.ErrConfig, path)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.ctx = ctx
	owned, err := m.initialize()
	if err != nil {
		_ = guard(func() error { ctx.Destroy(); return nil })
		return nil, err
	}
	m.owned = owned
	m.refs = 1
	modules.byPath[path] = m
	return m, nil
}

// initialize calls C_Initialize; the caller holds mu or owns m alone.
func (m *module) initialize() (owned bool, err error) {
	err = guard(func() error { return m.ctx.Initialize() })
	var ck p11.Error
	if errors.As(err, &ck) && ck == p11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		return false, nil
	}
	if err != nil {
		return false, classify("C_Initialize", err)
	}
	return true, nil
}

func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.byPath, m.path)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.owned {
		_ = guard(func() error { return m.ctx.Finalize() })
	}
	_ = guard(func() error { m.ctx.Destroy(); return nil })
	m.ctx = nil
}

// call runs one library call with the module pinned. It also reports the
// generation the call ran under, so handles from it can be told apart from
// handles of a later generation that may reuse the same numbers.
func (m *module) call(fn func(*p11.Ctx) error) (gen uint64, err error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ctx == nil {
		return m.gen, fmt.Errorf("%w: PKCS#11 module %s is closed", keystore.ErrUnavailable, m.path)
	}
	return m.gen, guarded(func() error { return fn(m.ctx) })
}

// callIn is call for work on a session or object handle of generation gen.
// If the module has been re-initialized since, the handle is dead (and its
// number may have been reused), so fn does not run.
func (m *module) callIn(gen uint64, fn func(*p11.Ctx) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ctx == nil || m.gen != gen {
		return errStale
	}
	return guarded(func() error { return fn(m.ctx) })
}

var errStale = &opError{op: "session", fault: faultSession, err: errors.New("module was re-initialized")}

// guarded is guard for calls on a live module: a panic there means the
// library or our use of it is in a bad state, so it is a session fault and
// the backend reopens everything before trying again.
func guarded(fn func() error) error {
	err := guard(fn)
	if err == errPanic {
		return &opError{op: "library call", fault: faultSession, err: errors.New("panicked")}
	}
	return err
}

func (m *module) generation() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.gen
}

// reinit finalizes and re-initializes the module if nobody has done so since
// generation seen, and not more often than minReinitInterval. Some modules
// (SoftHSM among them) notice a token that went away but not one that came
// back until they are re-initialized; a restarted HSM client library needs it
// too. Every session and object handle of every backend on the module dies;
// they notice by the generation and reopen.
func (m *module) reinit(seen uint64, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || m.gen != seen || now.Sub(m.lastReinit) < minReinitInterval {
		return
	}
	m.lastReinit = now
	m.gen++
	if m.owned {
		_ = guard(func() error { return m.ctx.Finalize() })
	}
	if owned, err := m.initialize(); err == nil {
		m.owned = m.owned || owned
	}
}

// guard turns a panic inside a library call into an ErrUnavailable error.
// It catches panics in the Go wrapper (bad arguments, a nil context); a crash
// inside the C library itself (SIGSEGV) cannot be recovered by Go and still
// takes the process down.
func guard(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// The panic value is not echoed: it could hold anything.
			err = errPanic
		}
	}()
	return fn()
}

var errPanic = fmt.Errorf("%w: PKCS#11 library call panicked", keystore.ErrUnavailable)

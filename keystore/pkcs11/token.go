//go:build !nopkcs11

package pkcs11

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
)

// token is the one token a URI selects: which slot it is in (found again
// after a fault or a module re-initialization), opening sessions on it
// logged in as its user, and the PIN it refused, which is not tried again.
type token struct {
	match tokenMatch
	pin   func() (string, error)
	mod   *module

	mu          sync.Mutex
	slot        uint
	slotGen     uint64            // module generation slot was found in; 0: unknown
	rejectedPIN [sha256.Size]byte // hash of the last PIN the token refused
	hasRejected bool
}

// find finds the slot of the token and returns its info.
func (t *token) find() (p11.TokenInfo, error) {
	var (
		found   []uint
		info    p11.TokenInfo
		visible []string
	)
	gen, err := t.mod.call(func(c *p11.Ctx) error {
		slots, err := c.GetSlotList(true)
		if err != nil {
			return err
		}
		for _, id := range slots {
			if want := t.match.slotID; want != nil && id != *want {
				continue
			}
			ti, err := c.GetTokenInfo(id)
			if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
				continue
			}
			if !t.match.matches(ti) {
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
		return info, sessionFault("find token", fmt.Errorf("no initialized token matches %s (tokens present: %s)", t.match, seen))
	case 1:
	default:
		return info, fmt.Errorf("%w: %d tokens match %s; add serial= to the URI", keystore.ErrConfig, len(found), t.match)
	}
	t.mu.Lock()
	t.slot, t.slotGen = found[0], gen
	t.mu.Unlock()
	return info, nil
}

func (m tokenMatch) matches(ti p11.TokenInfo) bool {
	trim := func(s string) string { return strings.TrimRight(s, " \x00") }
	return (m.label == "" || trim(ti.Label) == m.label) &&
		(m.serial == "" || trim(ti.SerialNumber) == m.serial) &&
		(m.manufacturer == "" || trim(ti.ManufacturerID) == m.manufacturer) &&
		(m.model == "" || trim(ti.Model) == m.model)
}

// slotID is the slot the token was last found in.
func (t *token) slotID() uint {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.slot
}

// forget makes the next openSession find the token again.
func (t *token) forget() {
	t.mu.Lock()
	t.slotGen = 0
	t.mu.Unlock()
}

// checkMechanism refuses a token without CKM_AES_GCM. There is no fallback:
// AES key wrap (RFC 3394/5649) is deterministic and binds no associated data,
// so it would change the contract rather than implement it.
func (t *token) checkMechanism() error {
	slot := t.slotID()
	var mi p11.MechanismInfo
	_, err := t.mod.call(func(c *p11.Ctx) error {
		var err error
		mi, err = c.GetMechanismInfo(slot, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, nil)})
		return err
	})
	var ck p11.Error
	if errors.As(err, &ck) && ck == p11.CKR_MECHANISM_INVALID {
		return fmt.Errorf("%w: token %s does not support CKM_AES_GCM, which keywarden needs (there is no fallback mechanism)", keystore.ErrConfig, t.match)
	}
	if err != nil {
		return classify("C_GetMechanismInfo", err)
	}
	if mi.Flags&(p11.CKF_ENCRYPT|p11.CKF_DECRYPT) != p11.CKF_ENCRYPT|p11.CKF_DECRYPT {
		return fmt.Errorf("%w: token %s cannot encrypt and decrypt with CKM_AES_GCM", keystore.ErrConfig, t.match)
	}
	return nil
}

// openSession opens a read-write session on the token, finding its slot
// again if the module was re-initialized or forget was called, and logs in.
// It returns the module generation the handle belongs to.
func (t *token) openSession() (p11.SessionHandle, uint64, error) {
	t.mu.Lock()
	slot, slotGen := t.slot, t.slotGen
	t.mu.Unlock()
	if slotGen != t.mod.generation() {
		if _, err := t.find(); err != nil {
			return 0, 0, err
		}
		slot = t.slotID()
	}
	var h p11.SessionHandle
	gen, err := t.mod.call(func(c *p11.Ctx) error {
		var err error
		h, err = c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return classify("C_OpenSession", err)
		}
		if err := t.login(c, h); err != nil {
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
// session on the token, C_Login answers CKR_USER_ALREADY_LOGGED_IN (which
// is success) and the PIN is not checked again.
func (t *token) login(c *p11.Ctx, h p11.SessionHandle) error {
	pin, err := t.pin()
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(pin))
	t.mu.Lock()
	refused := t.hasRejected && t.rejectedPIN == sum
	t.mu.Unlock()
	if refused {
		// Tokens lock the user PIN after a few failures; retrying a PIN
		// already refused would walk into that lock.
		return fmt.Errorf("%w: token %s refused this PIN before; not trying it again (fix the PIN file)", keystore.ErrPermission, t.match)
	}
	err = c.Login(h, p11.CKU_USER, pin)
	var ck p11.Error
	if errors.As(err, &ck) && ck == p11.CKR_USER_ALREADY_LOGGED_IN {
		return nil
	}
	err = classify("C_Login", err)
	if faultOf(err) == faultPIN {
		t.mu.Lock()
		t.rejectedPIN, t.hasRejected = sum, true
		t.mu.Unlock()
	}
	return err
}

// healthy probes the token and the session after an ambiguous failure. It
// runs inside a callIn, so it uses the library context directly.
func (t *token) healthy(c *p11.Ctx, h p11.SessionHandle) bool {
	if _, err := c.GetTokenInfo(t.slotID()); err != nil {
		return false
	}
	_, err := c.GetSessionInfo(h)
	return err == nil
}

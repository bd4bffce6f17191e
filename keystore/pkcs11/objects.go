//go:build !nopkcs11

package pkcs11

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
)

// Objects on the token, all with CKA_TOKEN and CKA_PRIVATE set and the
// CKA_LABEL from the URI's object= attribute:
//
//   - root key versions: CKO_SECRET_KEY, CKK_AES, 32 bytes, sensitive, never
//     extractable, CKA_ID = "kw" 0x01 ‖ creation time (Unix ns, big endian,
//     8 bytes) ‖ 8 random bytes. A disabled version has CKA_ENCRYPT and
//     CKA_DECRYPT false.
//   - primary pointers: CKO_DATA with CKA_APPLICATION "keywarden" and a
//     CKA_VALUE of "keywarden primary v1 seq=<n> id=<hex CKA_ID>". The
//     pointer with the highest seq wins (ties: the higher CKA_ID), so a
//     promotion that stops between creating the new pointer and destroying
//     the old one still reads as done. Pointers are replaced, not modified:
//     SoftHSM, like many tokens, makes a data object's CKA_VALUE read-only.
//
// key_id is "pkcs11:" + hex(CKA_ID): public (pkcs11-tool shows the same
// hex), unique across tokens by its random part, and it carries no token
// serial so that the same key replicated to several HSMs (one per
// control-plane node, or an HA group) has one key_id everywhere.

const (
	keyIDPrefix = "pkcs11:"
	application = "keywarden"
	pointerTag  = "keywarden primary v1"
	// maxObjects bounds a search; a label with this many versions is a
	// mistake, not a keyset.
	maxObjects = 1000
	maxPointer = 256

	// minMissRefresh bounds how often an Unwrap for an unknown key_id makes
	// us search the token again.
	minMissRefresh = time.Second
)

var ckaIDMagic = []byte{'k', 'w', 1}

const ckaIDLen = 3 + 8 + 8

// state is one consistent reading of the token's objects, valid for the
// module generation it was read in. It is never modified after it is built.
type state struct {
	gen        uint64
	versions   []*version // oldest first
	byKeyID    map[string]*version
	primary    *version // nil: see pointerErr
	pointerErr error
	pointers   []pointer
	chosen     pointer // the pointer that named primary; seq 0 if none
}

type version struct {
	keyID   string
	ckaID   []byte
	handle  p11.ObjectHandle
	enabled bool
	created time.Time
}

type pointer struct {
	handle p11.ObjectHandle
	seq    uint64
	ckaID  []byte
}

func (p pointer) after(q pointer) bool {
	if p.seq != q.seq {
		return p.seq > q.seq
	}
	return bytes.Compare(p.ckaID, q.ckaID) > 0
}

func newCKAID(now time.Time, r io.Reader) ([]byte, error) {
	id := make([]byte, ckaIDLen)
	copy(id, ckaIDMagic)
	binary.BigEndian.PutUint64(id[3:], uint64(now.UnixNano()))
	if _, err := io.ReadFull(r, id[11:]); err != nil {
		return nil, fmt.Errorf("%w: read random CKA_ID: %v", keystore.ErrUnavailable, err)
	}
	return id, nil
}

func validCKAID(id []byte) bool {
	return len(id) == ckaIDLen && bytes.HasPrefix(id, ckaIDMagic)
}

func createdOf(id []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(id[3:11]))).UTC()
}

func keyIDOf(id []byte) string { return keyIDPrefix + hex.EncodeToString(id) }

// parseKeyID returns the CKA_ID a key_id names, or ErrKeyNotFound if it is
// not a key_id of this backend at all.
func parseKeyID(kid string) ([]byte, error) {
	h, ok := strings.CutPrefix(kid, keyIDPrefix)
	id, err := hex.DecodeString(h)
	if !ok || err != nil || !validCKAID(id) {
		return nil, fmt.Errorf("%w: %q is not a pkcs11 keystore key_id", keystore.ErrKeyNotFound, short(kid))
	}
	return id, nil
}

func formatPointer(seq uint64, id []byte) []byte {
	return fmt.Appendf(nil, "%s seq=%d id=%x", pointerTag, seq, id)
}

func parsePointer(b []byte) (seq uint64, id []byte, err error) {
	f := strings.Fields(string(b))
	if len(b) > maxPointer || len(f) != 5 || strings.Join(f[:3], " ") != pointerTag {
		return 0, nil, errors.New("not a keywarden primary pointer")
	}
	s, okS := strings.CutPrefix(f[3], "seq=")
	h, okH := strings.CutPrefix(f[4], "id=")
	if !okS || !okH {
		return 0, nil, errors.New("not a keywarden primary pointer")
	}
	if seq, err = strconv.ParseUint(s, 10, 64); err != nil {
		return 0, nil, errors.New("bad seq in primary pointer")
	}
	if id, err = hex.DecodeString(h); err != nil || !validCKAID(id) {
		return 0, nil, errors.New("bad id in primary pointer")
	}
	return seq, id, nil
}

// Searches match only private token objects. A token that allows R/W
// public sessions lets anyone who can reach it, PIN or not, create public
// objects; one under our label (a key whose value its maker knows, a
// pointer naming it) must never become a root key version or the primary.
// Every object keywarden makes is private (generate, writePointer).

func (b *Backend) keyTemplate() []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_LABEL, b.cfg.label),
	}
}

func (b *Backend) pointerTemplate() []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_LABEL, b.cfg.label),
		p11.NewAttribute(p11.CKA_APPLICATION, application),
	}
}

// ownObject checks, on an object a search returned, what the search asked
// for: a module that ignored the template still gets no public or session
// object past here.
func ownObject(token, private []byte) bool { return boolean(token) && boolean(private) }

func findAll(c *p11.Ctx, h p11.SessionHandle, tmpl []*p11.Attribute) (_ []p11.ObjectHandle, err error) {
	if err := c.FindObjectsInit(h, tmpl); err != nil {
		return nil, classify("C_FindObjectsInit", err)
	}
	defer func() {
		if ferr := c.FindObjectsFinal(h); ferr != nil && err == nil {
			err = classify("C_FindObjectsFinal", ferr)
		}
	}()
	var all []p11.ObjectHandle
	for {
		hs, _, err := c.FindObjects(h, 64)
		if err != nil {
			return nil, classify("C_FindObjects", err)
		}
		if len(hs) == 0 {
			return all, nil
		}
		all = append(all, hs...)
		if len(all) > maxObjects {
			return nil, fmt.Errorf("%w: more than %d objects match; is the label shared with something else?", keystore.ErrConfig, maxObjects)
		}
	}
}

// invalidate forgets the object list, so the next call searches the token.
func (b *Backend) invalidate() {
	b.mu.Lock()
	b.st = nil
	b.stamp++
	b.mu.Unlock()
}

// cached returns the object list if it is still good for generation gen.
func (b *Backend) cached(gen uint64) *state {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.st != nil && b.st.gen == gen {
		return b.st
	}
	return nil
}

func (b *Backend) ensureState(s session) (*state, error) {
	if st := b.cached(s.gen); st != nil {
		return st, nil
	}
	b.loadMu.Lock()
	defer b.loadMu.Unlock()
	if st := b.cached(s.gen); st != nil {
		return st, nil
	}
	return b.reload(s)
}

// reload reads the objects from the token and makes them current.
func (b *Backend) reload(s session) (*state, error) {
	b.mu.Lock()
	stamp := b.stamp
	b.mu.Unlock()
	st, err := b.load(s)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(st.versions) > 0 {
		b.seenKeys = true
	} else if b.seenKeys {
		// Versions are never all destroyed (the primary cannot be), so an
		// empty label means a token that was reset, replaced or is half
		// present.
		return nil, sessionFault("C_FindObjects", fmt.Errorf("token %s has no keys under label %q any more", b.cfg.token, b.cfg.label))
	}
	// A change made while we read (Add, Promote...) invalidated the
	// list; do not overwrite that with what we read before it.
	if b.stamp == stamp {
		b.st = st
	}
	return st, nil
}

// load reads every root key version and primary pointer under the label.
func (b *Backend) load(s session) (*state, error) {
	slot := b.tok.slotID()
	st := &state{gen: s.gen, byKeyID: map[string]*version{}}
	err := b.mod.callIn(s.gen, func(c *p11.Ctx) error {
		// Ask for the token first: SoftHSM answers searches on a token
		// whose files are gone with an empty list, but not this.
		if _, err := c.GetTokenInfo(slot); err != nil {
			return classify("C_GetTokenInfo", err)
		}
		keys, err := findAll(c, s.h, b.keyTemplate())
		if err != nil {
			return err
		}
		byID := map[string]bool{}
		for _, h := range keys {
			v, err := b.readVersion(c, s.h, h)
			if err != nil {
				return err
			}
			if byID[string(v.ckaID)] {
				return fmt.Errorf("%w: two keys under label %q share CKA_ID %x", keystore.ErrConfig, b.cfg.label, v.ckaID)
			}
			byID[string(v.ckaID)] = true
			st.versions = append(st.versions, v)
			st.byKeyID[v.keyID] = v
		}
		st.pointers, err = b.readPointers(c, s.h)
		return err
	})
	if err != nil {
		return nil, err
	}
	sortVersions(st.versions)
	st.resolve(b)
	return st, nil
}

// resolve picks the primary from the pointers.
func (st *state) resolve(b *Backend) {
	st.chosen = pointer{}
	for _, p := range st.pointers {
		if p.after(st.chosen) {
			st.chosen = p
		}
	}
	st.primary = nil
	switch {
	case st.chosen.seq == 0 && len(st.versions) == 0:
		st.pointerErr = fmt.Errorf("%w: token %s has no root key under label %q (create one with: kmsctl keys init)", keystore.ErrConfig, b.cfg.token, b.cfg.label)
	case st.chosen.seq == 0:
		st.pointerErr = fmt.Errorf("%w: token %s has keys under label %q but no primary pointer (choose one with: kmsctl keys promote)", keystore.ErrConfig, b.cfg.token, b.cfg.label)
	default:
		st.primary = st.byKeyID[keyIDOf(st.chosen.ckaID)]
		if st.primary == nil {
			st.pointerErr = fmt.Errorf("%w: the primary pointer under label %q names %s, which is not on token %s", keystore.ErrConfig, b.cfg.label, keyIDOf(st.chosen.ckaID), b.cfg.token)
		}
	}
}

func (b *Backend) readVersion(c *p11.Ctx, sh p11.SessionHandle, h p11.ObjectHandle) (*version, error) {
	attrs, err := c.GetAttributeValue(sh, h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_ID, nil),
		p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
		p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
		p11.NewAttribute(p11.CKA_SENSITIVE, nil),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
		p11.NewAttribute(p11.CKA_DECRYPT, nil),
		p11.NewAttribute(p11.CKA_TOKEN, nil),
		p11.NewAttribute(p11.CKA_PRIVATE, nil),
	})
	if err != nil {
		return nil, classify("C_GetAttributeValue", err)
	}
	id := attrs[0].Value
	if !ownObject(attrs[6].Value, attrs[7].Value) {
		return nil, fmt.Errorf("%w: a key under label %q (CKA_ID %x) is not a private token object; keywarden refuses it", keystore.ErrConfig, b.cfg.label, id)
	}
	if !validCKAID(id) {
		return nil, fmt.Errorf("%w: a key under label %q has CKA_ID %x, which keywarden did not make; give keywarden a label of its own", keystore.ErrConfig, b.cfg.label, id)
	}
	kid := keyIDOf(id)
	if ulong(attrs[1].Value) != p11.CKK_AES || ulong(attrs[2].Value) != 32 {
		return nil, fmt.Errorf("%w: %s under label %q is not an AES-256 key", keystore.ErrConfig, kid, b.cfg.label)
	}
	if !boolean(attrs[3].Value) || boolean(attrs[4].Value) {
		return nil, fmt.Errorf("%w: %s under label %q is extractable or not sensitive; keywarden refuses a root key that can leave the HSM", keystore.ErrConfig, kid, b.cfg.label)
	}
	return &version{keyID: kid, ckaID: id, handle: h, enabled: boolean(attrs[5].Value), created: createdOf(id)}, nil
}

func (b *Backend) readPointers(c *p11.Ctx, sh p11.SessionHandle) ([]pointer, error) {
	hs, err := findAll(c, sh, b.pointerTemplate())
	if err != nil {
		return nil, err
	}
	out := make([]pointer, 0, len(hs))
	for _, h := range hs {
		attrs, err := c.GetAttributeValue(sh, h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_VALUE, nil),
			p11.NewAttribute(p11.CKA_TOKEN, nil),
			p11.NewAttribute(p11.CKA_PRIVATE, nil),
		})
		if err != nil {
			return nil, classify("C_GetAttributeValue", err)
		}
		if !ownObject(attrs[1].Value, attrs[2].Value) {
			return nil, fmt.Errorf("%w: a data object under label %q is not a private token object; keywarden refuses it", keystore.ErrConfig, b.cfg.label)
		}
		seq, id, err := parsePointer(attrs[0].Value)
		if err != nil {
			return nil, fmt.Errorf("%w: data object under label %q: %v", keystore.ErrConfig, b.cfg.label, err)
		}
		out = append(out, pointer{handle: h, seq: seq, ckaID: id})
	}
	return out, nil
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

// refreshPrimary re-reads the primary pointers (and asks for the token, so
// it is a health check) and reloads everything if they changed.
func (b *Backend) refreshPrimary(s session, st *state) (*state, error) {
	slot := b.tok.slotID()
	var ptrs []pointer
	err := b.mod.callIn(s.gen, func(c *p11.Ctx) error {
		if _, err := c.GetTokenInfo(slot); err != nil {
			return classify("C_GetTokenInfo", err)
		}
		var err error
		ptrs, err = b.readPointers(c, s.h)
		return err
	})
	if err != nil {
		return nil, err
	}
	var chosen pointer
	for _, p := range ptrs {
		if p.after(chosen) {
			chosen = p
		}
	}
	if chosen.seq == st.chosen.seq && bytes.Equal(chosen.ckaID, st.chosen.ckaID) {
		return st, nil
	}
	return b.reload(s)
}

// ulong decodes a CK_ULONG attribute (native byte order and width).
func ulong(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	default:
		return ^uint(0)
	}
}

func boolean(b []byte) bool { return len(b) == 1 && b[0] != 0 }

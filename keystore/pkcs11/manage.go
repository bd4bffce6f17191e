//go:build !nopkcs11

package pkcs11

import (
	"context"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
)

// Manager operations read the token afresh, so they act on what other
// processes (another node's kmsctl, the running plugin) did since. PKCS#11
// has no transactions: run one kmsctl at a time per token. A Promote that
// is interrupted leaves two pointers, and the newer one wins.

// snapshot returns the object list, read afresh from the token if fresh.
func (b *Backend) snapshot(ctx context.Context, fresh bool) (*state, error) {
	var out *state
	err := b.run(ctx, func(s session, st *state) error {
		if fresh {
			var err error
			if st, err = b.reload(s); err != nil {
				return err
			}
		}
		out = st
		return nil
	})
	return out, err
}

// List implements keystore.Manager. Created comes from the CKA_ID. A
// destroyed version is gone from the token and from the list.
func (b *Backend) List(ctx context.Context) ([]keystore.KeyVersion, error) {
	st, err := b.snapshot(ctx, true)
	if err != nil {
		return nil, err
	}
	out := make([]keystore.KeyVersion, 0, len(st.versions))
	for _, v := range st.versions {
		out = append(out, v.info(st))
	}
	return out, nil
}

func (v *version) info(st *state) keystore.KeyVersion {
	state := keystore.KeyEnabled
	if !v.enabled {
		state = keystore.KeyDisabled
	}
	return keystore.KeyVersion{KeyID: v.keyID, State: state, Primary: v == st.primary, Created: v.created}
}

// Add implements keystore.Manager: a new AES-256 key generated inside the
// token, not primary.
func (b *Backend) Add(ctx context.Context) (keystore.KeyVersion, error) {
	var added keystore.KeyVersion
	err := b.run(ctx, func(s session, _ *state) error {
		v, err := b.generate(s)
		if err != nil {
			return err
		}
		added = keystore.KeyVersion{KeyID: v.keyID, State: keystore.KeyEnabled, Created: v.created}
		return nil
	})
	b.invalidate()
	return added, err
}

func (b *Backend) generate(s session) (*version, error) {
	id, err := newCKAID(b.now(), b.rand)
	if err != nil {
		return nil, err
	}
	var h p11.ObjectHandle
	err = b.mod.callIn(s.gen, func(c *p11.Ctx) error {
		var err error
		h, err = c.GenerateKey(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
			p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_SENSITIVE, true),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_ENCRYPT, true),
			p11.NewAttribute(p11.CKA_DECRYPT, true),
			p11.NewAttribute(p11.CKA_WRAP, false),
			p11.NewAttribute(p11.CKA_UNWRAP, false),
			p11.NewAttribute(p11.CKA_SIGN, false),
			p11.NewAttribute(p11.CKA_VERIFY, false),
			p11.NewAttribute(p11.CKA_DERIVE, false),
			p11.NewAttribute(p11.CKA_LABEL, b.cfg.label),
			p11.NewAttribute(p11.CKA_ID, id),
		})
		return classify("C_GenerateKey", err)
	})
	if err != nil {
		return nil, err
	}
	return &version{keyID: keyIDOf(id), ckaID: id, handle: h, enabled: true, created: createdOf(id)}, nil
}

// writePointer makes v primary: a new pointer with the next seq, then the
// old pointers go.
func (b *Backend) writePointer(s session, st *state, id []byte) error {
	return b.mod.callIn(s.gen, func(c *p11.Ctx) error {
		tmpl := append(b.pointerTemplate(),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_VALUE, formatPointer(st.chosen.seq+1, id)),
		)
		if _, err := c.CreateObject(s.h, tmpl); err != nil {
			return classify("C_CreateObject", err)
		}
		for _, p := range st.pointers {
			// Best effort: a pointer left behind loses to the new one.
			_ = c.DestroyObject(s.h, p.handle)
		}
		return nil
	})
}

// find reloads the objects and returns the version keyID names.
func (b *Backend) find(s session, keyID string) (*state, *version, error) {
	if _, err := parseKeyID(keyID); err != nil {
		return nil, nil, err
	}
	st, err := b.reload(s)
	if err != nil {
		return nil, nil, err
	}
	v := st.byKeyID[keyID]
	if v == nil {
		return nil, nil, fmt.Errorf("%w: no version %q under label %q on token %s", keystore.ErrKeyNotFound, short(keyID), b.cfg.label, b.cfg.token)
	}
	return st, v, nil
}

// Promote implements keystore.Manager.
func (b *Backend) Promote(ctx context.Context, keyID string) error {
	err := b.run(ctx, func(s session, _ *state) error {
		st, v, err := b.find(s, keyID)
		if err != nil {
			return err
		}
		if !v.enabled {
			return fmt.Errorf("%w: cannot promote %s: it is disabled", keystore.ErrKeyDisabled, keyID)
		}
		if v == st.primary {
			return nil
		}
		return b.writePointer(s, st, v.ckaID)
	})
	b.invalidate()
	return err
}

// Disable implements keystore.Manager: CKA_ENCRYPT and CKA_DECRYPT are
// cleared on the key, so the HSM refuses it to every client.
func (b *Backend) Disable(ctx context.Context, keyID string) error {
	return b.setEnabled(ctx, keyID, false)
}

// Enable implements keystore.Manager.
func (b *Backend) Enable(ctx context.Context, keyID string) error {
	return b.setEnabled(ctx, keyID, true)
}

func (b *Backend) setEnabled(ctx context.Context, keyID string, on bool) error {
	err := b.run(ctx, func(s session, _ *state) error {
		st, v, err := b.find(s, keyID)
		if err != nil {
			return err
		}
		if !on && v == st.primary {
			return fmt.Errorf("%w: cannot disable the primary version %s; promote another first", keystore.ErrConfig, keyID)
		}
		return b.mod.callIn(s.gen, func(c *p11.Ctx) error {
			err := c.SetAttributeValue(s.h, v.handle, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_ENCRYPT, on),
				p11.NewAttribute(p11.CKA_DECRYPT, on),
			})
			return classify("C_SetAttributeValue", err)
		})
	})
	b.invalidate()
	return err
}

// Destroy implements keystore.Manager: C_DestroyObject on a disabled,
// non-primary version. Ciphertexts under it can never be unwrapped again.
func (b *Backend) Destroy(ctx context.Context, keyID string) error {
	err := b.run(ctx, func(s session, _ *state) error {
		st, v, err := b.find(s, keyID)
		if err != nil {
			return err
		}
		if v == st.primary {
			return fmt.Errorf("%w: cannot destroy the primary version %s", keystore.ErrConfig, keyID)
		}
		if v.enabled {
			return fmt.Errorf("%w: disable %s before destroying it", keystore.ErrConfig, keyID)
		}
		return b.mod.callIn(s.gen, func(c *p11.Ctx) error {
			return classify("C_DestroyObject", c.DestroyObject(s.h, v.handle))
		})
	})
	b.invalidate()
	return err
}

// Init creates the first root key version on the token uri names and makes
// it primary. It refuses a token that already has keywarden objects under
// the label.
func Init(ctx context.Context, uri string) (keystore.KeyVersion, error) {
	b, err := open(ctx, uri)
	if err != nil {
		return keystore.KeyVersion{}, err
	}
	defer b.Close()
	var kv keystore.KeyVersion
	err = b.run(ctx, func(s session, _ *state) error {
		st, err := b.reload(s)
		if err != nil {
			return err
		}
		if len(st.versions) > 0 || len(st.pointers) > 0 {
			return fmt.Errorf("%w: token %s already has %d root key versions under label %q; refusing to initialize it again (use kmsctl keys add and promote)", keystore.ErrConfig, b.cfg.token, len(st.versions), b.cfg.label)
		}
		v, err := b.generate(s)
		if err != nil {
			return err
		}
		if err := b.writePointer(s, st, v.ckaID); err != nil {
			return err
		}
		kv = keystore.KeyVersion{KeyID: v.keyID, State: keystore.KeyEnabled, Primary: true, Created: v.created}
		return nil
	})
	return kv, err
}

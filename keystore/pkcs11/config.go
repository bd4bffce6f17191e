//go:build !nopkcs11

package pkcs11

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stefanberger/go-pkcs11uri"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/secretfile"
)

// config is the typed form of a pkcs11: URI. It never holds the PIN itself,
// only the way to get it (a pin-source file; pin-value= is refused), so a
// PIN file rotated on disk is picked up at the next login.
type config struct {
	module string // absolute path of the PKCS#11 module
	token  tokenMatch
	label  string // CKA_LABEL shared by every root key version
	pin    func() (string, error)
}

// tokenMatch selects one token by the RFC 7512 path attributes that name a
// token. Empty fields match anything; at least token or serial is set.
type tokenMatch struct {
	label, serial, manufacturer, model string
	slotID                             *uint
}

func (m tokenMatch) String() string {
	if m.serial == "" && m.manufacturer == "" && m.model == "" && m.slotID == nil {
		return strconv.Quote(m.label)
	}
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+strconv.Quote(v))
		}
	}
	add("token", m.label)
	add("serial", m.serial)
	add("manufacturer", m.manufacturer)
	add("model", m.model)
	if m.slotID != nil {
		parts = append(parts, "slot-id="+strconv.FormatUint(uint64(*m.slotID), 10))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// maxPINFile bounds what a pin-source file may hold; PINs are short.
const maxPINFile = 4 << 10

// pinPath is the file a pin-source names: RFC 7512's file: URI, or an
// absolute path as go-pkcs11uri also takes.
func pinPath(src string) (string, error) {
	u, err := url.ParseRequestURI(src)
	if err != nil || (u.Scheme != "" && u.Scheme != "file") || u.Host != "" || !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("%w: pkcs11 pin-source %q: want file:/absolute/path", keystore.ErrConfig, src)
	}
	return u.Path, nil
}

// parseURI parses an RFC 7512 URI with go-pkcs11uri. Its errors never contain
// the URI itself, which may carry a pin-value (refused, but still there).
func parseURI(s string) (config, error) {
	u := pkcs11uri.New()
	if err := u.Parse(s); err != nil {
		// go-pkcs11uri's messages may quote attribute values; keep them
		// unless the URI carries a PIN.
		detail := err.Error()
		if strings.Contains(s, "pin-value") {
			detail = "malformed attribute"
		}
		if strings.Contains(s, "type=secret-key") {
			detail += " (go-pkcs11uri rejects type=secret-key: drop it, keywarden only uses secret keys)"
		}
		return config{}, fmt.Errorf("%w: bad pkcs11 URI: %s", keystore.ErrConfig, detail)
	}
	path := func(name string) string {
		v, _ := u.GetPathAttribute(name, false)
		return v
	}
	var c config
	if _, ok := u.GetPathAttribute("id", false); ok {
		return config{}, fmt.Errorf("%w: pkcs11 URI must not set id=: keywarden names its key versions by CKA_ID itself; object= selects the label", keystore.ErrConfig)
	}
	c.label = path("object")
	if c.label == "" {
		return config{}, fmt.Errorf("%w: pkcs11 URI needs object=<label> (the CKA_LABEL of the root key versions)", keystore.ErrConfig)
	}
	c.token = tokenMatch{
		label:        path("token"),
		serial:       path("serial"),
		manufacturer: path("manufacturer"),
		model:        path("model"),
	}
	if v, ok := u.GetPathAttribute("slot-id", false); ok {
		id, err := strconv.ParseUint(v, 10, 0)
		if err != nil {
			return config{}, fmt.Errorf("%w: pkcs11 URI slot-id %q is not a number", keystore.ErrConfig, v)
		}
		slot := uint(id)
		c.token.slotID = &slot
	}
	if c.token.label == "" && c.token.serial == "" && c.token.slotID == nil {
		return config{}, fmt.Errorf("%w: pkcs11 URI needs token=<label> or serial=<serial> to select a token", keystore.ErrConfig)
	}

	mod, ok := u.GetQueryAttribute("module-path", false)
	if !ok {
		return config{}, fmt.Errorf("%w: pkcs11 URI needs module-path=/absolute/path/to/module.so", keystore.ErrConfig)
	}
	if !filepath.IsAbs(mod) {
		return config{}, fmt.Errorf("%w: pkcs11 module-path %q must be absolute", keystore.ErrConfig, mod)
	}
	fi, err := os.Stat(mod)
	if err != nil || !fi.Mode().IsRegular() {
		return config{}, fmt.Errorf("%w: pkcs11 module-path %q is not a readable file", keystore.ErrConfig, mod)
	}
	c.module = mod

	// The PIN comes from a file only. go-pkcs11uri would also take it
	// inline (pin-value=), where ps, manifests, shell history and every
	// printed URI would show it.
	if _, ok := u.GetQueryAttribute("pin-value", false); ok {
		return config{}, fmt.Errorf("%w: pkcs11 URI sets pin-value=, which keywarden refuses (a PIN on a command line shows in ps and logs): put the PIN in a file readable only by keywarden (chmod 600) and use pin-source=file:/path/to/pin", keystore.ErrConfig)
	}
	src, ok := u.GetQueryAttribute("pin-source", false)
	if !ok {
		return config{}, fmt.Errorf("%w: pkcs11 URI needs pin-source=file:/path/to/pin", keystore.ErrConfig)
	}
	pinFile, err := pinPath(src)
	if err != nil {
		return config{}, err
	}
	if fi, err := os.Stat(pinFile); err == nil && fi.Size() > maxPINFile {
		return config{}, fmt.Errorf("%w: pkcs11 pin-source %q is %d bytes; a PIN file holds just the PIN", keystore.ErrConfig, src, fi.Size())
	}
	c.pin = func() (string, error) {
		// Read at every login, so a PIN changed on disk is used; under the
		// secret-file rule, whose errors name the file, never the PIN.
		b, err := secretfile.Read("pkcs11 pin-source", pinFile, maxPINFile)
		if err != nil {
			return "", err
		}
		// `echo 1234 > pin` leaves a newline that is not part of the PIN.
		pin := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if pin == "" {
			return "", fmt.Errorf("%w: PKCS#11 PIN file %s is empty", keystore.ErrConfig, pinFile)
		}
		return pin, nil
	}
	return c, nil
}

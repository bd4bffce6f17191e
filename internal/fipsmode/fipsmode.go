// Package fipsmode says whether the process runs in FIPS 140-3 mode, for
// keywarden's keywarden_fips140_enabled metric and kmsctl status
// (docs/fips.md).
package fipsmode

import "crypto/fips140"

// Modes, from the GODEBUG setting fips140 (whose default is "on" in a
// binary built with GOFIPS140 set, "off" otherwise).
const (
	// Off: Go's cryptography runs as usual.
	Off = "off"
	// On: Go's cryptography runs in FIPS 140-3 mode (module self-tests
	// and integrity check at start-up, the module's approved random bit
	// generator), but algorithms the module does not approve still work.
	On = "on"
	// Only: as On, and algorithms the module does not approve return
	// errors or panic.
	Only = "only"
)

// Mode is the process's FIPS 140-3 mode: Off, On or Only. It does not
// change while the process runs.
func Mode() string {
	switch {
	case !fips140.Enabled():
		return Off
	case fips140.Enforced():
		return Only
	}
	return On
}

// Module is the version of the Go Cryptographic Module the binary was
// built with: a frozen module's version such as "v1.0.0" when built with
// GOFIPS140 set to it, "latest" otherwise (the Go toolchain's own copy,
// not one a laboratory validated).
func Module() string { return fips140.Version() }

//go:build !nopkcs11

package pkcs11

// CheckURI reports whether uri is a well-formed pkcs11: URI for keywarden,
// parsing it exactly as Open does but loading no module and reading no PIN.
// Like Open's parsing, it checks that module-path names a regular file and
// that a pin-source file, if it exists, is not oversized.
func CheckURI(uri string) error {
	_, err := parseURI(uri)
	return err
}

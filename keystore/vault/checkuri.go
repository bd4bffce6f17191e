package vault

// CheckURI reports whether uri is a well-formed hcvault:// URI, parsing it
// exactly as Open does but opening nothing: no client, no credentials, no
// network. Like Open's parsing, it loads the TLS files the URI names
// (ca-file, cert-file, key-file), so those must exist.
func CheckURI(uri string) error {
	_, err := parseURI(uri)
	return err
}

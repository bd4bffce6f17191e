package gcpkms

// CheckURI reports whether uri is a well-formed gcp-kms:// URI, parsing it
// exactly as Open does but opening nothing: no client, no credentials, no
// network.
func CheckURI(uri string) error {
	_, err := parseURI(uri)
	return err
}

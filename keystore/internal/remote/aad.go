package remote

import "encoding/binary"

// BoundAAD is the associated data a backend has its keystore (or its own
// AES-GCM, for an envelope) authenticate: domain, the key_id and the
// caller's aad, each after its length as 4 bytes big endian, so that no two
// (domain, key_id, aad) give the same bytes. The domain names the backend
// and the layout's version ("keywarden.io/gcpkms/v1"): ciphertexts already
// stored depend on these bytes, which must never change.
func BoundAAD(domain, keyID string, aad []byte) []byte {
	out := make([]byte, 0, len(domain)+len(keyID)+len(aad)+12)
	for _, part := range [][]byte{[]byte(domain), []byte(keyID), aad} {
		out = binary.BigEndian.AppendUint32(out, uint32(len(part)))
		out = append(out, part...)
	}
	return out
}

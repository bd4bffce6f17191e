// Package pkcs11 is the keystore whose root key lives in an HSM, reached
// through a PKCS#11 module (github.com/miekg/pkcs11, so it needs cgo).
//
// The backend is addressed by an RFC 7512 URI such as
//
//	pkcs11:token=keywarden;object=root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/keywarden/hsm-pin
//
// Root key versions are AES-256 secret keys on the token (CKA_TOKEN,
// CKA_PRIVATE, CKA_SENSITIVE, never extractable) that share the CKA_LABEL
// named by object= and differ by CKA_ID. Wrap and Unwrap run CKM_AES_GCM
// inside the HSM; key bytes never leave it. Which version is primary is kept
// in a small CKO_DATA object under the same label; a disabled version has
// CKA_ENCRYPT and CKA_DECRYPT cleared, so the HSM itself refuses to use it.
// docs/keystores/pkcs11.md is the operator's guide.
//
// Everything but this file is built only without the nopkcs11 build tag;
// `CGO_ENABLED=0 go build -tags nopkcs11 ./...` builds keywarden without
// PKCS#11 support.
package pkcs11

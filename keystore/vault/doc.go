// Package vault is the keystore whose root key is a HashiCorp Vault (or
// OpenBao) Transit key. Wrap and Unwrap are Transit encrypt and decrypt
// calls with the AAD as associated_data; the key never leaves Vault.
//
// The backend is addressed by a URI in Tink's hcvault form:
//
//	hcvault://vault.example.com:8200/transit/keys/keywarden?token-file=/etc/keywarden/vault-token
//	hcvault://vault.example.com:8200/transit/keys/keywarden?role-id-file=/etc/keywarden/role-id&secret-id-file=/etc/keywarden/secret-id
//	hcvault://vault.example.com:8200/transit/keys/keywarden?auth=cert&cert-file=/etc/keywarden/tls.crt&key-file=/etc/keywarden/tls.key
//
// key_id is "<mount>/keys/<name>:v<version>", the Transit version Wrap
// used. KeyID reads the key (latest_version) and probes encrypt and decrypt
// at most once per key-id-ttl (default 1m), so kms's health checks, every
// 5 s, cost about three Vault calls a minute. docs/keystores/vault.md is the
// operator's guide.
package vault

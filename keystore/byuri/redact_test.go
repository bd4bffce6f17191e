package byuri

import (
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	const secret = "S3CRET"
	tests := []struct {
		name, uri, want string
	}{
		{"file", "file:///etc/keywarden/keyset.json", "file:///etc/keywarden/keyset.json"},
		{"file with a stray query", "file:///k.json?token=" + secret, "file:///k.json?token=REDACTED"},
		{"pkcs11 pin-source", "pkcs11:token=kw;object=root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/keywarden/pin",
			"pkcs11:token=kw;object=root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/keywarden/pin"},
		{"pkcs11 pin-value", "pkcs11:token=kw;object=root?module-path=/m.so&pin-value=" + secret, "pkcs11:token=kw;object=root?module-path=/m.so&pin-value=REDACTED"},
		{"pkcs11 pin-value first", "pkcs11:token=kw?pin-value=" + secret + "&module-path=/m.so", "pkcs11:token=kw?pin-value=REDACTED&module-path=/m.so"},
		{"pkcs11 pin-value in the path", "pkcs11:token=kw;pin-value=" + secret + ";object=root", "pkcs11:token=kw;pin-value=REDACTED;object=root"},
		{"pkcs11 pct-encoded name", "pkcs11:token=kw?pin%2Dvalue=" + secret, "pkcs11:token=kw?pin%2Dvalue=REDACTED"},
		{"pkcs11 upper case", "pkcs11:token=kw;PIN-VALUE=" + secret, "pkcs11:token=kw;PIN-VALUE=REDACTED"},
		{"vault token param", "hcvault://v:8200/transit/keys/kw?token=" + secret + "&tls=off", "hcvault://v:8200/transit/keys/kw?token=REDACTED&tls=off"},
		{"vault files", "hcvault://v:8200/transit/keys/kw?role-id-file=/r&secret-id-file=/s&timeout=2s",
			"hcvault://v:8200/transit/keys/kw?role-id-file=/r&secret-id-file=/s&timeout=2s"},
		{"userinfo", "hcvault://root:" + secret + "@v:8200/transit/keys/kw", "hcvault://REDACTED@v:8200/transit/keys/kw"},
		{"token as user", "hcvault://" + secret + "@v:8200/transit/keys/kw?token-file=/t", "hcvault://REDACTED@v:8200/transit/keys/kw?token-file=/t"},
		{"aws", "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/abc?endpoint=http://127.0.0.1:4566&context-name=x",
			"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/abc?endpoint=http://127.0.0.1:4566&context-name=x"},
		{"credentials in an endpoint", "aws-kms://arn:aws:kms:r:1:key/a?endpoint=https://u:" + secret + "@h", "aws-kms://arn:aws:kms:r:1:key/a?endpoint=REDACTED"},
		{"bare query word", "hcvault://v/transit/keys/kw?" + secret, "hcvault://v/transit/keys/kw?REDACTED"},
		{"fragment", "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k#" + secret, "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k#REDACTED"},
		{"no scheme", secret, "REDACTED"},
		{"bad escape in name", "hcvault://v/transit/keys/kw?%zz" + secret + "=1", "hcvault://v/transit/keys/kw?REDACTED"},
		{"bad escape in value", "pkcs11:token=kw?module-path=%zz" + secret, "pkcs11:token=kw?module-path=REDACTED"},
		{"empty", "", "REDACTED"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Redact(tc.uri)
			if got != tc.want {
				t.Fatalf("Redact(%q) = %q, want %q", tc.uri, got, tc.want)
			}
			if strings.Contains(got, secret) {
				t.Fatalf("Redact(%q) = %q shows the secret", tc.uri, got)
			}
			if again := Redact(got); again != got {
				t.Fatalf("Redact is not idempotent: %q then %q", got, again)
			}
		})
	}
}

// FuzzRedact: Redact never panics, is idempotent, and never shows a
// pin-value's value, whatever surrounds it.
func FuzzRedact(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=kw;object=root?module-path=/m.so&pin-value=1234",
		"hcvault://u:p@v:8200/transit/keys/kw?token-file=/t",
		"file:///k.json",
		"aws-kms://arn:aws:kms:r:1:key/a?endpoint=https://h",
		"",
	} {
		f.Add(s)
	}
	const marker = "Zq9PINmarker"
	f.Fuzz(func(t *testing.T, s string) {
		if strings.Contains(s, marker) {
			return
		}
		got := Redact(s)
		if again := Redact(got); again != got {
			t.Fatalf("Redact(%q) = %q, then %q", s, got, again)
		}
		for _, sep := range []string{"?", "&", ";"} {
			if r := Redact(s + sep + "pin-value=" + marker); strings.Contains(r, marker) {
				t.Fatalf("Redact(%q) = %q shows the pin-value", s+sep+"pin-value="+marker, r)
			}
		}
	})
}

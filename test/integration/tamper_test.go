package integration

import (
	"encoding/json"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/kms/envelope"
)

// TestTamperedAnnotationCodes pins the code every kind of tampered
// kek.keywarden.io annotation gets from the real binary on the file
// keystore, where the request's key_id is kept consistent with the key_id
// the tampered annotation declares (what an attacker who can write etcd
// would do). docs/security.md states these codes.
func TestTamperedAnnotationCodes(t *testing.T) {
	_, uri := newKeyset(t)
	var added []struct{ KeyID string }
	for _, name := range []string{"enabled", "disabled"} {
		var a []struct{ KeyID string }
		if err := json.Unmarshal([]byte(kmsctl(t, "keys", "add", "--keystore", uri, "-o", "json")), &a); err != nil || len(a) != 1 {
			t.Fatalf("keys add (%s): %v %v", name, a, err)
		}
		added = append(added, a[0])
	}
	other, disabled := added[0].KeyID, added[1].KeyID
	kmsctl(t, "keys", "disable", "--keystore", uri, "--force", disabled)
	p := start(t, uri, "")

	enc, err := p.client.Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: []byte("0123456789abcdef0123456789abcdef"), Uid: "tamper"})
	if err != nil {
		t.Fatal(err)
	}
	ann := enc.Annotations[envelope.AnnotationKey]
	rootID, rootCT, err := envelope.DecodeKEK(ann)
	if err != nil || rootID != enc.KeyId {
		t.Fatalf("annotation: %q, %v; Encrypt key_id %q", rootID, err, enc.KeyId)
	}
	decrypt := func(keyID string, a []byte) codes.Code {
		t.Helper()
		_, err := p.client.Decrypt(ctx(t), &kmsapi.DecryptRequest{Uid: "tamper", Ciphertext: enc.Ciphertext, KeyId: keyID,
			Annotations: map[string][]byte{envelope.AnnotationKey: a}})
		return status.Code(err)
	}
	if got := decrypt(enc.KeyId, ann); got != codes.OK {
		t.Fatalf("untampered: %v", got)
	}
	reencode := func(id string, ct []byte) []byte {
		t.Helper()
		b, err := envelope.EncodeKEK(id, ct)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// Every bit of the wrapped KEK (the keystore's ciphertext, Tink prefix
	// included), key_id untouched: the keystore refuses it.
	for i := range len(rootCT) * 8 {
		ct := append([]byte(nil), rootCT...)
		ct[i/8] ^= 1 << (i % 8)
		if got := decrypt(rootID, reencode(rootID, ct)); got != codes.InvalidArgument {
			t.Errorf("wrapped KEK bit %d flipped: %v, want InvalidArgument", i, got)
		}
	}

	// The annotation's key_id rewritten, and the request's with it.
	for _, tc := range []struct {
		name, id string
		want     codes.Code
	}{
		// The wrapped KEK does not carry that version's Tink prefix.
		{"another enabled version", other, codes.InvalidArgument},
		// Refused before any decryption: the version is disabled.
		{"a disabled version", disabled, codes.FailedPrecondition},
		// No such version: indistinguishable from a destroyed one.
		{"an unknown version", rootID[:len(rootID)-1] + string(rootID[len(rootID)-1]^1), codes.NotFound},
	} {
		if got := decrypt(tc.id, reencode(tc.id, rootCT)); got != tc.want {
			t.Errorf("key_id rewritten to %s: %v, want %v", tc.name, got, tc.want)
		}
	}

	// A genuine annotation of another local KEK under the same key_id:
	// it unwraps, but the ciphertext's seal binds the annotation.
	p2 := start(t, uri, "") // a fresh process mints a fresh local KEK
	enc2, err := p2.client.Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: []byte("y"), Uid: "tamper"})
	if err != nil {
		t.Fatal(err)
	}
	if string(enc2.Annotations[envelope.AnnotationKey]) == string(ann) {
		t.Fatal("the second plugin reused the first one's local KEK; the swap case tests nothing")
	}
	if got := decrypt(enc2.KeyId, enc2.Annotations[envelope.AnnotationKey]); got != codes.InvalidArgument {
		t.Errorf("annotation swapped for another KEK's: %v, want InvalidArgument", got)
	}
}

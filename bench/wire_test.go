package bench_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	kmsapi "k8s.io/kms/apis/v2"
)

// BenchmarkWire is the protobuf cost of the KMS v2 messages as keywarden
// shapes them (61-byte ciphertext, key_id, the kek.keywarden.io annotation
// with its ~100-byte wrapped KEK) and as the floor does (a 32-byte copy, no
// annotations). Both sides pay it on every call: the server marshals the
// EncryptResponse and unmarshals the DecryptRequest, the client the
// reverse. It is the part of keywarden's cost over the floor that comes
// from carrying the wrapped KEK in an annotation map at all.
func BenchmarkWire(b *testing.B) {
	ann := map[string][]byte{"kek.keywarden.io": make([]byte, 102)}
	const uid = "0123456789abcdef0123456789abcdef0123"
	shapes := []struct {
		name string
		enc  *kmsapi.EncryptResponse
		dec  *kmsapi.DecryptRequest
	}{
		{"floor",
			&kmsapi.EncryptResponse{Ciphertext: make([]byte, 32), KeyId: "floor"},
			&kmsapi.DecryptRequest{Ciphertext: make([]byte, 32), KeyId: "floor", Uid: uid}},
		{"keywarden",
			&kmsapi.EncryptResponse{Ciphertext: make([]byte, 61), KeyId: "tink:1:0123456789abcdef01234567", Annotations: ann},
			&kmsapi.DecryptRequest{Ciphertext: make([]byte, 61), KeyId: "tink:1:0123456789abcdef01234567", Uid: uid, Annotations: ann}},
	}
	for _, s := range shapes {
		for _, m := range []struct {
			op  string
			msg proto.Message
			new func() proto.Message
		}{
			{"EncryptResponse", s.enc, func() proto.Message { return new(kmsapi.EncryptResponse) }},
			{"DecryptRequest", s.dec, func() proto.Message { return new(kmsapi.DecryptRequest) }},
		} {
			buf, err := proto.Marshal(m.msg)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(s.name+"/marshal-"+m.op, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := proto.Marshal(m.msg); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(s.name+"/unmarshal-"+m.op, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := proto.Unmarshal(buf, m.new()); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

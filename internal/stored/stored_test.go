package stored

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/keywarden/keywarden/kms/envelope"
)

type golden struct {
	Key           string `json:"key"`
	Value         []byte `json:"value"`
	Class         Class  `json:"class"`
	Label         string `json:"label"`
	KeyID         string `json:"keyID"`
	RootKeyID     string `json:"rootKeyID"`
	DEKSourceType int32  `json:"dekSourceType"`
}

func loadGolden(t testing.TB) []golden {
	t.Helper()
	b, err := os.ReadFile("testdata/golden-apiserver-v1.37.2.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Values []golden }
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Values) == 0 {
		t.Fatal("no golden values")
	}
	return doc.Values
}

// TestGoldenApiserver decodes values the real kube-apiserver wrote to etcd.
func TestGoldenApiserver(t *testing.T) {
	keks := map[string]map[string]bool{} // local KEK -> names
	for _, g := range loadGolden(t) {
		t.Run(g.Key, func(t *testing.T) {
			v := Parse(g.Value)
			if v.Class != g.Class || v.Label() != g.Label {
				t.Fatalf("Parse: class %q label %q, want %q %q (err %v)", v.Class, v.Label(), g.Class, g.Label, v.Err)
			}
			if g.Class != KMSv2 {
				if v.Object != nil {
					t.Fatal("non-KMS value has an EncryptedObject")
				}
				return
			}
			o := v.Object
			if o.KeyID != g.KeyID || o.DEKSourceType != g.DEKSourceType {
				t.Fatalf("keyID %q type %d, want %q %d", o.KeyID, o.DEKSourceType, g.KeyID, g.DEKSourceType)
			}
			if o.EncryptedDataLen == 0 || o.EncryptedDEKSourceLen == 0 {
				t.Fatal("empty sizes")
			}
			k, ok, err := o.KeywardenKEK()
			if !ok || err != nil {
				t.Fatalf("KeywardenKEK: ok %v err %v", ok, err)
			}
			if k.RootKeyID != g.RootKeyID || len(k.ID) != 16 {
				t.Fatalf("local KEK %+v, want root %q", k, g.RootKeyID)
			}
			if keks[k.ID] == nil {
				keks[k.ID] = map[string]bool{}
			}
			keks[k.ID][g.Key[strings.LastIndexByte(g.Key, '/')+1:]] = true
		})
	}
	// The first root version's objects share one local KEK, the second's
	// another: keywarden made one local KEK per root version.
	if len(keks) != 2 {
		t.Fatalf("%d local KEKs, want 2: %v", len(keks), keks)
	}
	for _, names := range keks {
		first := names["g1"] && names["g2"] && names["g3"] && names["c1"] && len(names) == 4
		second := names["g4"] && names["c2"] && len(names) == 2
		if !first && !second {
			t.Fatalf("unexpected grouping of objects by local KEK: %v", keks)
		}
	}
}

// TestGoldenTruncations: every truncation of a real KMS v2 value is either
// rejected or still a valid object (never a panic); cutting the payload
// anywhere must not yield the original key_id with a shorter DEK source.
func TestGoldenTruncations(t *testing.T) {
	for _, g := range loadGolden(t) {
		if g.Class != KMSv2 {
			continue
		}
		for i := range g.Value {
			v := Parse(g.Value[:i])
			if v.Class == KMSv2 && v.Object.EncryptedDEKSourceLen == 0 {
				t.Fatalf("%s[:%d] decoded with an empty DEK source", g.Key, i)
			}
			if i <= len("k8s:enc:kms:v2:keywarden:") && v.Class == KMSv2 {
				t.Fatalf("%s[:%d]: prefix alone decoded as KMS v2", g.Key, i)
			}
		}
		for i := range g.Value {
			b := bytes.Clone(g.Value)
			b[i] ^= 0x80
			_ = Parse(b) // must not panic
		}
	}
}

func pbField(num protowire.Number, typ protowire.Type, v []byte) []byte {
	b := protowire.AppendTag(nil, num, typ)
	switch typ {
	case protowire.BytesType:
		return protowire.AppendBytes(b, v)
	case protowire.VarintType:
		x, _ := protowire.ConsumeVarint(v)
		return protowire.AppendVarint(b, x)
	}
	return append(b, v...)
}

func varint(x uint64) []byte { return protowire.AppendVarint(nil, x) }

func mapEntry(k string, v []byte) []byte {
	return pbField(4, protowire.BytesType, append(pbField(1, protowire.BytesType, []byte(k)), pbField(2, protowire.BytesType, v)...))
}

func object(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func valid(extra ...[]byte) []byte {
	return object(append([][]byte{
		pbField(1, protowire.BytesType, []byte("data")),
		pbField(2, protowire.BytesType, []byte("tink:1:aa")),
		pbField(3, protowire.BytesType, []byte("seedct")),
		pbField(5, protowire.VarintType, varint(1)),
	}, extra...)...)
}

func TestDecodeEncryptedObject(t *testing.T) {
	kek, err := envelope.EncodeKEK("tink:1:aa", []byte("wrapped"))
	if err != nil {
		t.Fatal(err)
	}
	kek2, err := envelope.EncodeKEK2([]envelope.Copy{{Backend: "file", KeyID: "tink:1:aa", RootCT: []byte("w1")}, {Backend: "awskms", KeyID: "arn:x", RootCT: []byte("w2")}})
	if err != nil {
		t.Fatal(err)
	}
	kek2ID, _ := envelope.RootsKeyID([]string{"tink:1:aa", "arn:x"})
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
		check   func(t *testing.T, o *EncryptedObject)
	}{
		{name: "minimal", in: valid(), check: func(t *testing.T, o *EncryptedObject) {
			if o.KeyID != "tink:1:aa" || o.EncryptedDataLen != 4 || o.EncryptedDEKSourceLen != 6 || o.DEKSourceType != HKDFSHA256XNonce {
				t.Fatalf("%+v", o)
			}
		}},
		{name: "AES-GCM key type, explicit zero", in: valid(pbField(5, protowire.VarintType, varint(0)))},
		{name: "unknown fields skipped", in: valid(pbField(9, protowire.BytesType, []byte("x")), pbField(10, protowire.Fixed64Type, make([]byte, 8)), pbField(11, protowire.VarintType, varint(7)))},
		{name: "last keyID wins", in: valid(pbField(2, protowire.BytesType, []byte("second"))), check: func(t *testing.T, o *EncryptedObject) {
			if o.KeyID != "second" {
				t.Fatal(o.KeyID)
			}
		}},
		{name: "keywarden annotation", in: valid(mapEntry(envelope.AnnotationKey, kek)), check: func(t *testing.T, o *EncryptedObject) {
			k, ok, err := o.KeywardenKEK()
			if !ok || err != nil || k.RootKeyID != "tink:1:aa" || k.ID != Digest(kek) {
				t.Fatalf("%+v %v %v", k, ok, err)
			}
		}},
		{name: "keywarden annotation under several roots", in: valid(mapEntry(envelope.AnnotationKey, kek2)), check: func(t *testing.T, o *EncryptedObject) {
			k, ok, err := o.KeywardenKEK()
			if !ok || err != nil || k.RootKeyID != kek2ID || k.ID != Digest(kek2) || !slices.Equal(k.Roots, []string{"tink:1:aa", "arn:x"}) {
				t.Fatalf("%+v %v %v", k, ok, err)
			}
		}},
		{name: "broken keywarden annotation", in: valid(mapEntry(envelope.AnnotationKey, []byte{9, 9})), check: func(t *testing.T, o *EncryptedObject) {
			if _, ok, err := o.KeywardenKEK(); !ok || err == nil {
				t.Fatal("broken annotation accepted")
			}
		}},
		{name: "other plugin annotation", in: valid(mapEntry("kms.example.com", []byte("x"))), check: func(t *testing.T, o *EncryptedObject) {
			if _, ok, _ := o.KeywardenKEK(); ok {
				t.Fatal("found a keywarden KEK in another plugin's object")
			}
		}},
		{name: "empty", in: nil, wantErr: true},
		{name: "no DEK source type is AES-GCM key", in: object(pbField(1, protowire.BytesType, []byte("d")), pbField(2, protowire.BytesType, []byte("k")), pbField(3, protowire.BytesType, []byte("s"))), check: func(t *testing.T, o *EncryptedObject) {
			if o.DEKSourceType != AESGCMKey {
				t.Fatal(o.DEKSourceType)
			}
		}},
		{name: "unknown DEK source type", in: valid(pbField(5, protowire.VarintType, varint(2))), wantErr: true},
		{name: "negative DEK source type", in: valid(pbField(5, protowire.VarintType, varint(1<<64-1))), wantErr: true},
		{name: "empty keyID", in: valid(pbField(2, protowire.BytesType, nil)), wantErr: true},
		{name: "keyID over 1 kB", in: valid(pbField(2, protowire.BytesType, bytes.Repeat([]byte("k"), MaxKeyID+1))), wantErr: true},
		{name: "DEK source over 1 kB", in: valid(pbField(3, protowire.BytesType, make([]byte, MaxEncryptedDEKSource+1))), wantErr: true},
		{name: "empty data", in: valid(pbField(1, protowire.BytesType, nil)), wantErr: true},
		{name: "annotation key not FQDN", in: valid(mapEntry("kek", []byte("x"))), wantErr: true},
		{name: "annotation key upper case", in: valid(mapEntry("KEK.example.com", []byte("x"))), wantErr: true},
		{name: "annotations over 32 kB", in: valid(mapEntry("a.example.com", make([]byte, 20<<10)), mapEntry("b.example.com", make([]byte, 20<<10))), wantErr: true},
		{name: "repeated annotation counted once", in: valid(mapEntry("a.example.com", make([]byte, 20<<10)), mapEntry("a.example.com", make([]byte, 20<<10)))},
		{name: "keyID as varint", in: valid(pbField(2, protowire.VarintType, varint(1))), wantErr: true},
		{name: "type as bytes", in: valid(pbField(5, protowire.BytesType, []byte{2})), wantErr: true},
		{name: "truncated length", in: append(valid(), 0x0a, 0x10, 'x'), wantErr: true},
		{name: "length overflows", in: append(valid(), 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f), wantErr: true},
		{name: "varint too long", in: append(valid(), 0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), wantErr: true},
		{name: "field number zero", in: append(valid(), 0x02, 0x00), wantErr: true},
		{name: "unterminated group", in: append(valid(), 0x4b), wantErr: true},
		{name: "map entry value as varint", in: valid(pbField(4, protowire.BytesType, append(pbField(1, protowire.BytesType, []byte("a.b")), pbField(2, protowire.VarintType, varint(1))...))), wantErr: true},
		{name: "map entry truncated", in: valid(pbField(4, protowire.BytesType, []byte{0x0a, 0x05, 'a'})), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := DecodeEncryptedObject(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, o)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		class Class
		label string
	}{
		{"protobuf plaintext", "k8s\x00\n\x0c\n\x02v1\x12\x06Secret", Plaintext, "identity"},
		{"JSON plaintext", `{"kind":"Secret"}`, Plaintext, "identity"},
		{"CBOR plaintext", "\xd9\xd9\xf7\xa1", Plaintext, "identity"},
		{"empty", "", Unrecognized, "unrecognized"},
		{"binary junk", "\x00\x01", Unrecognized, "unrecognized"},
		{"aescbc", "k8s:enc:aescbc:v1:key1:\x01\x02", AESCBC, "aescbc:v1:key1"},
		{"aesgcm", "k8s:enc:aesgcm:v1:key1:\x01", AESGCM, "aesgcm:v1:key1"},
		{"secretbox", "k8s:enc:secretbox:v1:k:\x01", Secretbox, "secretbox:v1:k"},
		{"kms v1", "k8s:enc:kms:v1:old-plugin:\x00\x04abcd", KMSv1, "kms:v1:old-plugin"},
		{"kms v2", "k8s:enc:kms:v2:kw:" + string(valid()), KMSv2, "kms:v2:kw"},
		{"kms v2 broken payload", "k8s:enc:kms:v2:kw:\xff", Malformed, "malformed"},
		{"kms v2 empty payload", "k8s:enc:kms:v2:kw:", Malformed, "malformed"},
		{"future provider", "k8s:enc:pqc:v9:k:\x01", OtherEncrypted, "other:pqc:v9:k"},
		{"future provider, hostile name", "k8s:enc:p\x1bq:v9:\xff:\x01", OtherEncrypted, "other:p?q:v9:?"},
		{"prefix without name", "k8s:enc:aescbc:v1", Malformed, "malformed"},
		{"empty name", "k8s:enc:aescbc:v1::x", Malformed, "malformed"},
		{"name too long", "k8s:enc:aescbc:v1:" + strings.Repeat("n", 300) + ":x", Malformed, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Parse([]byte(tt.in))
			if v.Class != tt.class || v.Label() != tt.label {
				t.Fatalf("Parse = %q %q (%v), want %q %q", v.Class, v.Label(), v.Err, tt.class, tt.label)
			}
			if (v.Class == Malformed) != (v.Err != nil) {
				t.Fatalf("Err %v for class %q", v.Err, v.Class)
			}
		})
	}
}

// FuzzParse: no panic, classes consistent with errors, bounds respected,
// and labels printable for any stored bytes.
func FuzzParse(f *testing.F) {
	for _, g := range loadGolden(f) {
		f.Add(g.Value)
	}
	f.Add([]byte("k8s:enc:kms:v2:kw:" + string(valid())))
	f.Add([]byte("k8s:enc:kms:v2:kw:" + string(valid(mapEntry(envelope.AnnotationKey, []byte{1, 0, 1, 'k', 0, 1, 'c'})))))
	f.Fuzz(func(t *testing.T, b []byte) {
		v := Parse(b)
		if (v.Class == Malformed) != (v.Err != nil) {
			t.Fatalf("class %q with err %v", v.Class, v.Err)
		}
		for _, c := range []byte(v.Label()) {
			if c < 0x20 || c > 0x7e {
				t.Fatalf("unprintable label %q", v.Label())
			}
		}
		if v.Class != KMSv2 {
			return
		}
		o := v.Object
		if o.KeyID == "" || len(o.KeyID) > MaxKeyID || o.EncryptedDEKSourceLen == 0 || o.EncryptedDEKSourceLen > MaxEncryptedDEKSource {
			t.Fatalf("out-of-bounds object accepted: %+v", o)
		}
		_, _, _ = o.KeywardenKEK()
	})
}

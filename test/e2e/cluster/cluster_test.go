package cluster

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestParseKMSv2(t *testing.T) {
	var eo []byte
	for _, f := range []struct {
		num protowire.Number
		v   string
	}{{1, "sealed-object"}, {2, "tink:1:ab"}, {3, "sealed-seed"}} {
		eo = protowire.AppendTag(eo, f.num, protowire.BytesType)
		eo = protowire.AppendString(eo, f.v)
	}
	eo = protowire.AppendTag(eo, 5, protowire.VarintType)
	eo = protowire.AppendVarint(eo, 1)
	raw := append([]byte(KMSv2Prefix("keywarden")), eo...)
	o, err := ParseKMSv2(raw, "keywarden")
	if err != nil {
		t.Fatal(err)
	}
	if o.KeyID != "tink:1:ab" || o.DEKSourceType != 1 {
		t.Errorf("decoded %+v", o)
	}
	for name, v := range map[string][]byte{
		"other provider": raw,
		"identity":       []byte("k8s\x00\x0a\x02v1"),
		"aesgcm":         []byte("k8s:enc:aesgcm:v1:keywarden:xyz"),
		"truncated":      raw[:len(KMSv2Prefix("keywarden"))+3],
	} {
		provider := "keywarden"
		if name == "other provider" {
			provider = "other"
		}
		if _, err := ParseKMSv2(v, provider); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(`# HELP x y
# TYPE keywarden_grpc_server_handled_total counter
keywarden_grpc_server_handled_total{grpc_code="OK",grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary"} 12
keywarden_grpc_server_handled_total{grpc_code="NotFound",grpc_method="Decrypt",grpc_service="v2.KeyManagementService",grpc_type="unary"} 3
keywarden_keystore_operation_duration_seconds_count{backend="file",op="unwrap",result="ok"} 2
keywarden_root_key_info{backend="file",key_id_hash="a\"b\\c"} 1
keywarden_kek_cache_hits_total 10
`))
	if err != nil {
		t.Fatal(err)
	}
	c := m.Counts()
	if c.DecryptOK != 12 || c.DecryptFailed != 3 || c.Unwraps != 2 || c.CacheHits != 10 {
		t.Errorf("counts %+v", c)
	}
	if got := m.Sum("keywarden_root_key_info", "key_id_hash", `a"b\c`); got != 1 {
		t.Errorf("escaped label value: sum %v", got)
	}
}

func TestEncryptionConfig(t *testing.T) {
	got := string(EncryptionConfig([]string{"secrets"}, []Provider{
		KMSv2("keywarden", "unix:///tmp/kms.sock"), AESGCM("key1", make([]byte, 32)), Identity(),
	}))
	for _, want := range []string{
		"kind: EncryptionConfiguration",
		"- kms:\n          apiVersion: v2\n          name: \"keywarden\"\n          endpoint: \"unix:///tmp/kms.sock\"",
		"- aesgcm:\n          keys:\n            - name: \"key1\"\n              secret: \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"",
		"- identity: {}",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("config lacks %q:\n%s", want, got)
		}
	}
	if p := AESGCM("key1", nil).StoredPrefix(); p != "k8s:enc:aesgcm:v1:key1:" {
		t.Errorf("aesgcm prefix %q", p)
	}
}

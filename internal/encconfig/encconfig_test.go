package encconfig

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

const sample = `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [events]
  providers: [{identity: {}}]
- resources: [secrets, configmaps]
  providers:
  - kms: {apiVersion: v2, name: keywarden, endpoint: unix:///run/keywarden/kms.sock, timeout: 3s}
  - aescbc: {keys: [{name: k1, secret: c2VjcmV0}]}
  - identity: {}
- resources: [secrets, widgets.example.com, events]
  providers: [{aesgcm: {keys: [{name: k, secret: eA==}]}}]
- resources: [leases.coordination.k8s.io, gadgets.example.com]
  providers:
  - identity: {}
  - kms: {apiVersion: v2, name: keywarden, endpoint: unix:///run/keywarden/kms.sock}
- resources: [pods]
  providers: [{identity: {}}, {identity: {}}]
`

func TestParse(t *testing.T) {
	c, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	// events is identity-only where it is first named, but a later entry
	// lists it with aesgcm; leases and gadgets are written in plaintext but
	// kms reads them: all may hold encrypted values. pods may not.
	want := []string{"secrets", "configmaps", "widgets.example.com", "events", "leases.coordination.k8s.io", "gadgets.example.com"}
	if got := c.EncryptedResources(); !slices.Equal(got, want) {
		t.Fatalf("EncryptedResources = %q, want %q", got, want)
	}
	if got := c.Resources[1].Providers[0].Type(); got != "kms:v2:keywarden" {
		t.Fatalf("Type = %q", got)
	}
	if got := c.Resources[1].Providers[1].Type(); got != "aescbc" {
		t.Fatalf("Type = %q", got)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, in string }{
		{"not yaml", "{"},
		{"wrong kind", "apiVersion: v1\nkind: ConfigMap\n"},
		{"no resources", "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"},
		{"entry without providers", "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: [{resources: [secrets]}]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse([]byte(tt.in)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "enc.yaml")
	if err := os.WriteFile(p, []byte(sample), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, maxFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); !errors.Is(err, ErrInvalid) {
		t.Fatalf("oversize file: %v", err)
	}
}

package cluster

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Provider is one entry of an EncryptionConfiguration's provider list.
// The first provider encrypts new writes; every provider can read.
type Provider struct {
	kind     string // kms, aesgcm, aescbc, secretbox, identity
	name     string
	endpoint string
	timeout  time.Duration
	key      []byte
}

// KMSv2 is a KMS v2 provider named name on endpoint (unix:///…).
func KMSv2(name, endpoint string) Provider {
	return Provider{kind: "kms", name: name, endpoint: endpoint, timeout: 3 * time.Second}
}

// AESGCM is an aesgcm provider with one key (16, 24 or 32 bytes).
func AESGCM(name string, key []byte) Provider { return Provider{kind: "aesgcm", name: name, key: key} }

// AESCBC is an aescbc provider with one key (32 bytes).
func AESCBC(name string, key []byte) Provider { return Provider{kind: "aescbc", name: name, key: key} }

// Secretbox is a secretbox provider with one key (32 bytes).
func Secretbox(name string, key []byte) Provider {
	return Provider{kind: "secretbox", name: name, key: key}
}

// Identity stores values unencrypted.
func Identity() Provider { return Provider{kind: "identity"} }

// Name is the provider's (or its key's) name; "" for identity.
func (p Provider) Name() string { return p.name }

// StoredPrefix is the prefix of values this provider writes; "" for
// identity.
func (p Provider) StoredPrefix() string {
	switch p.kind {
	case "identity":
		return ""
	case "kms":
		return KMSv2Prefix(p.name)
	default:
		return "k8s:enc:" + p.kind + ":v1:" + p.name + ":"
	}
}

// EncryptionConfig renders an apiserver.config.k8s.io/v1
// EncryptionConfiguration applying providers, in order, to resources.
func EncryptionConfig(resources []string, providers []Provider) []byte {
	var b strings.Builder
	q := strconv.Quote
	b.WriteString("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n")
	for _, r := range resources {
		fmt.Fprintf(&b, "      - %s\n", q(r))
	}
	b.WriteString("    providers:\n")
	for _, p := range providers {
		switch p.kind {
		case "identity":
			b.WriteString("      - identity: {}\n")
		case "kms":
			fmt.Fprintf(&b, "      - kms:\n          apiVersion: v2\n          name: %s\n          endpoint: %s\n          timeout: %s\n",
				q(p.name), q(p.endpoint), q(p.timeout.String()))
		default:
			fmt.Fprintf(&b, "      - %s:\n          keys:\n            - name: %s\n              secret: %s\n",
				p.kind, q(p.name), q(base64.StdEncoding.EncodeToString(p.key)))
		}
	}
	return []byte(b.String())
}

// Package encconfig reads the parts of kube-apiserver's
// EncryptionConfiguration (apiserver.config.k8s.io/v1) that kmsctl needs:
// which resources are encrypted, and by which providers, in order.
//
// It decodes the YAML into a few local structs rather than importing
// k8s.io/apiserver; fields it does not know are ignored, except that the
// kind and apiVersion must match.
package encconfig

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// ErrInvalid is returned for a file that is not an EncryptionConfiguration
// this package can use.
var ErrInvalid = errors.New("invalid EncryptionConfiguration")

// maxFile bounds what is read: real files are a few kB.
const maxFile = 1 << 20

// Config is the subset of EncryptionConfiguration kmsctl reads.
type Config struct {
	Kind       string     `json:"kind"`
	APIVersion string     `json:"apiVersion"`
	Resources  []Resource `json:"resources"`
}

// Resource is one entry of resources: the resources it covers and its
// providers; the first provider writes, all of them read.
type Resource struct {
	Resources []string   `json:"resources"`
	Providers []Provider `json:"providers"`
}

// Provider is one provider; exactly one field is set.
type Provider struct {
	KMS       *KMS      `json:"kms,omitempty"`
	AESCBC    *struct{} `json:"aescbc,omitempty"`
	AESGCM    *struct{} `json:"aesgcm,omitempty"`
	Secretbox *struct{} `json:"secretbox,omitempty"`
	Identity  *struct{} `json:"identity,omitempty"`
}

// KMS is a kms provider.
type KMS struct {
	APIVersion string `json:"apiVersion"`
	Name       string `json:"name"`
	Endpoint   string `json:"endpoint"`
}

// Type names the provider as kmsctl audit labels it ("kms:v2:<name>",
// "aescbc", "identity", ...).
func (p Provider) Type() string {
	switch {
	case p.KMS != nil:
		v := p.KMS.APIVersion
		if v == "" {
			v = "v1"
		}
		return "kms:" + v + ":" + p.KMS.Name
	case p.AESCBC != nil:
		return "aescbc"
	case p.AESGCM != nil:
		return "aesgcm"
	case p.Secretbox != nil:
		return "secretbox"
	case p.Identity != nil:
		return "identity"
	}
	return "unknown"
}

// Load reads and checks an EncryptionConfiguration file.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFile {
		return nil, fmt.Errorf("%w: %s is over %d bytes", ErrInvalid, path, maxFile)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and checks an EncryptionConfiguration.
func Parse(b []byte) (*Config, error) {
	var c Config
	if err := yaml.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if c.Kind != "EncryptionConfiguration" || !strings.HasPrefix(c.APIVersion, "apiserver.config.k8s.io/") {
		return nil, fmt.Errorf("%w: kind %q apiVersion %q, want EncryptionConfiguration in apiserver.config.k8s.io", ErrInvalid, c.Kind, c.APIVersion)
	}
	if len(c.Resources) == 0 {
		return nil, fmt.Errorf("%w: no resources", ErrInvalid)
	}
	for i, r := range c.Resources {
		if len(r.Resources) == 0 || len(r.Providers) == 0 {
			return nil, fmt.Errorf("%w: resources[%d] needs resources and providers", ErrInvalid, i)
		}
	}
	return &c, nil
}

// EncryptedResources lists, in file order and without duplicates, every
// resource that etcd may hold encrypted: each one named in an entry with a
// provider other than identity, in any position. The first provider writes
// and every provider reads, so a resource whose entry starts with identity
// and lists kms second is written in plaintext yet may still hold values
// under kms (written before the config changed); and a resource named in
// two entries may hold values of either (kube-apiserver uses the first
// entry, but earlier configs may have used the other). These are the values
// to rewrite and audit when a key rotates or retires. Entries are as the
// file spells them: "secrets", "deployments.apps", "*.example.com", "*.*".
func (c *Config) EncryptedResources() []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range c.Resources {
		if !slices.ContainsFunc(r.Providers, func(p Provider) bool { return p.Identity == nil }) {
			continue
		}
		for _, name := range r.Resources {
			if !seen[name] {
				seen[name] = true
				out = append(out, name)
			}
		}
	}
	return out
}

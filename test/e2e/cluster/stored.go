package cluster

import (
	"bytes"
	"fmt"

	"github.com/keywarden/keywarden/internal/stored"
)

// KMSv2Prefix is the prefix of a value the KMS v2 provider named name wrote.
func KMSv2Prefix(name string) string { return "k8s:enc:kms:v2:" + name + ":" }

// ParseKMSv2 checks that a raw etcd value was written by the KMS v2
// provider named provider and decodes its EncryptedObject with
// internal/stored, which validates it as kube-apiserver does.
func ParseKMSv2(v []byte, provider string) (*stored.EncryptedObject, error) {
	prefix := KMSv2Prefix(provider)
	if !bytes.HasPrefix(v, []byte(prefix)) {
		return nil, fmt.Errorf("value is %s, not %q…", stored.Parse(v).Label(), prefix)
	}
	sv := stored.Parse(v)
	if sv.Class != stored.KMSv2 {
		return nil, fmt.Errorf("value is %s: %v", sv.Class, sv.Err)
	}
	return sv.Object, nil
}

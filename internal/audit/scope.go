package audit

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// ErrScope is returned for a resource name audit cannot map to etcd keys.
var ErrScope = errors.New("cannot map resource to an etcd prefix")

// Scope is one etcd key prefix to read, and the resource it holds.
type Scope struct {
	// Resource is as the operator named it: "secrets", "widgets.example.com",
	// "*.*", or a raw key prefix starting with "/".
	Resource string `json:"resource"`
	// Prefix is the etcd key prefix, ending in "/".
	Prefix string `json:"prefix"`
}

// specialPrefixes are kube-apiserver's compiled-in exceptions to
// <prefix>/<resource>/ (k8s.io/kubernetes/pkg/kubeapiserver.SpecialDefaultResourcePrefixes).
var specialPrefixes = map[string]string{
	"replicationcontrollers":      "controllers",
	"endpoints":                   "services/endpoints",
	"nodes":                       "minions",
	"services":                    "services/specs",
	"ingresses.extensions":        "ingress",
	"ingresses.networking.k8s.io": "ingress",
}

// groupPrefixed are built-in groups whose resources are stored under
// <prefix>/<group>/<resource>/, as custom resources are.
var groupPrefixed = map[string]bool{
	"apiextensions.k8s.io":   true,
	"apiregistration.k8s.io": true,
}

// Scopes maps resource names, as an EncryptionConfiguration or --resources
// spells them, to etcd key prefixes under storagePrefix (kube-apiserver's
// --etcd-prefix, "/registry" by default).
//
// Built-in resources ("secrets", "deployments.apps", any group ending in
// .k8s.io) live at <prefix>/<resource>/ save kube-apiserver's few
// exceptions; custom resources at <prefix>/<group>/<resource>/. "*.*" (or
// "*.") means every key under the prefix. A name starting with "/" is taken
// as a raw key prefix. Group wildcards ("*.apps") are refused: audit reads
// only etcd and cannot list a group's resources; name them instead.
func Scopes(storagePrefix string, resources []string) ([]Scope, error) {
	if storagePrefix == "" || storagePrefix[0] != '/' {
		return nil, fmt.Errorf("%w: storage prefix %q must start with /", ErrScope, storagePrefix)
	}
	base := strings.TrimSuffix(path.Clean(storagePrefix), "/")
	var out []Scope
	seen := map[string]bool{}
	add := func(res, prefix string) {
		if !seen[prefix] {
			seen[prefix] = true
			out = append(out, Scope{Resource: res, Prefix: prefix})
		}
	}
	for _, r := range resources {
		r = strings.TrimSpace(r)
		switch {
		case r == "":
			continue
		case r == "*.*" || r == "*.":
			return []Scope{{Resource: r, Prefix: base + "/"}}, nil
		case strings.HasPrefix(r, "/"):
			p := path.Clean(r)
			if p == "/" {
				return nil, fmt.Errorf("%w: raw prefix %q is the whole keyspace; use --prefix", ErrScope, r)
			}
			add(r, p+"/")
		case strings.HasPrefix(r, "*."):
			return nil, fmt.Errorf("%w: %q is a group wildcard; list that group's resources with --resources", ErrScope, r)
		case strings.ContainsAny(r, "*/ \t"):
			return nil, fmt.Errorf("%w: %q", ErrScope, r)
		default:
			res, group, _ := strings.Cut(strings.ToLower(r), ".")
			if res == "" {
				return nil, fmt.Errorf("%w: %q has no resource name", ErrScope, r)
			}
			key := res
			if group != "" {
				key = res + "." + group
			}
			switch sp, ok := specialPrefixes[key]; {
			case ok:
				add(r, base+"/"+sp+"/")
			case group == "" || !strings.Contains(group, ".") || strings.HasSuffix(group, ".k8s.io") && !groupPrefixed[group]:
				add(r, base+"/"+res+"/")
			default:
				add(r, base+"/"+group+"/"+res+"/")
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no resources given", ErrScope)
	}
	return out, nil
}

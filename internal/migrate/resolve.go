package migrate

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
)

// ErrResource is returned for a resource name the cluster does not serve,
// or serves without the verbs a rewrite needs.
var ErrResource = errors.New("resource cannot be migrated")

// Target is one served resource to rewrite.
type Target struct {
	// Name is "resource" for the core group, else "resource.group": the
	// key of the resource in the state file and the summary.
	Name       string                      `json:"name"`
	GVR        schema.GroupVersionResource `json:"-"`
	Namespaced bool                        `json:"namespaced"`
}

// Resolver is the discovery call Resolve makes.
type Resolver interface {
	ServerPreferredResources() ([]*metav1.APIResourceList, error)
}

var _ Resolver = discovery.DiscoveryInterface(nil)

// Resolve maps resource names as an EncryptionConfiguration spells them
// ("secrets", "deployments.apps", "*.apps", "*.*") to the resources the
// server serves at their preferred versions. Wildcards expand to every
// resource of the group that supports list, get and update; names given
// explicitly must support them or Resolve fails. warnings says what a
// wildcard left out, or which API groups discovery could not reach.
func Resolve(d Resolver, names []string) (targets []Target, warnings []string, err error) {
	lists, err := d.ServerPreferredResources()
	if err != nil {
		var gdf *discovery.ErrGroupDiscoveryFailed
		if !errors.As(err, &gdf) || len(lists) == 0 {
			return nil, nil, fmt.Errorf("discovering resources: %w", err)
		}
		for gv, e := range gdf.Groups {
			warnings = append(warnings, fmt.Sprintf("API group %s not discovered: %v", gv, e))
		}
		slices.Sort(warnings)
	}
	type served struct {
		t     Target
		verbs metav1.Verbs
	}
	var all []served
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") {
				continue // subresource
			}
			name := r.Name
			if gv.Group != "" {
				name += "." + gv.Group
			}
			all = append(all, served{Target{Name: name, GVR: gv.WithResource(r.Name), Namespaced: r.Namespaced}, r.Verbs})
		}
	}
	canRewrite := func(v metav1.Verbs) bool {
		return slices.Contains(v, "list") && slices.Contains(v, "get") && slices.Contains(v, "update")
	}
	seen := map[string]bool{}
	add := func(t Target) {
		if !seen[t.Name] {
			seen[t.Name] = true
			targets = append(targets, t)
		}
	}
	for _, n := range names {
		n = strings.ToLower(strings.TrimSpace(n))
		if n == "" {
			continue
		}
		res, group, _ := strings.Cut(n, ".")
		if res == "*" {
			wildAll := group == "*"
			for _, s := range all {
				if !wildAll && s.t.GVR.Group != group {
					continue
				}
				if !canRewrite(s.verbs) {
					warnings = append(warnings, fmt.Sprintf("%s (from %s) skipped: it does not support list, get and update", s.t.Name, n))
					continue
				}
				add(s.t)
			}
			continue
		}
		i := slices.IndexFunc(all, func(s served) bool { return s.t.GVR.Resource == res && s.t.GVR.Group == group })
		if i < 0 {
			return nil, warnings, fmt.Errorf("%w: %q is not served by this cluster", ErrResource, n)
		}
		if !canRewrite(all[i].verbs) {
			return nil, warnings, fmt.Errorf("%w: %q does not support list, get and update", ErrResource, n)
		}
		add(all[i].t)
	}
	if len(targets) == 0 {
		return nil, warnings, fmt.Errorf("%w: no resources to migrate", ErrResource)
	}
	return targets, warnings, nil
}

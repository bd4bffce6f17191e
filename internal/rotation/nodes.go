package rotation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/keywarden/keywarden/keystore"
)

// A Node is a control-plane node's keystore: its own copy of the keyset
// (file), or its view of a shared token.
type Node struct {
	// URI names it in messages (redacted).
	URI     string
	Backend keystore.Backend
	Manager keystore.Manager
}

// VersionOn reports keyID as m lists it, and whether it is there.
func VersionOn(ctx context.Context, m keystore.Manager, keyID string) (keystore.KeyVersion, bool, error) {
	vs, err := m.List(ctx)
	if err != nil {
		return keystore.KeyVersion{}, false, err
	}
	i := slices.IndexFunc(vs, func(v keystore.KeyVersion) bool { return v.KeyID == keyID })
	if i < 0 {
		return keystore.KeyVersion{}, false, nil
	}
	return vs[i], true, nil
}

// PrimaryOn returns m's primary version, or "" if it lists none.
func PrimaryOn(ctx context.Context, m keystore.Manager) (string, error) {
	vs, err := m.List(ctx)
	if err != nil {
		return "", err
	}
	return Primary(vs), nil
}

// missingOn lists the nodes on which keyID is not an enabled version.
func missingOn(ctx context.Context, nodes []*Node, keyID string) ([]string, error) {
	var missing []string
	for _, n := range nodes {
		v, ok, err := VersionOn(ctx, n.Manager, keyID)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.URI, err)
		}
		if !ok || v.State != keystore.KeyEnabled {
			missing = append(missing, n.URI)
		}
	}
	return missing, nil
}

// Distribute is phase 1 of an HA rotation: keyID, already in src, is put
// in every node's keystore that can import it (keystore.Importer: the file
// keystore copies the same key into each node's keyset, not primary), and
// then checked to be there, enabled, on every node. Anything short of that
// is a Surprise: nothing is promoted. The detail it returns is appended to
// the add step's.
func Distribute(ctx context.Context, src keystore.Backend, nodes []*Node, keyID string) (string, error) {
	copied := 0
	var cannot []string
	for _, n := range nodes {
		v, ok, err := VersionOn(ctx, n.Manager, keyID)
		if err != nil {
			return "", fmt.Errorf("node %s: %w", n.URI, err)
		}
		if ok {
			if v.State != keystore.KeyEnabled {
				return "", surprisef("phase 1: %s is %s on node %s: enable it there (kmsctl keys enable), then --resume; nothing was promoted", keyID, v.State, n.URI)
			}
			continue
		}
		imp, ok := n.Backend.(keystore.Importer)
		if !ok {
			cannot = append(cannot, n.URI)
			continue
		}
		if _, err := imp.Import(ctx, src, keyID); err != nil {
			if errors.Is(err, errors.ErrUnsupported) {
				cannot = append(cannot, n.URI)
				continue
			}
			return "", fmt.Errorf("phase 1: copying %s to node %s: %w", keyID, n.URI, err)
		}
		copied++
	}
	missing, err := missingOn(ctx, nodes, keyID)
	if err != nil {
		return "", err
	}
	if len(missing) > 0 {
		why := ""
		if len(cannot) > 0 {
			why = " (kmsctl copies versions only between file keystores; for a token, replicate it with the HSM's own tools)"
		}
		return "", surprisef("phase 1 incomplete: %s is not on %s%s; nothing was promoted: put it there, then --resume",
			keyID, strings.Join(missing, ", "), why)
	}
	return fmt.Sprintf("; copied to %d of %d other nodes, present and enabled on all", copied, len(nodes)), nil
}

// PromoteEverywhere is phase 2: it refuses (a Surprise) unless every node
// has keyID enabled, then promotes it on every node and in self last.
func PromoteEverywhere(ctx context.Context, self keystore.Manager, nodes []*Node, keyID string) (string, error) {
	missing, err := missingOn(ctx, nodes, keyID)
	if err != nil {
		return "", err
	}
	if len(missing) > 0 {
		return "", surprisef("refusing to promote %s: it is not an enabled version on %s (a node that meets a key it does not have cannot decrypt); finish phase 1 there, then --resume",
			keyID, strings.Join(missing, ", "))
	}
	ms := make([]keystore.Manager, 0, len(nodes)+1)
	for _, n := range nodes {
		ms = append(ms, n.Manager)
	}
	promoted, already := 0, 0
	for _, m := range append(ms, self) {
		p, err := PrimaryOn(ctx, m)
		if err != nil {
			return "", err
		}
		if p == keyID {
			already++
			continue
		}
		if err := m.Promote(ctx, keyID); err != nil {
			return "", err
		}
		promoted++
	}
	return fmt.Sprintf("promoted %s in %d keystores (%d already primary), every node has it", keyID, promoted, already), nil
}

// PlanNodes says, for a dry run, what phase 1 would do on each node:
// "<uri>: has it", "<uri>: will be copied", or, for a keystore that cannot
// import (keystore.Importer), that it must get keyID by other means.
// keyID may be empty (not added yet).
func PlanNodes(ctx context.Context, nodes []*Node, keyID string) ([]string, error) {
	var have []string
	for _, n := range nodes {
		_, ok, err := VersionOn(ctx, n.Manager, keyID)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.URI, err)
		}
		_, canImport := n.Backend.(keystore.Importer)
		how := "will be copied"
		switch {
		case keyID != "" && ok:
			how = "has it"
		case !canImport:
			how = "must get it from its token's replication; rotate only checks"
		}
		have = append(have, n.URI+": "+how)
	}
	return have, nil
}

// CountAPIServers counts the kube-apiservers that kube-apiserver's own
// endpoint reconciler lists in the default/kubernetes EndpointSlice (one
// address per apiserver that holds a lease): a floor for the number of
// control-plane nodes.
func CountAPIServers(ctx context.Context, c dynamic.Interface) (int, error) {
	l, err := c.Resource(schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}).
		Namespace("default").List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=kubernetes"})
	if err != nil {
		return 0, err
	}
	addrs := map[string]bool{}
	for _, s := range l.Items {
		eps, _ := s.Object["endpoints"].([]any)
		for _, e := range eps {
			em, _ := e.(map[string]any)
			as, _ := em["addresses"].([]any)
			for _, a := range as {
				if a, ok := a.(string); ok {
					addrs[a] = true
				}
			}
		}
	}
	if len(addrs) == 0 {
		return 0, errors.New("no addresses in the default/kubernetes EndpointSlice")
	}
	return len(addrs), nil
}

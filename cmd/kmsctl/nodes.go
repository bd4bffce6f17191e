package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/keystore/file"
)

// A node is another control-plane node's keystore, as rotate --nodes names
// it: its own copy of the keyset (file), or its view of a shared token.
type node struct {
	uri string // as printed: byuri.Redact of the --nodes URI
	b   keystore.Backend
	m   keystore.Manager
}

// openNodes opens every --nodes keystore; close closes those it opened.
func openNodes(ctx context.Context, self string, uris []string) (nodes []*node, closeAll func(), err error) {
	closeAll = func() {
		for _, n := range nodes {
			_ = n.b.Close()
		}
	}
	seen := map[string]bool{self: true}
	for _, u := range uris {
		if seen[u] {
			closeAll()
			return nil, nil, usageError{fmt.Errorf("--nodes: %s is named twice (or is --keystore): list each other node's keystore once", byuri.Redact(u))}
		}
		seen[u] = true
		b, err := byuri.Open(ctx, u)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("--nodes %s: %w", byuri.Redact(u), err)
		}
		m, ok := b.(keystore.Manager)
		if !ok {
			_ = b.Close()
			closeAll()
			return nil, nil, usageError{fmt.Errorf("--nodes %s: keystore %s manages its versions in the provider: it needs no per-node rotation", byuri.Redact(u), b.Name())}
		}
		nodes = append(nodes, &node{uri: byuri.Redact(u), b: b, m: m})
	}
	return nodes, closeAll, nil
}

// versionOn reports keyID as m lists it, and whether it is there.
func versionOn(ctx context.Context, m keystore.Manager, keyID string) (keystore.KeyVersion, bool, error) {
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

func primaryOn(ctx context.Context, m keystore.Manager) (string, error) {
	vs, err := m.List(ctx)
	if err != nil {
		return "", err
	}
	for _, v := range vs {
		if v.Primary {
			return v.KeyID, nil
		}
	}
	return "", nil
}

// missingOn lists the nodes on which keyID is not an enabled version.
func missingOn(ctx context.Context, nodes []*node, keyID string) ([]string, error) {
	var missing []string
	for _, n := range nodes {
		v, ok, err := versionOn(ctx, n.m, keyID)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.uri, err)
		}
		if !ok || v.State != keystore.KeyEnabled {
			missing = append(missing, n.uri)
		}
	}
	return missing, nil
}

// distribute is phase 1 of an HA rotation: keyID, already in src, is put
// in every node's keystore (file keystores: the same key copied into each
// node's keyset, not primary), and then checked to be there, enabled, on
// every node. Anything short of that is a surprise: nothing is promoted.
func distribute(ctx context.Context, src keystore.Backend, nodes []*node, keyID string) (string, error) {
	copied := 0
	var cannot []string
	for _, n := range nodes {
		v, ok, err := versionOn(ctx, n.m, keyID)
		if err != nil {
			return "", fmt.Errorf("node %s: %w", n.uri, err)
		}
		if ok {
			if v.State != keystore.KeyEnabled {
				return "", surprise{fmt.Sprintf("phase 1: %s is %s on node %s: enable it there (kmsctl keys enable), then --resume; nothing was promoted", keyID, v.State, n.uri)}
			}
			continue
		}
		sf, ok1 := src.(*file.Backend)
		df, ok2 := n.b.(*file.Backend)
		if !ok1 || !ok2 {
			cannot = append(cannot, n.uri)
			continue
		}
		if _, err := df.Import(ctx, sf, keyID); err != nil {
			return "", fmt.Errorf("phase 1: copying %s to node %s: %w", keyID, n.uri, err)
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
		return "", surprise{fmt.Sprintf("phase 1 incomplete: %s is not on %s%s; nothing was promoted: put it there, then --resume",
			keyID, strings.Join(missing, ", "), why)}
	}
	return fmt.Sprintf("; copied to %d of %d other nodes, present and enabled on all", copied, len(nodes)), nil
}

// promoteEverywhere is phase 2: it refuses unless every node has keyID
// enabled, then promotes it on every node and in m (this node) last.
func promoteEverywhere(ctx context.Context, m keystore.Manager, nodes []*node, keyID string) (string, error) {
	missing, err := missingOn(ctx, nodes, keyID)
	if err != nil {
		return "", err
	}
	if len(missing) > 0 {
		return "", surprise{fmt.Sprintf("refusing to promote %s: it is not an enabled version on %s (a node that meets a key it does not have cannot decrypt); finish phase 1 there, then --resume",
			keyID, strings.Join(missing, ", "))}
	}
	promoted, already := 0, 0
	for _, mm := range append(nodeManagers(nodes), m) {
		p, err := primaryOn(ctx, mm)
		if err != nil {
			return "", err
		}
		if p == keyID {
			already++
			continue
		}
		if err := mm.Promote(ctx, keyID); err != nil {
			return "", err
		}
		promoted++
	}
	return fmt.Sprintf("promoted %s in %d keystores (%d already primary), every node has it", keyID, promoted, already), nil
}

func nodeManagers(nodes []*node) []keystore.Manager {
	ms := make([]keystore.Manager, len(nodes))
	for i, n := range nodes {
		ms[i] = n.m
	}
	return ms
}

// countAPIServers counts the kube-apiservers that kube-apiserver's own
// endpoint reconciler lists in the default/kubernetes EndpointSlice (one
// address per apiserver that holds a lease): a floor for the number of
// control-plane nodes.
func countAPIServers(ctx context.Context, k *kube) (int, error) {
	l, err := k.dyn.Resource(schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}).
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

// preflightNodes checks, before rotate changes anything, that the other
// nodes' keystores and plugins agree with this node's, and that no
// kube-apiserver is left out of a rotation that will add or promote.
func (g *globals) preflightNodes(ctx context.Context, f *rotateFlags, st *rotateState, nodes []*node, primary string) error {
	if !f.resume {
		for _, n := range nodes {
			p, err := primaryOn(ctx, n.m)
			if err != nil {
				return fmt.Errorf("node %s: %w", n.uri, err)
			}
			if p != primary {
				return problem("node %s's primary is %s, not %s as in %s: the nodes' keystores differ; make them agree before rotating", n.uri, orNone(p), primary, byuri.Redact(f.keystore))
			}
		}
		for _, s := range f.nodeSockets {
			r, err := (&socketFlags{socket: s, timeout: f.sock.timeout}).status(ctx)
			if err != nil {
				return fmt.Errorf("--node-sockets %s: %w", s, err)
			}
			if r.Healthz != "ok" || r.KeyId != primary {
				return problem("keywarden on %s is not healthy on %s (healthz %s, key_id %s): fix that before rotating", s, primary, r.Healthz, r.KeyId)
			}
		}
	}
	changes := !st.done(stepAdd) || !st.done(stepPromote)
	if !f.resume {
		changes = st.NewKey == "" || st.NewKey != primary
	}
	if !changes {
		return nil
	}
	k, err := f.mig.kube.connect()
	var n int
	if err == nil {
		n, err = countAPIServers(ctx, k)
	}
	if err != nil {
		fmt.Fprintf(g.stderr, "warning: could not count the kube-apiservers (%v): on an HA control plane, --nodes must list every other node's keystore\n", err)
		return nil
	}
	if n > 1+len(nodes) {
		return usageError{fmt.Errorf("kube-apiserver lists %d apiservers (EndpointSlice default/kubernetes) but rotate would add and promote in %d keystore(s): "+
			"list every other control-plane node's keystore in --nodes, or add and promote on every node yourself and pass --new-key (docs/rotation.md)", n, 1+len(nodes))}
	}
	return nil
}

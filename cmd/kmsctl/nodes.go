package main

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/internal/rotation"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/byuri"
)

// openNodes opens every --nodes keystore, another control-plane node's as
// rotate --nodes names it: its own copy of the keyset (file), or its view
// of a shared token. close closes those it opened.
func openNodes(ctx context.Context, self string, uris []string) (nodes []*rotation.Node, closeAll func(), err error) {
	closeAll = func() {
		for _, n := range nodes {
			_ = n.Backend.Close()
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
		nodes = append(nodes, &rotation.Node{URI: byuri.Redact(u), Backend: b, Manager: m})
	}
	return nodes, closeAll, nil
}

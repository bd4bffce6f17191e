package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// A sweep of fewer than minPublishRounds rounds is marked in its report as
// not for publishing; a full one is not.
func TestMetaMarksShortRuns(t *testing.T) {
	for _, tc := range []struct {
		rounds int
		marked bool
	}{{1, true}, {minPublishRounds - 1, true}, {minPublishRounds, false}, {15, false}} {
		m := meta(time.Now(), &options{rounds: tc.rounds})
		got := strings.Contains(strings.Join(m.Notes, "\n"), "not for publishing")
		if got != tc.marked {
			t.Errorf("rounds %d: marked %v, want %v (notes %q)", tc.rounds, got, tc.marked, m.Notes)
		}
	}
}

// Each server kind runs its own binary with its own flags, and counts its
// keystore calls its own way.
func TestServerKinds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		kind    serverKind
		binary  string
		args    []string
		http    bool
		spied   bool
		unwraps bool
	}{
		{"floor", floorKind, "kwfloor", []string{"--listen", "unix:///s"}, false, false, false},
		{"keywarden", keywardenKind, "keywarden", []string{"--listen", "unix:///s", "--keystore", "file:///k", "--metrics-addr", "127.0.0.1:1"}, true, false, true},
		{"lab", labKind, "kwlab", []string{"--listen", "unix:///s", "--keystore", "file:///k", "--http-addr", "127.0.0.1:1"}, true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.kind
			if got := k.binary(); got != tc.binary {
				t.Errorf("binary %q, want %q", got, tc.binary)
			}
			if got := k.args("unix:///s", "file:///k", "127.0.0.1:1"); !slices.Equal(got, tc.args) {
				t.Errorf("args %q, want %q", got, tc.args)
			}
			if k.hasHTTP() != tc.http || k.spied() != tc.spied || (k.unwraps("127.0.0.1:1") != nil) != tc.unwraps {
				t.Errorf("HTTP %v, spied %v, counts unwraps %v; want %v, %v, %v", k.hasHTTP(), k.spied(), k.unwraps("x") != nil, tc.http, tc.spied, tc.unwraps)
			}
		})
	}
}

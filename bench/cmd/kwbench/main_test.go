package main

import (
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

package cluster

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// WaitServing polls /readyz until no check fails but those named in except
// (as "kms-providers"), or timeout passes, and returns the failed checks
// ("" if none). It is for an apiserver restarted while its KMS plugin is
// unhealthy: such an apiserver serves, but its /readyz keeps failing on
// kms-providers, so Start's wait for /readyz would never end.
func (a *APIServer) WaitServing(ctx context.Context, timeout time.Duration, except ...string) (string, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		code, body, err := a.Readyz(ctx, "")
		switch {
		case err != nil:
			last = err.Error()
		case code == http.StatusOK:
			return "", nil
		default:
			last = FailingChecks(body)
			if onlyFailing(body, except) {
				return last, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("kube-apiserver not serving within %s: %s", timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// onlyFailing reports whether every failed check ("[-]name failed…" line)
// of a verbose /readyz body is one of names.
func onlyFailing(body string, names []string) bool {
	failed := 0
	for _, l := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(l, "[-]")
		if !ok {
			continue
		}
		failed++
		name, _, _ := strings.Cut(rest, " ")
		found := false
		for _, n := range names {
			found = found || name == n
		}
		if !found {
			return false
		}
	}
	return failed > 0
}

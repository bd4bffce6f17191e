package cluster

import (
	"os"
	"testing"
	"time"
)

// EnvDuration reads a positive duration such as 10m from the environment
// variable name, or returns def when it is unset. A value that does not
// parse fails the test: a typo must not silently run the default.
func EnvDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration such as 10m", name, s)
	}
	return d
}

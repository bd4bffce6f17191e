package cluster

import (
	"net"
	"testing"
)

// TestFreePort: ports are distinct, below the ephemeral range, bindable, and
// held against other test binaries (their lock is taken) until exit.
func TestFreePort(t *testing.T) {
	lo, hi := portRange()
	if lo >= hi {
		t.Fatalf("empty port range [%d, %d)", lo, hi)
	}
	seen := map[int]bool{}
	for range 50 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if p < lo || p >= hi {
			t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		// Another test binary's FreePort would find the lock taken (flock
		// locks are per open file, so a second open here stands in for it).
		if f, ok := lockPort(p); ok {
			_ = f.Close()
			t.Fatalf("port %d: its lock could be taken again", p)
		}
		l, err := net.Listen("tcp", hostPort(p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		_ = l.Close()
	}
}

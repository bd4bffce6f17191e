package keystoretest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

// PerCallTimeout checks a remote backend's per-call timeout against a
// keystore that hangs: with hang in force, call (one Wrap or Unwrap made
// with a URI timeout of about 300 ms) must fail with keystore.ErrUnavailable
// well within 3 s, and, given a caller's 100 ms deadline, with
// context.DeadlineExceeded. hang makes the keystore (or the fault proxy in
// front of it) stop answering and returns the function that undoes it.
func PerCallTimeout(t *testing.T, op string, hang func() (undo func()), call func(context.Context) error) {
	t.Helper()
	undo := hang()
	defer undo()
	start := time.Now()
	if err := call(context.Background()); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("%s against a hung keystore: %v, want ErrUnavailable", op, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("%s took %s with a 300ms per-call timeout", op, d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := call(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s with a 100ms deadline: %v, want DeadlineExceeded", op, err)
	}
}

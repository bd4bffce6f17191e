package byuri

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/keystore/file"
)

// A root that did not open fails every call with its Open error, under
// its scheme's backend name, tries Open again only once the interval has
// passed, and serves once that succeeds. A malformed URI is refused.
func TestOpenLater(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "keyset.json")
	uri := "file://" + p
	_, openErr := Open(ctx, uri)
	if openErr == nil {
		t.Fatal("Open of a missing keyset succeeded")
	}
	b, err := OpenLater(uri, openErr)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Name() != file.Name {
		t.Fatalf("Name = %q, want %q", b.Name(), file.Name)
	}
	if _, err := b.KeyID(ctx); !errors.Is(err, openErr) {
		t.Fatalf("KeyID: %v, want the Open error %v", err, openErr)
	}
	v, err := file.Init(p)
	if err != nil {
		t.Fatal(err)
	}
	// Within the interval: still the old error, no Open.
	if _, err := b.KeyID(ctx); !errors.Is(err, openErr) {
		t.Fatalf("KeyID within the reopen interval: %v, want the Open error", err)
	}
	l := b.(*later)
	now := time.Now().Add(DefaultReopenInterval + time.Second)
	l.now = func() time.Time { return now }
	if id, err := b.KeyID(ctx); err != nil || id != v.KeyID {
		t.Fatalf("KeyID once the keyset exists: %q, %v; want %q", id, err, v.KeyID)
	}
	w, err := b.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := b.Unwrap(ctx, w, []byte("aad")); err != nil || string(pt) != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("Unwrap: %q, %v", pt, err)
	}
	if _, err := OpenLater("nope://x", openErr); err == nil {
		t.Fatal("OpenLater accepted an unknown scheme")
	}
	if _, err := OpenLater("file://relative/path", openErr); err == nil {
		t.Fatal("OpenLater accepted a malformed file URI")
	}
}

// Every scheme's backend name is its package's Name, where this build has
// the package.
func TestSchemeNames(t *testing.T) {
	for s, sc := range schemes {
		if sc.name == "" {
			t.Errorf("scheme %s has no backend name", s)
		}
	}
	if schemes["file"].name != file.Name {
		t.Errorf("file scheme name %q, want %q", schemes["file"].name, file.Name)
	}
}

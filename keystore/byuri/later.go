package byuri

import (
	"context"
	"sync"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

// DefaultReopenInterval is how often a root that did not open is tried
// again: at most once per interval, at its next use.
const DefaultReopenInterval = 5 * time.Second

// OpenLater returns a Backend for a keystore whose Open failed with
// openErr, for keywarden with several roots, where one root that cannot
// be opened at start (its key gone, its credentials refused, its file
// missing) must not stop the others from serving: exiting would leave
// every object unreadable that another root could unwrap. Every call
// fails with the last Open error, and tries Open again, at most once per
// DefaultReopenInterval; once one succeeds, calls go to the opened
// backend. Name is the scheme's backend name, so the root is labelled and
// matched to its copies as if it had opened. The URI must pass CheckURI:
// a malformed one is a configuration error to fail on at once.
func OpenLater(uri string, openErr error) (keystore.Backend, error) {
	s, err := lookup(uri)
	if err != nil {
		return nil, err
	}
	if err := s.check(uri); err != nil {
		return nil, err
	}
	return &later{uri: uri, open: s.open, name: s.name, err: openErr, next: time.Now().Add(DefaultReopenInterval), every: DefaultReopenInterval, now: time.Now}, nil
}

type later struct {
	uri   string
	open  func(context.Context, string) (keystore.Backend, error)
	name  string
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	b    keystore.Backend
	err  error
	next time.Time
}

// backend returns the opened backend, or the last Open error, trying Open
// again if the interval has passed.
func (l *later) backend(ctx context.Context) (keystore.Backend, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b != nil {
		return l.b, nil
	}
	if l.now().Before(l.next) {
		return nil, l.err
	}
	b, err := l.open(ctx, l.uri)
	if err != nil {
		l.err, l.next = err, l.now().Add(l.every)
		return nil, err
	}
	l.b, l.err = b, nil
	return b, nil
}

func (l *later) Wrap(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error) {
	b, err := l.backend(ctx)
	if err != nil {
		return keystore.Wrapped{}, err
	}
	return b.Wrap(ctx, pt, aad)
}

func (l *later) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	b, err := l.backend(ctx)
	if err != nil {
		return nil, err
	}
	return b.Unwrap(ctx, w, aad)
}

func (l *later) KeyID(ctx context.Context) (string, error) {
	b, err := l.backend(ctx)
	if err != nil {
		return "", err
	}
	return b.KeyID(ctx)
}

func (l *later) Name() string { return l.name }

func (l *later) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b == nil {
		return nil
	}
	return l.b.Close()
}

package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/keywarden/keywarden/keystore"
)

// maxDetail bounds how much of a keystore's own error message an error
// keeps: enough to diagnose, never a whole error page in a log line.
const maxDetail = 200

// Call runs one remote call: with retries (Do) when idempotent, else Once.
// Errors f returns are sorted into keystore's classes by classify, the
// backend's sorter for its SDK's errors, except those that need no sorting:
// the context's own and those that already carry a class (the backend's own
// checks inside f).
func (r Retry) Call(ctx context.Context, idempotent bool, classify func(error) error, f func(ctx context.Context) error) error {
	return r.Run(ctx, idempotent, func(actx context.Context) error {
		err := f(actx)
		if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || classified(err) {
			return err
		}
		return classify(err)
	})
}

// Run runs op with Do when it is idempotent, else with Once. op must return
// errors already sorted into keystore's classes.
func (r Retry) Run(ctx context.Context, idempotent bool, op func(ctx context.Context) error) error {
	if idempotent {
		return r.Do(ctx, op)
	}
	return r.Once(ctx, op)
}

// What the health probe wraps and unwraps.
var (
	probePlaintext = make([]byte, 32)
	probeAAD       = []byte("keywarden health probe")
)

// Probe wraps and unwraps a fixed value with the key KeyID is about to
// report, so that a key that still reads fine but that our credentials may
// no longer use shows in health within one key-id-ttl.
func Probe(ctx context.Context, wrap func(ctx context.Context, pt, aad []byte) (keystore.Wrapped, error), unwrap func(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error)) error {
	w, err := wrap(ctx, probePlaintext, probeAAD)
	if err != nil {
		return fmt.Errorf("health probe: %w", err)
	}
	pt, err := unwrap(ctx, w, probeAAD)
	if err != nil {
		return fmt.Errorf("health probe: %w", err)
	}
	if !bytes.Equal(pt, probePlaintext) {
		return errors.New("health probe: unwrap returned different bytes")
	}
	return nil
}

// StatusClass is the class of an HTTP status every remote keystore gives the
// same meaning, or nil for the others (each backend reads 400, 404 and its
// own codes as it must).
func StatusClass(status int) error {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return keystore.ErrPermission
	case status == http.StatusTooManyRequests:
		return keystore.ErrThrottled
	case status >= 500:
		return keystore.ErrUnavailable
	}
	return nil
}

// Classed wraps class with the keystore's own code and its message, cut to
// maxDetail bytes: "<class>: <code>: <message>".
func Classed(class error, code, msg string) error {
	return fmt.Errorf("%w: %s: %s", class, code, Detail(msg))
}

// Detail cuts a keystore's error message to maxDetail bytes.
func Detail(msg string) string {
	if len(msg) > maxDetail {
		return msg[:maxDetail] + "…"
	}
	return msg
}

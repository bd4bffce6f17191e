package remote

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

func TestParseQuery(t *testing.T) {
	own := func(k, v string) (bool, error) {
		switch {
		case k != "profile":
			return false, nil
		case v == "":
			return true, errors.New("profile must not be empty")
		}
		return true, nil
	}
	tests := []struct {
		name    string
		query   string
		want    Options
		wantErr string // substring of the message; "" for none
	}{
		{name: "defaults", query: "", want: DefaultOptions()},
		{name: "both", query: "timeout=2s&key-id-ttl=0s", want: Options{Timeout: 2 * time.Second}},
		{name: "own parameter", query: "profile=p&timeout=100ms", want: Options{Timeout: 100 * time.Millisecond, KeyIDTTL: DefaultKeyIDTTL}},
		{name: "timeout too short", query: "timeout=99ms", wantErr: `x keystore URI: timeout="99ms": want a duration of at least 100ms`},
		{name: "negative ttl", query: "key-id-ttl=-1s", wantErr: `key-id-ttl="-1s": want a duration of at least 0s`},
		{name: "not a duration", query: "timeout=soon", wantErr: `timeout="soon"`},
		{name: "twice", query: "timeout=1s&timeout=2s", wantErr: `parameter "timeout" given 2 times`},
		{name: "unknown", query: "colour=red", wantErr: `unknown parameter "colour"`},
		{name: "own error", query: "profile=", wantErr: "x keystore URI: profile must not be empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			o := DefaultOptions()
			err = o.ParseQuery("x", q, own)
			if tc.wantErr != "" {
				if !errors.Is(err, keystore.ErrConfig) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrConfig with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || o != tc.want {
				t.Fatalf("got %+v, %v; want %+v", o, err, tc.want)
			}
		})
	}
	t.Run("no own parameters", func(t *testing.T) {
		o := DefaultOptions()
		if err := o.ParseQuery("x", url.Values{"profile": {"p"}}, nil); !errors.Is(err, keystore.ErrConfig) {
			t.Fatalf("err = %v, want ErrConfig", err)
		}
	})
}

func TestCallSorts(t *testing.T) {
	sdk := errors.New("sdk said no")
	mine := errors.Join(keystore.ErrInvalid, errors.New("our own check"))
	tests := []struct {
		name      string
		err       error
		want      error
		wantCalls int // of classify
	}{
		{name: "ok", err: nil, want: nil},
		{name: "sdk error sorted", err: sdk, want: keystore.ErrPermission, wantCalls: 1},
		{name: "own class kept", err: mine, want: keystore.ErrInvalid},
		{name: "canceled kept", err: context.Canceled, want: context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			classify := func(err error) error {
				calls++
				return errors.Join(keystore.ErrPermission, err)
			}
			r := Retry{Attempts: 1, Timeout: time.Second}
			for _, idempotent := range []bool{true, false} {
				calls = 0
				err := r.Call(context.Background(), idempotent, classify, func(context.Context) error { return tc.err })
				if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) || calls != tc.wantCalls {
					t.Fatalf("idempotent=%v: err = %v after %d classify calls; want %v after %d", idempotent, err, calls, tc.want, tc.wantCalls)
				}
			}
		})
	}
}

func TestStatusClass(t *testing.T) {
	tests := []struct {
		status int
		want   error
	}{
		{http.StatusUnauthorized, keystore.ErrPermission},
		{http.StatusForbidden, keystore.ErrPermission},
		{http.StatusTooManyRequests, keystore.ErrThrottled},
		{http.StatusInternalServerError, keystore.ErrUnavailable},
		{http.StatusServiceUnavailable, keystore.ErrUnavailable},
		{http.StatusBadRequest, nil},
		{http.StatusNotFound, nil},
	}
	for _, tc := range tests {
		if got := StatusClass(tc.status); got != tc.want {
			t.Errorf("StatusClass(%d) = %v, want %v", tc.status, got, tc.want)
		}
	}
}

func TestClassed(t *testing.T) {
	long := strings.Repeat("x", 300)
	err := Classed(keystore.ErrThrottled, "Throttling", long)
	if !errors.Is(err, keystore.ErrThrottled) {
		t.Fatalf("%v is not ErrThrottled", err)
	}
	if want := keystore.ErrThrottled.Error() + ": Throttling: " + long[:maxDetail] + "…"; err.Error() != want {
		t.Fatalf("message = %q, want %q", err.Error(), want)
	}
	if got := Detail("short"); got != "short" {
		t.Fatalf("Detail(short) = %q", got)
	}
}

func TestProbe(t *testing.T) {
	wrap := func(_ context.Context, pt, _ []byte) (keystore.Wrapped, error) {
		return keystore.Wrapped{KeyID: "k", Ciphertext: append([]byte(nil), pt...)}, nil
	}
	echo := func(_ context.Context, w keystore.Wrapped, _ []byte) ([]byte, error) { return w.Ciphertext, nil }
	tests := []struct {
		name   string
		wrap   func(context.Context, []byte, []byte) (keystore.Wrapped, error)
		unwrap func(context.Context, keystore.Wrapped, []byte) ([]byte, error)
		want   error // nil: no error; errAny: any error
	}{
		{name: "ok", wrap: wrap, unwrap: echo},
		{name: "wrap refused", wrap: func(context.Context, []byte, []byte) (keystore.Wrapped, error) {
			return keystore.Wrapped{}, keystore.ErrPermission
		}, unwrap: echo, want: keystore.ErrPermission},
		{name: "unwrap refused", wrap: wrap, unwrap: func(context.Context, keystore.Wrapped, []byte) ([]byte, error) {
			return nil, keystore.ErrKeyDisabled
		}, want: keystore.ErrKeyDisabled},
		{name: "different bytes", wrap: wrap, unwrap: func(context.Context, keystore.Wrapped, []byte) ([]byte, error) {
			return []byte("other"), nil
		}, want: errAny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Probe(context.Background(), tc.wrap, tc.unwrap)
			switch {
			case tc.want == nil && err != nil, tc.want != nil && err == nil:
				t.Fatalf("Probe = %v, want %v", err, tc.want)
			case tc.want != nil && tc.want != errAny && !errors.Is(err, tc.want):
				t.Fatalf("Probe = %v, want %v", err, tc.want)
			}
		})
	}
}

var errAny = errors.New("any error")

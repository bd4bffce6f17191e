package remote

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

// minTimeout is the shortest per-attempt timeout= a URI may ask for: below
// it, even a healthy keystore across a region would look down.
const minTimeout = 100 * time.Millisecond

// Options are the URI query parameters every remote backend takes.
type Options struct {
	// Timeout bounds each attempt of a call (timeout=, at least 100ms).
	Timeout time.Duration
	// KeyIDTTL is how long KeyID's answer is cached (key-id-ttl=).
	KeyIDTTL time.Duration
}

// DefaultOptions are the options of a URI that sets none.
func DefaultOptions() Options {
	return Options{Timeout: DefaultTimeout, KeyIDTTL: DefaultKeyIDTTL}
}

// Set parses k=v into o when k is one of o's parameters, and reports whether
// it was. The error, if any, is a bare message for the caller to wrap.
func (o *Options) Set(k, v string) (bool, error) {
	var dst *time.Duration
	var minimum time.Duration
	switch k {
	case "timeout":
		dst, minimum = &o.Timeout, minTimeout
	case "key-id-ttl":
		dst = &o.KeyIDTTL
	default:
		return false, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < minimum {
		return true, fmt.Errorf("%s=%q: want a duration of at least %s", k, v, minimum)
	}
	*dst = d
	return true, nil
}

// ParseQuery reads a URI's query, where each parameter may appear once: the
// shared ones into o, any other through set (nil for a backend with none of
// its own), which reports whether it knows k and returns bare messages.
// Errors are URIErrors of kind.
func (o *Options) ParseQuery(kind string, q url.Values, set func(k, v string) (bool, error)) error {
	for k, v := range q {
		if len(v) != 1 {
			return URIError(kind, "parameter %q given %d times", k, len(v))
		}
		known, err := o.Set(k, v[0])
		if !known && set != nil {
			known, err = set(k, v[0])
		}
		switch {
		case err != nil:
			return URIError(kind, "%v", err)
		case !known:
			return URIError(kind, "unknown parameter %q", k)
		}
	}
	return nil
}

// URIError is the keystore.ErrConfig error for a malformed URI of a backend
// kind ("aws-kms", "vault"): "<ErrConfig>: <kind> keystore URI: <message>".
func URIError(kind, format string, args ...any) error {
	return fmt.Errorf("%w: %s keystore URI: "+format, append([]any{keystore.ErrConfig, kind}, args...)...)
}

// Transport is the HTTP transport of the backends whose SDK takes one: it
// bounds dialing and the TLS handshake, which the per-attempt timeout alone
// would leave to fail late, and keeps a few connections per host.
func Transport() *http.Transport {
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
}

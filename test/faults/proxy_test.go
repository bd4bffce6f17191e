package faults

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"
)

// proxyMode is what the fault proxy does with each request.
type proxyMode int

const (
	pass      proxyMode = iota // forward to the keystore
	hang                       // accept the request, never answer
	refuse                     // nothing listens on the port
	slow                       // forward after latency
	throttle                   // answer as the keystore does when it rate-limits
	serverErr                  // answer as the keystore does when it fails (5xx)
)

// latency is the delay of the "2 s latency" fault.
const latency = 2 * time.Second

// flavor writes the throttling and server-error answers of one keystore's
// HTTP API, in that API's own shape, so the backend classifies them as it
// would the real thing.
type flavor func(w http.ResponseWriter, m proxyMode)

// vaultFlavor: Vault answers 429 when a rate-limit quota is exceeded and 503
// when sealed (or on a standby without a leader).
func vaultFlavor(w http.ResponseWriter, m proxyMode) {
	w.Header().Set("Content-Type", "application/json")
	if m == throttle {
		w.WriteHeader(http.StatusTooManyRequests)
		_ = json.NewEncoder(w).Encode(map[string][]string{"errors": {"request path \"transit/\": rate limit quota exceeded"}})
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	_ = json.NewEncoder(w).Encode(map[string][]string{"errors": {"Vault is sealed"}})
}

// awsFlavor: AWS KMS answers ThrottlingException (HTTP 400) when it
// rate-limits and KMSInternalException (HTTP 500) when it fails.
func awsFlavor(w http.ResponseWriter, m proxyMode) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	if m == throttle {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"__type": "ThrottlingException", "message": "Rate exceeded"})
		return
	}
	w.WriteHeader(http.StatusInternalServerError)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": "KMSInternalException", "message": "internal failure"})
}

// proxy is an HTTP reverse proxy in front of a keystore's API, on a
// 127.0.0.1 port of its own, whose mode a test switches to inject a fault.
type proxy struct {
	t      testing.TB
	addr   string
	target *url.URL
	flavor flavor
	rp     *httputil.ReverseProxy

	mu   sync.Mutex
	mode proxyMode
	srv  *http.Server
	// stop ends every request held by hang or slow when the proxy closes.
	stop chan struct{}
}

func newProxy(t testing.TB, target string, f flavor) *proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, target: u, flavor: f, rp: httputil.NewSingleHostReverseProxy(u), stop: make(chan struct{})}
	// A hung or cut request is the point here, not news.
	p.rp.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() {
		close(p.stop)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.srv != nil {
			_ = p.srv.Close()
		}
	})
	return p
}

func (p *proxy) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(p.handle), ReadHeaderTimeout: 10 * time.Second}
	p.srv = srv
	go func() { _ = srv.Serve(ln) }()
}

// set switches the mode. refuse closes the listener and every open
// connection (so a client's kept-alive connection breaks too); leaving
// refuse listens on the same port again.
func (p *proxy) set(m proxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m == p.mode {
		return
	}
	if m == refuse {
		_ = p.srv.Close()
		p.srv = nil
	} else if p.mode == refuse {
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			p.t.Errorf("proxy: listen again on %s: %v", p.addr, err)
			return
		}
		p.serve(ln)
	}
	p.mode = m
}

func (p *proxy) current() proxyMode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

func (p *proxy) handle(w http.ResponseWriter, r *http.Request) {
	switch m := p.current(); m {
	case hang:
		// Accepted, read, never answered: the client's own timeout ends it.
		select {
		case <-r.Context().Done():
		case <-p.stop:
		}
		return
	case slow:
		if !wait(r.Context(), p.stop, latency) {
			return
		}
	case throttle, serverErr:
		p.flavor(w, m)
		return
	}
	p.rp.ServeHTTP(w, r)
}

// wait sleeps d unless ctx or stop ends first; it reports whether d passed.
func wait(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

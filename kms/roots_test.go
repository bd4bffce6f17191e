package kms

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/kms/envelope"
)

// named gives a root a backend name of its own, so that a test can have
// roots of different kinds over file keysets.
type named struct {
	keystore.Backend
	name string
}

func (n named) Name() string { return n.name }

// rootSet is several root keystores, each a file keyset of its own behind
// a Spy.
type rootSet struct {
	envs  []*env
	names []string
}

func newRoots(t testing.TB, names ...string) *rootSet {
	t.Helper()
	rs := &rootSet{}
	for range names {
		rs.envs = append(rs.envs, newEnv(t))
	}
	rs.names = names
	return rs
}

func (rs *rootSet) backends(order ...int) []keystore.Backend {
	if len(order) == 0 {
		for i := range rs.envs {
			order = append(order, i)
		}
	}
	var out []keystore.Backend
	for _, i := range order {
		out = append(out, named{rs.envs[i].spy, rs.names[i]})
	}
	return out
}

// service makes a Service over the roots in the given order (all of them
// by default); logs go to the first root's env.
func (rs *rootSet) service(t testing.TB, mod func(*Config), order ...int) *Service {
	t.Helper()
	return rs.envs[0].service(func(c *Config) {
		c.Backend = nil
		c.Roots = rs.backends(order...)
		if mod != nil {
			mod(c)
		}
	})
}

func (rs *rootSet) keyIDs(t testing.TB) []string {
	t.Helper()
	var ids []string
	for _, e := range rs.envs {
		id, err := e.file.KeyID(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func (rs *rootSet) unwraps() []int64 {
	var n []int64
	for _, e := range rs.envs {
		n = append(n, e.spy.Unwraps.Load())
	}
	return n
}

func (rs *rootSet) wraps() []int64 {
	var n []int64
	for _, e := range rs.envs {
		n = append(n, e.spy.Wraps.Load())
	}
	return n
}

func (rs *rootSet) setErr(errs ...error) {
	for i, e := range rs.envs {
		e.spy.SetErr(errs[i])
	}
}

var rootsKeyIDForm = regexp.MustCompile(`^roots:[2-4]:[0-9a-f]{64}$`)

// With several roots, a new local KEK is wrapped once under each; its
// annotation is of version 2 and its key_id RootsKeyID of the roots'
// key_ids in order; it round-trips within the apiserver's bounds.
func TestRootsMint(t *testing.T) {
	rs := newRoots(t, "file", "awskms")
	s := rs.service(t, nil)
	if got := rs.wraps(); got[0] != 1 || got[1] != 1 {
		t.Fatalf("wraps per root at start-up = %v, want [1 1]", got)
	}
	st, _ := s.Status(context.Background())
	want, err := envelope.RootsKeyID(rs.keyIDs(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Healthz != "ok" || st.KeyID != want || !rootsKeyIDForm.MatchString(st.KeyID) {
		t.Fatalf("Status = %+v, want key_id %q", st, want)
	}
	pt := seed(t)
	r := encrypt(t, s, pt)
	if r.KeyID != st.KeyID {
		t.Fatalf("Encrypt key_id %q != Status %q", r.KeyID, st.KeyID)
	}
	ann := r.Annotations[envelope.AnnotationKey]
	a, err := envelope.DecodeAnnotation(ann)
	if err != nil || a.Version != envelope.Version2 || len(a.Copies) != 2 || a.Copies[0].Backend != "file" || a.Copies[1].Backend != "awskms" {
		t.Fatalf("annotation %+v (%v)", a, err)
	}
	if len(r.Ciphertext) > 1024 || len(ann)+len(envelope.AnnotationKey) > 32<<10 {
		t.Fatalf("ciphertext %d bytes, annotation %d", len(r.Ciphertext), len(ann))
	}
	got, err := s.Decrypt(context.Background(), "uid", req(r))
	if err != nil || string(got) != string(pt) {
		t.Fatalf("Decrypt: %v", err)
	}
	// Encrypt and the warm Decrypt never call a keystore.
	for range 10 {
		encrypt(t, s, seed(t))
	}
	if got := rs.wraps(); got[0] != 1 || got[1] != 1 {
		t.Fatalf("wraps per root after Encrypts = %v, want [1 1]", got)
	}
	if got := rs.unwraps(); got[0] != 0 || got[1] != 0 {
		t.Fatalf("unwraps per root = %v, want none", got)
	}
}

// One root in Roots is exactly one Backend: version-1 annotation, the
// root's own key_id.
func TestRootsOfOneIsBackend(t *testing.T) {
	rs := newRoots(t, "file")
	s := rs.service(t, nil)
	r := encrypt(t, s, seed(t))
	if r.KeyID != rs.keyIDs(t)[0] || r.Annotations[envelope.AnnotationKey][0] != envelope.Version1 {
		t.Fatalf("one root: key_id %q, annotation version %d", r.KeyID, r.Annotations[envelope.AnnotationKey][0])
	}
}

func TestRootsConfig(t *testing.T) {
	rs := newRoots(t, "a", "b", "c", "d", "e")
	for name, cfg := range map[string]Config{
		"both":     {Backend: rs.envs[0].spy, Roots: rs.backends(1)},
		"too many": {Roots: rs.backends()},
		"nil root": {Roots: []keystore.Backend{rs.envs[0].spy, nil}},
		"none":     {},
	} {
		if _, err := New(context.Background(), cfg); err == nil {
			t.Fatalf("%s: New accepted it", name)
		}
	}
}

// rootState is how one root answers during a cold Decrypt.
type rootState struct {
	name string
	err  error
	code codes.Code // what a Decrypt gets if this root's is the error kept
}

var rootStates = []rootState{
	{"up", nil, codes.OK},
	{"unavailable", fmt.Errorf("%w: connection refused", keystore.ErrUnavailable), codes.Unavailable},
	{"throttled", fmt.Errorf("%w: slow down", keystore.ErrThrottled), codes.ResourceExhausted},
	{"permission", fmt.Errorf("%w: access denied", keystore.ErrPermission), codes.PermissionDenied},
	{"disabled", fmt.Errorf("%w: version disabled", keystore.ErrKeyDisabled), codes.FailedPrecondition},
	{"unknown", fmt.Errorf("%w: no such version", keystore.ErrKeyNotFound), codes.NotFound},
	{"refuses", fmt.Errorf("%w: authentication failed", keystore.ErrInvalid), codes.InvalidArgument},
}

// Every combination of two roots up, down or refusing, for a Decrypt whose
// KEK is not in memory: it succeeds if any root answers, served by the
// first that does, each root asked at most once; otherwise it fails with
// the first root's error unless a later one is transient (a retry may
// succeed: Unavailable, throttled, permission), never Unknown.
func TestRootsUpDown(t *testing.T) {
	rs := newRoots(t, "file", "awskms")
	old := req(encrypt(t, rs.service(t, nil), seed(t)))
	for _, a := range rootStates {
		for _, b := range rootStates {
			t.Run(a.name+"/"+b.name, func(t *testing.T) {
				s := rs.service(t, nil) // all up: it mints its own KEK
				before := rs.unwraps()
				rs.setErr(a.err, b.err)
				defer rs.setErr(nil, nil)
				_, err := s.Decrypt(context.Background(), "uid", old)
				calls := rs.unwraps()
				calls[0] -= before[0]
				calls[1] -= before[1]
				want := codes.OK
				switch {
				case a.err == nil || b.err == nil:
				case !lasting(a.err):
					want = a.code
				case !lasting(b.err):
					want = b.code
				default:
					want = a.code
				}
				if got := codeOf(err); got != want {
					t.Fatalf("Decrypt: %v (%v), want %v", got, err, want)
				}
				wantCalls := []int64{1, 1}
				if a.err == nil {
					wantCalls[1] = 0 // the primary served it
				}
				if calls[0] != wantCalls[0] || calls[1] != wantCalls[1] {
					t.Fatalf("unwraps per root = %v, want %v", calls, wantCalls)
				}
				served := servedBy(t, s)
				switch {
				case a.err == nil && (served["0"] != 1 || served["1"] != 0),
					a.err != nil && b.err == nil && (served["0"] != 0 || served["1"] != 1),
					a.err != nil && b.err != nil && len(served) != 0:
					t.Fatalf("keywarden_keystore_root_unwraps_total = %v", served)
				}
				// Only when both are unavailable is the keystore down, and
				// a refused Decrypt then turns Status not ok at once.
				down := errors.Is(a.err, keystore.ErrUnavailable) && errors.Is(b.err, keystore.ErrUnavailable)
				if down != s.circuitOpen() {
					t.Fatalf("breaker open = %v, want %v", s.circuitOpen(), down)
				}
				if ok, reason := s.Healthy(); ok == down {
					t.Fatalf("healthy = %v (%s) with the breaker open = %v", ok, reason, down)
				}
			})
		}
	}
}

// servedBy reads keywarden_keystore_root_unwraps_total by root.
func servedBy(t *testing.T, s *Service) map[string]float64 {
	t.Helper()
	mfs, err := s.cfg.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "keywarden_keystore_root_unwraps_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "root" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// Three roots, the first two failing: the third serves, and says so.
func TestRootsThirdServes(t *testing.T) {
	rs := newRoots(t, "pkcs11", "gcpkms", "vault")
	want := seed(t)
	old := req(encrypt(t, rs.service(t, nil), want))
	s := rs.service(t, nil)
	rs.setErr(keystore.ErrUnavailable, keystore.ErrPermission, nil)
	got, err := s.Decrypt(context.Background(), "uid", old)
	if err != nil || string(got) != string(want) {
		t.Fatalf("Decrypt: %v", err)
	}
	if u := rs.unwraps(); u[0] != 1 || u[1] != 1 || u[2] != 1 {
		t.Fatalf("unwraps per root = %v, want [1 1 1]", u)
	}
	if served := servedBy(t, s); served["2"] != 1 || len(served) != 1 {
		t.Fatalf("served = %v", served)
	}
	logs := rs.envs[0].logs.String()
	if !strings.Contains(logs, `"msg":"local KEK unwrapped by a fallback root","root":2,"backend":"vault"`) {
		t.Fatalf("no log line naming the root that served:\n%s", logs)
	}
	if s.circuitOpen() {
		t.Fatal("breaker open while a root answers")
	}
	// Every KEK is unwrapped once: the next Decrypt of it is from memory.
	if _, err := s.Decrypt(context.Background(), "uid", old); err != nil {
		t.Fatal(err)
	}
	if u := rs.unwraps(); u[2] != 1 {
		t.Fatalf("unwraps per root = %v after a warm Decrypt", u)
	}
}

// A root found unavailable is skipped by later cold Decrypts (one call per
// cold start, not two) until a check reaches it again; the breaker stays
// closed and Status ok while another root answers Decrypts.
func TestRootsDownRootSkipped(t *testing.T) {
	rs := newRoots(t, "file", "awskms")
	olds := []*service.DecryptRequest{}
	for range 4 {
		olds = append(olds, req(encrypt(t, rs.service(t, nil), seed(t))))
	}
	s := rs.service(t, nil)
	rs.setErr(keystore.ErrUnavailable, nil)
	for _, q := range olds[:3] {
		if _, err := s.Decrypt(context.Background(), "uid", q); err != nil {
			t.Fatal(err)
		}
	}
	if u := rs.unwraps(); u[0] != 1 || u[1] != 3 {
		t.Fatalf("unwraps per root = %v, want [1 3]: the down primary is asked once", u)
	}
	if s.circuitOpen() {
		t.Fatal("breaker open while a root answers")
	}
	// While root 0 is down, the check fails (no new KEK could be wrapped
	// under it), but within the grace period Status stays ok.
	s.Check(context.Background())
	if ok, reason := s.Healthy(); !ok {
		t.Fatalf("Status not ok within the grace period: %s", reason)
	}
	rs.setErr(nil, nil)
	s.Check(context.Background()) // probes root 0: up again
	if s.roots[0].down.Load() {
		t.Fatal("root 0 still marked down after a check reached it")
	}
	before := rs.unwraps()
	if _, err := s.Decrypt(context.Background(), "uid", olds[3]); err != nil {
		t.Fatal(err)
	}
	if u := rs.unwraps(); u[0] != before[0]+1 || u[1] != before[1] {
		t.Fatalf("unwraps per root = %v after %v: the primary serves again", u, before)
	}
}

// Every root unavailable: the breaker opens as with one keystore, and
// closes when a check reaches any root.
func TestRootsAllDown(t *testing.T) {
	rs := newRoots(t, "file", "awskms")
	olds := []*service.DecryptRequest{req(encrypt(t, rs.service(t, nil), seed(t))), req(encrypt(t, rs.service(t, nil), seed(t)))}
	s := rs.service(t, nil)
	rs.setErr(keystore.ErrUnavailable, keystore.ErrUnavailable)
	if _, err := s.Decrypt(context.Background(), "uid", olds[0]); codeOf(err) != codes.Unavailable {
		t.Fatalf("Decrypt: %v", err)
	}
	if !s.circuitOpen() {
		t.Fatal("breaker closed with every root down")
	}
	before := rs.unwraps()
	if _, err := s.Decrypt(context.Background(), "uid", olds[1]); codeOf(err) != codes.Unavailable {
		t.Fatalf("Decrypt: %v", err)
	}
	if u := rs.unwraps(); u[0] != before[0] || u[1] != before[1] {
		t.Fatalf("a Decrypt called a keystore with the breaker open: %v -> %v", before, u)
	}
	rs.setErr(keystore.ErrUnavailable, nil)
	s.Check(context.Background())
	if s.circuitOpen() {
		t.Fatal("breaker still open after a check reached root 1")
	}
	if _, err := s.Decrypt(context.Background(), "uid", olds[1]); err != nil {
		t.Fatal(err)
	}
}

// A new local KEK is made when any root rotates; every key_id is new and
// what each one sealed still decrypts.
func TestRootsRotation(t *testing.T) {
	rs := newRoots(t, "file", "awskms")
	s := rs.service(t, nil)
	seen := map[string]bool{}
	var reqs []*service.DecryptRequest
	var pts [][]byte
	for _, rotate := range []int{-1, 1, 0, 1, 0} {
		if rotate >= 0 {
			rs.envs[rotate].rotate()
			s.Check(context.Background())
		}
		st, _ := s.Status(context.Background())
		want, _ := envelope.RootsKeyID(rs.keyIDs(t))
		if st.KeyID != want {
			t.Fatalf("after rotating root %d: key_id %q, want %q", rotate, st.KeyID, want)
		}
		if seen[st.KeyID] {
			t.Fatalf("key_id %q reused", st.KeyID)
		}
		seen[st.KeyID] = true
		pt := seed(t)
		reqs = append(reqs, req(encrypt(t, s, pt)))
		pts = append(pts, pt)
	}
	if w := rs.wraps(); w[0] != 5 || w[1] != 5 {
		t.Fatalf("wraps per root = %v, want one per KEK: [5 5]", w)
	}
	fresh := rs.service(t, nil)
	for i, q := range reqs {
		got, err := fresh.Decrypt(context.Background(), "uid", q)
		if err != nil || string(got) != string(pts[i]) {
			t.Fatalf("KEK %d: %v", i, err)
		}
	}
}

// A new local KEK needs every root: with one down none can be made, and
// Encrypt says so until it is back.
func TestRootsMintNeedsEveryRoot(t *testing.T) {
	rs := newRoots(t, "file", "awskms")
	rs.setErr(nil, keystore.ErrUnavailable)
	s := rs.service(t, nil)
	if ok, _ := s.Healthy(); ok {
		t.Fatal("healthy without a local KEK")
	}
	if _, err := s.Encrypt(context.Background(), "uid", seed(t)); codeOf(err) != codes.Unavailable {
		t.Fatalf("Encrypt: %v", err)
	}
	rs.setErr(nil, nil)
	s.Check(context.Background())
	if ok, reason := s.Healthy(); !ok {
		t.Fatalf("not healthy once every root answers: %s", reason)
	}
	encrypt(t, s, seed(t))
}

// Roots added, removed or reordered: a Service decrypts what one with other
// roots sealed, as long as one of its roots made a copy, whatever its place.
func TestRootsChangeOfRoots(t *testing.T) {
	rs := newRoots(t, "file", "file", "awskms")
	type sealed struct {
		q  *service.DecryptRequest
		pt []byte
	}
	seal := func(order ...int) sealed {
		pt := seed(t)
		return sealed{req(encrypt(t, rs.service(t, nil, order...), pt)), pt}
	}
	for _, c := range []struct {
		name        string
		from, to    []int
		wantFailure bool
	}{
		{"second root added", []int{0}, []int{0, 1}, false},
		{"new primary added", []int{0}, []int{2, 0}, false},
		{"primary removed", []int{0, 2}, []int{2}, false},
		{"second removed", []int{0, 2}, []int{0}, false},
		{"same kind, other place", []int{0, 1}, []int{1}, false},
		{"reordered", []int{0, 1, 2}, []int{2, 1, 0}, false},
		{"no root in common", []int{0, 2}, []int{1}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := seal(c.from...)
			got, err := rs.service(t, nil, c.to...).Decrypt(context.Background(), "uid", s.q)
			if c.wantFailure {
				if err == nil || codeOf(err) == codes.Unknown || codeOf(err) == codes.Internal {
					t.Fatalf("Decrypt without the root: %v", err)
				}
				return
			}
			if err != nil || string(got) != string(s.pt) {
				t.Fatalf("Decrypt: %v", err)
			}
		})
	}
}

// The state file is adopted only under the same roots in the same order
// and versions; otherwise a new KEK is made.
func TestRootsStateFile(t *testing.T) {
	rs := newRoots(t, "file", "awskms")
	path := filepath.Join(t.TempDir(), "state.json")
	withState := func(c *Config) { c.StateFile = path }
	first := rs.service(t, withState)
	r := encrypt(t, first, seed(t))
	wraps := rs.wraps()
	again := rs.service(t, withState)
	if w := rs.wraps(); w[0] != wraps[0] || w[1] != wraps[1] {
		t.Fatalf("restart under the same roots made a new KEK: wraps %v -> %v", wraps, w)
	}
	if st, _ := again.Status(context.Background()); st.KeyID != r.KeyID {
		t.Fatalf("adopted key_id %q, want %q", st.KeyID, r.KeyID)
	}
	if k := again.cur.Load(); k == nil || string(k.annotation) != string(r.Annotations[envelope.AnnotationKey]) {
		t.Fatal("state file KEK not adopted")
	}
	for name, order := range map[string][]int{"reordered": {1, 0}, "one root": {0}} {
		before := rs.wraps()
		s := rs.service(t, withState, order...)
		k := s.cur.Load()
		if k == nil || string(k.annotation) == string(r.Annotations[envelope.AnnotationKey]) {
			t.Fatalf("%s: state file KEK adopted", name)
		}
		if w := rs.wraps(); w[order[0]] != before[order[0]]+1 {
			t.Fatalf("%s: no new KEK made", name)
		}
	}
}

// refuser refuses every Unwrap with err while err is set; other calls go
// through.
type refuser struct {
	keystore.Backend
	mu  sync.Mutex
	err error
}

func (r *refuser) set(err error) { r.mu.Lock(); r.err = err; r.mu.Unlock() }

func (r *refuser) Unwrap(ctx context.Context, w keystore.Wrapped, aad []byte) ([]byte, error) {
	r.mu.Lock()
	err := r.err
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return r.Backend.Unwrap(ctx, w, aad)
}

// Revalidation: a KEK under several roots keeps decrypting while any of
// its roots still unwraps it, and stops once none does.
func TestRootsRevalidate(t *testing.T) {
	rs := newRoots(t, "file", "awskms")
	want := seed(t)
	old := req(encrypt(t, rs.service(t, nil), want))
	c := newClock()
	gates := []*refuser{{Backend: rs.backends()[0]}, {Backend: rs.backends()[1]}}
	s := rs.envs[0].service(func(cfg *Config) {
		cfg.Backend = nil
		cfg.Roots = []keystore.Backend{gates[0], gates[1]}
		cfg.Now = c.Now
		cfg.RevalidateInterval = time.Minute
	})
	if _, err := s.Decrypt(context.Background(), "uid", old); err != nil {
		t.Fatal(err)
	}
	disabled := fmt.Errorf("%w: disabled", keystore.ErrKeyDisabled)
	gates[0].set(disabled)
	c.advance(2 * time.Minute)
	s.Check(context.Background())
	if got, err := s.Decrypt(context.Background(), "uid", old); err != nil || string(got) != string(want) {
		t.Fatalf("Decrypt with one root refusing: %v", err)
	}
	gates[1].set(disabled)
	c.advance(2 * time.Minute)
	s.Check(context.Background())
	if _, err := s.Decrypt(context.Background(), "uid", old); codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("Decrypt with every root refusing: %v, want FailedPrecondition", err)
	}
}

// A keywarden restarted while its primary root refuses everything (its key
// gone) adopts the state file's KEK through the second root: the current
// key_id stays the one the file's KEK was made under, Encrypt and Decrypt
// work, no KEK is made, the check still fails (Status not ok), and once
// the primary answers again the check passes with the same KEK. A root
// that answers at another version than the file's copy, or a state file
// made under other roots, is not adopted so.
func TestRootsStateFileRootDown(t *testing.T) {
	rs := newRoots(t, "vault", "file")
	path := filepath.Join(t.TempDir(), "state.json")
	withState := func(c *Config) { c.StateFile = path }
	want := seed(t)
	r := encrypt(t, rs.service(t, withState), want)
	old := req(r)

	gone := fmt.Errorf("%w: HTTP 403", keystore.ErrPermission)
	rs.setErr(gone, nil)
	wraps := rs.wraps()
	s := rs.service(t, withState)
	st, _ := s.Status(context.Background())
	if st.KeyID != r.KeyID || st.Healthz != "keystore PermissionDenied since start-up" {
		t.Fatalf("Status with the primary gone = %+v; want \"keystore PermissionDenied since start-up\" with the state file's key_id %s", st, r.KeyID)
	}
	if w := rs.wraps(); w[0] != wraps[0] || w[1] != wraps[1] {
		t.Fatalf("a KEK was made with the primary gone: wraps %v -> %v", wraps, w)
	}
	if served := servedBy(t, s); served["1"] != 1 || served["0"] != 0 {
		t.Fatalf("root unwraps %v, want the state file's KEK from root 1 only", served)
	}
	if got, err := s.Decrypt(context.Background(), "uid", old); err != nil || string(got) != string(want) {
		t.Fatalf("Decrypt with the primary gone: %q, %v", got, err)
	}
	if r2 := encrypt(t, s, want); r2.KeyID != r.KeyID {
		t.Fatalf("Encrypt with the primary gone under %s, want %s", r2.KeyID, r.KeyID)
	}
	s.Check(context.Background())
	if ok, _ := s.Healthy(); ok {
		t.Fatal("healthy while the primary refuses its key_id")
	}
	rs.setErr(nil, nil)
	for range recoveryChecks + 1 {
		s.Check(context.Background())
	}
	if ok, reason := s.Healthy(); !ok {
		t.Fatalf("not healthy once the primary answers again: %s", reason)
	}
	if st, _ := s.Status(context.Background()); st.KeyID != r.KeyID {
		t.Fatalf("key_id %s after the primary came back, want still %s", st.KeyID, r.KeyID)
	}

	// The second root rotated since the file was written: its copy is not
	// at the version it answers with, so nothing is adopted.
	rs.envs[1].rotate()
	rs.setErr(gone, nil)
	if s := rs.service(t, withState); s.cur.Load() != nil {
		t.Fatal("state file KEK adopted though the answering root rotated since")
	}
	// Other roots (reordered): not adopted either.
	rs.envs[1].spy.SetErr(gone)
	rs.envs[0].spy.SetErr(nil)
	if s := rs.service(t, withState, 1, 0); s.cur.Load() != nil {
		t.Fatal("state file KEK adopted under reordered roots")
	}
}

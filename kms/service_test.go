package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/keystore/keystoretest"
	"github.com/keywarden/keywarden/kms/envelope"
	"github.com/keywarden/keywarden/metrics"
)

type env struct {
	t    testing.TB
	path string
	file *file.Backend
	spy  *keystoretest.Spy
	logs *bytes.Buffer
	mu   *sync.Mutex
}

func newEnv(t testing.TB) *env {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keyset.json")
	if _, err := file.Init(p); err != nil {
		t.Fatal(err)
	}
	fb, err := file.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, path: p, file: fb, spy: keystoretest.NewSpy(fb), logs: new(bytes.Buffer), mu: new(sync.Mutex)}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (e *env) service(mod func(*Config)) *Service {
	e.t.Helper()
	cfg := Config{
		Backend: e.spy,
		Metrics: metrics.New(),
		Logger:  slog.New(slog.NewJSONHandler(lockedWriter{e.mu, e.logs}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(context.Background(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) rotate() string {
	e.t.Helper()
	ctx := context.Background()
	v, err := e.file.Add(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.file.Promote(ctx, v.KeyID); err != nil {
		e.t.Fatal(err)
	}
	return v.KeyID
}

func seed(t testing.TB) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func encrypt(t testing.TB, s *Service, pt []byte) *service.EncryptResponse {
	t.Helper()
	r, err := s.Encrypt(context.Background(), "uid-test", pt)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return r
}

func req(r *service.EncryptResponse) *service.DecryptRequest {
	return &service.DecryptRequest{Ciphertext: r.Ciphertext, KeyID: r.KeyID, Annotations: r.Annotations}
}

func codeOf(err error) codes.Code {
	st, ok := status.FromError(err)
	if !ok {
		return codes.Unknown // a bare error: exactly what must never happen
	}
	return st.Code()
}

func TestEncryptDecrypt(t *testing.T) {
	e := newEnv(t)
	s := e.service(nil)
	st, err := s.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "v2" || st.Healthz != "ok" || st.KeyID == "" {
		t.Fatalf("Status = %+v", st)
	}
	pt := seed(t)
	r := encrypt(t, s, pt)
	if r.KeyID != st.KeyID {
		t.Fatalf("Encrypt key_id %q != Status key_id %q", r.KeyID, st.KeyID)
	}
	if len(r.Ciphertext) >= 1024 {
		t.Fatalf("ciphertext %d bytes, want < 1 kB", len(r.Ciphertext))
	}
	if len(r.Annotations) != 1 || len(r.Annotations[envelope.AnnotationKey]) == 0 {
		t.Fatalf("annotations = %v", r.Annotations)
	}
	if bytes.Contains(r.Ciphertext, pt) || bytes.Contains(r.Annotations[envelope.AnnotationKey], pt) {
		t.Fatal("plaintext visible in the response")
	}
	got, err := s.Decrypt(context.Background(), "uid-test", req(r))
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if !bytes.Equal(got, pt) {
		t.Fatal("Decrypt returned different bytes")
	}
	// One KEK serves every Encrypt: no keystore call after start-up.
	wraps := e.spy.Wraps.Load()
	for range 10 {
		r2 := encrypt(t, s, seed(t))
		if !bytes.Equal(r2.Annotations[envelope.AnnotationKey], r.Annotations[envelope.AnnotationKey]) {
			t.Fatal("local KEK changed without cause")
		}
	}
	if e.spy.Wraps.Load() != wraps || e.spy.Unwraps.Load() != 0 {
		t.Fatalf("hot path called the keystore: %d wraps, %d unwraps", e.spy.Wraps.Load()-wraps, e.spy.Unwraps.Load())
	}
}

func TestEncryptBounds(t *testing.T) {
	s := newEnv(t).service(nil)
	for _, n := range []int{0, envelope.MaxPlaintext + 1, 4 << 20} {
		_, err := s.Encrypt(context.Background(), "u", make([]byte, n))
		if codeOf(err) != codes.InvalidArgument {
			t.Fatalf("Encrypt(%d bytes): %v, want InvalidArgument", n, err)
		}
	}
}

// Every hostile Decrypt fails with a caller-mistake code, never Unknown or
// Internal, never decrypts, and the service keeps working afterwards.
func TestDecryptHostile(t *testing.T) {
	e := newEnv(t)
	s := e.service(nil)
	pt := seed(t)
	r := encrypt(t, s, pt)
	ann := r.Annotations[envelope.AnnotationKey]

	type tc struct {
		name string
		req  *service.DecryptRequest
		want codes.Code
	}
	with := func(f func(*service.DecryptRequest)) *service.DecryptRequest {
		q := &service.DecryptRequest{Ciphertext: bytes.Clone(r.Ciphertext), KeyID: r.KeyID, Annotations: map[string][]byte{envelope.AnnotationKey: bytes.Clone(ann)}}
		f(q)
		return q
	}
	random := make([]byte, 61)
	_, _ = rand.Read(random)
	cases := []tc{
		{"nil request", nil, codes.InvalidArgument},
		{"empty ciphertext", with(func(q *service.DecryptRequest) { q.Ciphertext = nil }), codes.InvalidArgument},
		{"random ciphertext", with(func(q *service.DecryptRequest) { q.Ciphertext = random }), codes.InvalidArgument},
		{"multi-MiB ciphertext", with(func(q *service.DecryptRequest) { q.Ciphertext = append([]byte{1}, make([]byte, 3<<20)...) }), codes.InvalidArgument},
		{"unknown version", with(func(q *service.DecryptRequest) { q.Ciphertext[0] = 9 }), codes.InvalidArgument},
		{"empty key_id", with(func(q *service.DecryptRequest) { q.KeyID = "" }), codes.InvalidArgument},
		{"wrong key_id", with(func(q *service.DecryptRequest) { q.KeyID = "tink:1:0000000000000000" }), codes.InvalidArgument},
		{"oversized key_id", with(func(q *service.DecryptRequest) { q.KeyID = strings.Repeat("k", 2048) }), codes.InvalidArgument},
		{"missing annotation", with(func(q *service.DecryptRequest) { q.Annotations = nil }), codes.InvalidArgument},
		{"extra annotation", with(func(q *service.DecryptRequest) { q.Annotations["x.example.com"] = []byte("1") }), codes.InvalidArgument},
		{"empty annotation", with(func(q *service.DecryptRequest) { q.Annotations[envelope.AnnotationKey] = nil }), codes.InvalidArgument},
		{"oversized annotation", with(func(q *service.DecryptRequest) {
			q.Annotations[envelope.AnnotationKey] = append(bytes.Clone(ann), make([]byte, 40<<10)...)
		}), codes.InvalidArgument},
		{"annotation from another object", with(func(q *service.DecryptRequest) {
			q.Annotations[envelope.AnnotationKey] = otherAnnotation(t, r.KeyID)
		}), codes.InvalidArgument},
	}
	for i := range len(r.Ciphertext) {
		cases = append(cases, tc{fmt.Sprintf("truncated to %d", i), with(func(q *service.DecryptRequest) { q.Ciphertext = q.Ciphertext[:i] }), codes.InvalidArgument})
	}
	for i := range len(r.Ciphertext) * 8 {
		cases = append(cases, tc{fmt.Sprintf("ciphertext bit %d", i), with(func(q *service.DecryptRequest) { q.Ciphertext[i/8] ^= 1 << (i % 8) }), codes.InvalidArgument})
	}
	for i := range len(ann) * 8 {
		cases = append(cases, tc{fmt.Sprintf("annotation bit %d", i), with(func(q *service.DecryptRequest) {
			q.Annotations[envelope.AnnotationKey][i/8] ^= 1 << (i % 8)
		}), codes.InvalidArgument})
	}
	for i := range len(ann) {
		cases = append(cases, tc{fmt.Sprintf("annotation truncated to %d", i), with(func(q *service.DecryptRequest) {
			q.Annotations[envelope.AnnotationKey] = q.Annotations[envelope.AnnotationKey][:i]
		}), codes.InvalidArgument})
	}
	for _, c := range cases {
		got, err := s.Decrypt(context.Background(), "uid-hostile", c.req)
		if err == nil {
			t.Fatalf("%s: decrypted (%d bytes)", c.name, len(got))
		}
		if code := codeOf(err); code != c.want {
			// A flipped bit inside the root key_id of the annotation, with
			// the request key_id flipped alike, names an unknown version.
			t.Fatalf("%s: code %v (%v), want %v", c.name, code, err, c.want)
		}
	}
	// Still answering, still correct.
	got, err := s.Decrypt(context.Background(), "uid", req(r))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("service broken after hostile input: %v", err)
	}
	e.mu.Lock()
	logs := e.logs.String()
	e.mu.Unlock()
	if strings.Contains(logs, string(pt)) || strings.Contains(logs, fmt.Sprintf("%x", pt)) {
		t.Fatal("plaintext reached the log")
	}
}

// otherAnnotation is a valid wrapped KEK from another Encrypt path: same root
// key, another local KEK.
func otherAnnotation(t *testing.T, keyID string) []byte {
	t.Helper()
	e := newEnv(t)
	s := e.service(nil)
	r := encrypt(t, s, seed(t))
	id, ct, err := envelope.DecodeKEK(r.Annotations[envelope.AnnotationKey])
	if err != nil {
		t.Fatal(err)
	}
	_ = id
	ann, err := envelope.EncodeKEK(keyID, ct)
	if err != nil {
		t.Fatal(err)
	}
	return ann
}

func TestDecryptKeyStates(t *testing.T) {
	e := newEnv(t)
	s := e.service(nil)
	ctx := context.Background()
	r := encrypt(t, s, seed(t))
	old := r.KeyID
	e.rotate()
	s.Check(ctx)
	if err := e.file.Disable(ctx, old); err != nil {
		t.Fatal(err)
	}
	fresh := e.service(nil) // empty cache: must ask the keystore
	if _, err := fresh.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("disabled version: %v, want FailedPrecondition", err)
	}
	if err := e.file.Destroy(ctx, old); err != nil {
		t.Fatal(err)
	}
	fresh = e.service(nil) // the refusal above is remembered for negativeTTL
	if _, err := fresh.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.NotFound {
		t.Fatalf("destroyed version: %v, want NotFound", err)
	}
}

func TestRootRotation(t *testing.T) {
	e := newEnv(t)
	s := e.service(nil)
	ctx := context.Background()
	pt := seed(t)
	before := encrypt(t, s, pt)
	newID := e.rotate()
	s.Check(ctx)
	st, _ := s.Status(ctx)
	if st.KeyID != newID {
		t.Fatalf("Status key_id %q after rotation, want %q", st.KeyID, newID)
	}
	after := encrypt(t, s, pt)
	if after.KeyID != newID {
		t.Fatalf("Encrypt key_id %q, want %q", after.KeyID, newID)
	}
	if bytes.Equal(after.Annotations[envelope.AnnotationKey], before.Annotations[envelope.AnnotationKey]) {
		t.Fatal("local KEK not replaced on root rotation")
	}
	fresh := e.service(nil)
	for _, r := range []*service.EncryptResponse{before, after} {
		got, err := fresh.Decrypt(ctx, "u", req(r))
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Decrypt under %s after rotation: %v", r.KeyID, err)
		}
	}
}

// kube-apiserver sends about ten concurrent Decrypts per seed at start-up.
// They must cost one keystore call per local KEK.
func TestColdStartSingleflight(t *testing.T) {
	e := newEnv(t)
	s := e.service(nil)
	var reqs []*service.DecryptRequest
	for range 5 { // five distinct local KEKs
		reqs = append(reqs, req(encrypt(t, s, seed(t))))
		s.cur.Store(nil)
		s.Check(context.Background())
	}
	e.spy.SetDelay(30 * time.Millisecond)
	fresh := e.service(nil)
	unwraps := e.spy.Unwraps.Load()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for _, q := range reqs {
		for range 20 {
			wg.Go(func() {
				if _, err := fresh.Decrypt(context.Background(), "u", q); err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.spy.Unwraps.Load() - unwraps; n != int64(len(reqs)) {
		t.Fatalf("%d keystore unwraps for %d distinct KEKs", n, len(reqs))
	}
}

// A caller that misses the cache just as another caller's flight for the
// same KEK lands must take the cached KEK, not start a second keystore call.
func TestSingleflightLateMiss(t *testing.T) {
	e := newEnv(t)
	r := encrypt(t, e.service(nil), seed(t))
	fresh := e.service(nil)
	paused, resume := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	fresh.afterMiss = func() {
		if first.CompareAndSwap(false, true) {
			close(paused)
			<-resume
		}
	}
	unwraps := e.spy.Unwraps.Load()
	var wg sync.WaitGroup
	var lateErr error
	wg.Go(func() { _, lateErr = fresh.Decrypt(context.Background(), "late", req(r)) })
	<-paused // the late caller has missed the cache
	if _, err := fresh.Decrypt(context.Background(), "first", req(r)); err != nil {
		t.Fatal(err)
	}
	close(resume)
	wg.Wait()
	if lateErr != nil {
		t.Fatal(lateErr)
	}
	if n := e.spy.Unwraps.Load() - unwraps; n != 1 {
		t.Fatalf("%d keystore unwraps for one KEK, want 1", n)
	}
}

// A caller that gives up does not cancel the shared keystore call for the
// others.
func TestSingleflightCallerCancel(t *testing.T) {
	e := newEnv(t)
	r := encrypt(t, e.service(nil), seed(t))
	e.spy.SetDelay(100 * time.Millisecond)
	fresh := e.service(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	var patientErr error
	wg.Go(func() { _, patientErr = fresh.Decrypt(context.Background(), "patient", req(r)) })
	_, err := fresh.Decrypt(ctx, "hasty", req(r))
	if codeOf(err) != codes.DeadlineExceeded {
		t.Fatalf("hasty caller: %v, want DeadlineExceeded", err)
	}
	wg.Wait()
	if patientErr != nil {
		t.Fatalf("patient caller failed because another gave up: %v", patientErr)
	}
}

func TestKEKBounds(t *testing.T) {
	e := newEnv(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := e.service(func(c *Config) { c.KEKMaxUses = 3; c.KEKMaxAge = time.Hour; c.Now = clock })
	renewed := make(chan error, 8)
	s.afterRenew = func(err error) { renewed <- err }
	ann := func(r *service.EncryptResponse) string { return string(r.Annotations[envelope.AnnotationKey]) }
	first := ann(encrypt(t, s, seed(t)))
	encrypt(t, s, seed(t)) // from half the bound on, a spare is made in the background
	if got := ann(encrypt(t, s, seed(t))); got != first {
		t.Fatal("KEK replaced before its use bound")
	}
	if err := <-renewed; err != nil {
		t.Fatalf("background spare: %v", err)
	}
	wraps := e.spy.Wraps.Load()
	second := ann(encrypt(t, s, seed(t)))
	if second == first {
		t.Fatal("KEK not replaced after 3 uses")
	}
	if e.spy.Wraps.Load() != wraps {
		t.Fatal("Encrypt called the keystore to replace the KEK")
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	s.Check(context.Background()) // the background loop replaces it off the hot path
	if got := ann(encrypt(t, s, seed(t))); got == second {
		t.Fatal("KEK not replaced after its age bound")
	}
}

func TestKeystoreOutage(t *testing.T) {
	e := newEnv(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := e.service(func(c *Config) { c.Grace = time.Minute; c.Now = clock })
	ctx := context.Background()
	r := encrypt(t, s, seed(t))

	e.spy.SetErr(fmt.Errorf("%w: connection refused", keystore.ErrUnavailable))
	s.Check(ctx)
	if ok, reason := s.Healthy(); !ok {
		t.Fatalf("unhealthy within grace: %s", reason)
	}
	advance(2 * time.Minute)
	s.Check(ctx)
	st, _ := s.Status(ctx)
	if st.Healthz == "ok" || !strings.Contains(st.Healthz, "Unavailable") {
		t.Fatalf("healthz %q past grace, want an Unavailable reason", st.Healthz)
	}
	// The cached KEK keeps the control plane working.
	if _, err := s.Decrypt(ctx, "u", req(r)); err != nil {
		t.Fatalf("Decrypt with cached KEK during outage: %v", err)
	}
	if _, err := s.Encrypt(ctx, "u", seed(t)); err != nil {
		t.Fatalf("Encrypt with cached KEK during outage: %v", err)
	}
	fresh := e.service(func(c *Config) { c.Now = clock })
	if _, err := fresh.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.Unavailable {
		t.Fatalf("uncached Decrypt during outage: %v, want Unavailable", err)
	}
	if _, err := fresh.Encrypt(ctx, "u", seed(t)); codeOf(err) != codes.Unavailable {
		t.Fatalf("Encrypt with no KEK: %v, want Unavailable", err)
	}
	if ok, _ := fresh.Healthy(); ok {
		t.Fatal("a service that never reached its keystore reports healthy")
	}
	e.spy.SetErr(nil)
	// s went unhealthy with the keystore down: it needs recoveryChecks
	// good checks in a row. fresh was never healthy: one is enough.
	for i := range recoveryChecks {
		s.Check(ctx)
		if ok, _ := s.Healthy(); ok != (i == recoveryChecks-1) {
			t.Fatalf("healthy=%v after %d good checks, want true only after %d", ok, i+1, recoveryChecks)
		}
	}
	fresh.Check(ctx)
	for _, x := range []*Service{s, fresh} {
		if ok, reason := x.Healthy(); !ok {
			t.Fatalf("not healthy after recovery: %s", reason)
		}
	}
	if _, err := fresh.Decrypt(ctx, "u", req(r)); err != nil {
		t.Fatalf("Decrypt after recovery: %v", err)
	}
}

func TestStateFileReusesKEK(t *testing.T) {
	e := newEnv(t)
	state := filepath.Join(t.TempDir(), "state.json")
	s1 := e.service(func(c *Config) { c.StateFile = state })
	r1 := encrypt(t, s1, seed(t))
	s1.Check(context.Background()) // persists the use count
	st, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %04o", st.Mode().Perm())
	}
	wraps := e.spy.Wraps.Load()
	s2 := e.service(func(c *Config) { c.StateFile = state })
	r2 := encrypt(t, s2, seed(t))
	if !bytes.Equal(r1.Annotations[envelope.AnnotationKey], r2.Annotations[envelope.AnnotationKey]) {
		t.Fatal("restart did not reuse the saved KEK")
	}
	if e.spy.Wraps.Load() != wraps {
		t.Fatal("restart wrapped a new KEK despite the state file")
	}
	// After a root rotation the saved KEK is not adopted.
	e.rotate()
	s3 := e.service(func(c *Config) { c.StateFile = state })
	r3 := encrypt(t, s3, seed(t))
	if bytes.Equal(r3.Annotations[envelope.AnnotationKey], r1.Annotations[envelope.AnnotationKey]) || r3.KeyID == r1.KeyID {
		t.Fatal("state KEK adopted under a different root key")
	}
}

func TestCodeMapping(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"nil", nil, codes.OK},
		{"invalid", fmt.Errorf("x: %w", keystore.ErrInvalid), codes.InvalidArgument},
		{"not found", fmt.Errorf("x: %w", keystore.ErrKeyNotFound), codes.NotFound},
		{"disabled", fmt.Errorf("x: %w", keystore.ErrKeyDisabled), codes.FailedPrecondition},
		{"permission", fmt.Errorf("x: %w", keystore.ErrPermission), codes.PermissionDenied},
		{"throttled", fmt.Errorf("x: %w", keystore.ErrThrottled), codes.ResourceExhausted},
		{"unavailable", fmt.Errorf("x: %w", keystore.ErrUnavailable), codes.Unavailable},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), codes.Canceled},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"envelope", envelope.ErrAuthFailed, codes.InvalidArgument},
		{"config", keystore.ErrConfig, codes.Internal},
		{"bug", errors.New("surprise"), codes.Internal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Code(tc.err); got != tc.want {
				t.Fatalf("Code = %v, want %v", got, tc.want)
			}
			if tc.err != nil {
				if got := codeOf(toStatus(tc.err)); got != tc.want {
					t.Fatalf("toStatus code = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// A wrong keyset (or a stream of forged annotations) must not turn every
// Decrypt into a keystore call: lasting refusals are remembered briefly.
func TestNegativeCache(t *testing.T) {
	e := newEnv(t)
	r := encrypt(t, e.service(nil), seed(t))
	other := newEnv(t) // a different keyset: r's root version is unknown there
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := other.service(func(c *Config) { c.Now = clock })
	ctx := context.Background()
	for range 20 {
		if _, err := s.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.NotFound {
			t.Fatalf("Decrypt on the wrong keyset: %v, want NotFound", err)
		}
	}
	if n := other.spy.Unwraps.Load(); n != 1 {
		t.Fatalf("%d keystore unwraps for 20 refused Decrypts of one KEK, want 1", n)
	}
	mu.Lock()
	now = now.Add(negativeTTL + time.Second)
	mu.Unlock()
	if _, err := s.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.NotFound {
		t.Fatalf("after TTL: %v", err)
	}
	if n := other.spy.Unwraps.Load(); n != 2 {
		t.Fatalf("refusal not retried after its TTL: %d unwraps", n)
	}
	// Transient failures are not remembered per KEK: they open the
	// breaker (one keystore call, then fast Unavailable), and the KEK
	// decrypts as soon as a check has closed it.
	fresh := e.service(nil)
	e.spy.SetErr(fmt.Errorf("%w: down", keystore.ErrUnavailable))
	before := e.spy.Unwraps.Load()
	for range 3 {
		if _, err := fresh.Decrypt(ctx, "u", req(r)); codeOf(err) != codes.Unavailable {
			t.Fatalf("Decrypt with keystore down: %v", err)
		}
	}
	if n := e.spy.Unwraps.Load() - before; n != 1 {
		t.Fatalf("%d unwraps for 3 Decrypts with the keystore down, want 1 (then the breaker answers)", n)
	}
	e.spy.SetErr(nil)
	fresh.Check(ctx)
	if _, err := fresh.Decrypt(ctx, "u", req(r)); err != nil {
		t.Fatalf("Decrypt after recovery: %v", err)
	}
}

// Package kms implements the KMS v2 service kube-apiserver calls.
//
// Encrypt seals the apiserver's DEK seed with an in-memory local KEK; the
// local KEK, wrapped once by the root keystore, travels back in an
// annotation. Decrypt unwraps each distinct local KEK once (a bounded LRU and
// singleflight in front of the keystore), so the keystore stays off the hot
// path. Status and health read a check that a background loop refreshes; no
// poll ever reaches the keystore.
//
// Neither RPC ever waits for a keystore that is known to be down: Encrypt
// never calls it (a local KEK past its bounds is renewed in the background,
// renew.go), and Decrypts that need it fail fast while a breaker is open
// (breaker.go). A root version found disabled stops decrypting within a
// bound (revalidate.go).
package kms

import (
	"bytes"
	"cmp"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
	"k8s.io/kms/pkg/service"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/kms/envelope"
	"github.com/keywarden/keywarden/metrics"
)

var _ service.Service = (*Service)(nil)

// Defaults for Config's zero fields.
const (
	DefaultCheckInterval   = 5 * time.Second
	DefaultKeystoreTimeout = 10 * time.Second
	DefaultGrace           = 5 * time.Minute
	DefaultKEKMaxUses      = 1 << 20
	DefaultKEKMaxAge       = 7 * 24 * time.Hour
	DefaultCacheSize       = 1024
	// DefaultRevalidateInterval bounds how long an unwrapped local KEK keeps
	// decrypting after its root key version is disabled or destroyed.
	DefaultRevalidateInterval = time.Minute
	DefaultMaxUnwraps         = 64
	// maxKEKUses stays far below the 2^32 random-nonce limit of AES-GCM.
	maxKEKUses = 1 << 30
	// hardKEKUses is the hard stop: a local KEK seals at most this many
	// seeds, whether or not a new one could be made. It is twice the cap on
	// KEKMaxUses, so a KEK that hit its policy bound during a keystore
	// outage still has 2^30 Encrypts (decades of apiserver seeds) left, and
	// half AES-GCM's 2^32 random-nonce limit.
	hardKEKUses = 1 << 31
	// A wrapped KEK the keystore refused as unknown, disabled or invalid is
	// remembered this long, so that a wrong keyset or a stream of bad
	// requests costs one keystore call per KEK per period, not one per RPC.
	// Short, so that a version added or re-enabled is seen quickly.
	negativeTTL  = 5 * time.Second
	negativeSize = 256
)

// Config configures a Service. Backend or Roots is required; zero fields
// get defaults.
type Config struct {
	// Backend is the root keystore, when there is one.
	Backend keystore.Backend
	// Roots are the root keystores when there are several (at most
	// envelope.MaxRoots), the first primary: every new local KEK is
	// wrapped under each, and a KEK not in memory is unwrapped by the
	// first that answers, in this order. Set Backend or Roots, not both;
	// Roots of one is Backend.
	Roots []keystore.Backend
	// Recovery, if set, is the offline recovery key's public half: every
	// new local KEK is also sealed to it, as one more copy after the
	// roots' in a version-2 annotation (so, with one root, the annotation
	// is version 2 too), and its key_id is part of the KEK's key_id. It
	// counts as one of envelope.MaxRoots copies. It is never asked to
	// unwrap: no root has its backend name.
	Recovery keystore.Sealer
	Metrics  *metrics.Metrics
	Logger   *slog.Logger
	// CheckInterval is how often the keystore is checked: the root key_id
	// read, a rotation noticed, health refreshed.
	CheckInterval time.Duration
	// KeystoreTimeout bounds every keystore call.
	KeystoreTimeout time.Duration
	// Grace is how long the keystore may fail checks, while a local KEK is
	// in hand, before Status reports unhealthy.
	Grace time.Duration
	// KEKMaxUses and KEKMaxAge bound one local KEK's life.
	KEKMaxUses uint64
	KEKMaxAge  time.Duration
	// CacheSize bounds the unwrapped local KEKs kept for Decrypt.
	CacheSize int
	// StateFile, if set, keeps the current wrapped local KEK across
	// restarts, so a restart adds no new KEK for the next cold start to
	// unwrap.
	StateFile string
	// RevalidateInterval is how often the root key versions of the
	// unwrapped local KEKs are re-checked with the keystore (List, or one
	// Unwrap per version): a disabled or destroyed version stops decrypting
	// within about this long.
	RevalidateInterval time.Duration
	// MaxUnwraps bounds the keystore unwraps in flight (distinct local
	// KEKs); a Decrypt that would start one more is refused with
	// ResourceExhausted.
	MaxUnwraps int
	// Now and Rand are injected by tests. Rand makes the local KEKs (the
	// AES-GCM nonces come from the AEAD itself: envelope.NewAEAD).
	Now  func() time.Time
	Rand io.Reader
}

// Service implements k8s.io/kms/pkg/service.Service.
type Service struct {
	cfg     Config
	log     *slog.Logger
	backend string  // the root_key_info backend label
	roots   []*root // in Config order; one when Config.Backend is set

	cur      atomic.Pointer[kek]
	cache    *lru.Cache[string, *kek]
	negative *lru.Cache[string, refusal]
	group    singleflight.Group

	mintMu    sync.Mutex // serialises making a new current KEK
	health    atomic.Pointer[health]
	lastOK    atomic.Int64 // unix nanos of the last successful check
	savedUses atomic.Uint64
	rootSeen  atomic.Pointer[rootSeen] // the current root version and when it was first seen

	stateV1Logged atomic.Bool // the version-1 state file was reported

	breaker
	renewal

	// Check's own state, guarded by checkMu.
	checkMu        sync.Mutex
	lastRevalidate time.Time
	okStreak       int // checks in a row that reached the keystore

	wasOK atomic.Bool // Status has said ok since start-up
	held  atomic.Bool // Status went not ok while the keystore was down

	hardUses   uint64      // hardKEKUses; tests lower it
	afterMiss  func()      // tests only: runs between a cache miss and its flight
	afterRenew func(error) // tests only: runs after each background renewal
}

// kek is one unwrapped local KEK.
type kek struct {
	aead       cipher.AEAD
	annotation []byte // the wrapped form, as sent in the annotation
	// annotations is what Encrypt returns: built once per KEK and shared
	// by every response, read-only (the gRPC layer only marshals it).
	annotations map[string][]byte
	rootKeyID   string
	aad         []byte // envelope.AAD(rootKeyID, annotation), fixed per KEK
	created     time.Time
	uses        atomic.Uint64
	// stateKey authenticates the state file that names this KEK
	// (stateMACKey): derived from the KEK, never the KEK. Never logged.
	stateKey []byte
}

// rootSeen is when this keywarden first saw a root key version as the
// current one, here or (through the state file) in an earlier run.
type rootSeen struct {
	keyID string
	at    time.Time
}

// refusal is a keystore's lasting "no" to one wrapped KEK.
type refusal struct {
	err   error
	until time.Time
}

type health struct {
	ok     bool
	reason string
}

// New makes a Service and runs its first keystore check. A keystore that
// does not answer yet is not an error: the Service starts unhealthy and
// Run keeps trying.
func New(ctx context.Context, cfg Config) (*Service, error) {
	switch {
	case cfg.Backend != nil && len(cfg.Roots) > 0:
		return nil, errors.New("kms: set Config.Backend or Config.Roots, not both")
	case cfg.Backend != nil:
		cfg.Roots = []keystore.Backend{cfg.Backend}
	case len(cfg.Roots) == 0:
		return nil, errors.New("kms: Config.Backend is required")
	case len(cfg.Roots) > envelope.MaxRoots:
		return nil, fmt.Errorf("kms: %d root keystores, at most %d", len(cfg.Roots), envelope.MaxRoots)
	}
	roots := make([]*root, len(cfg.Roots))
	for i, b := range cfg.Roots {
		if b == nil {
			return nil, fmt.Errorf("kms: Config.Roots[%d] is nil", i)
		}
		roots[i] = &root{b: b, name: b.Name(), index: i}
	}
	if cfg.Recovery != nil {
		if len(roots)+1 > envelope.MaxRoots {
			return nil, fmt.Errorf("kms: %d root keystores and a recovery key, at most %d in all", len(roots), envelope.MaxRoots)
		}
		for _, r := range roots {
			if r.name == cfg.Recovery.Name() {
				return nil, fmt.Errorf("kms: a root keystore has the recovery key's backend name %q", r.name)
			}
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.KeystoreTimeout <= 0 {
		cfg.KeystoreTimeout = DefaultKeystoreTimeout
	}
	if cfg.Grace < 0 {
		cfg.Grace = 0
	} else if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.KEKMaxUses == 0 {
		cfg.KEKMaxUses = DefaultKEKMaxUses
	}
	cfg.KEKMaxUses = min(cfg.KEKMaxUses, maxKEKUses)
	if cfg.KEKMaxAge <= 0 {
		cfg.KEKMaxAge = DefaultKEKMaxAge
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.RevalidateInterval <= 0 {
		cfg.RevalidateInterval = DefaultRevalidateInterval
	}
	if cfg.MaxUnwraps <= 0 {
		cfg.MaxUnwraps = DefaultMaxUnwraps
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	cache, err := lru.New[string, *kek](cfg.CacheSize)
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	negative, err := lru.New[string, refusal](negativeSize)
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	s := &Service{cfg: cfg, log: cfg.Logger, backend: rootsLabel(roots), roots: roots, cache: cache, negative: negative, hardUses: hardKEKUses}
	s.health.Store(&health{reason: "starting"})
	s.cfg.Metrics.SetCircuitOpen(false)
	// The first re-check is one interval after start: what start-up
	// unwrapped or wrapped was just verified.
	s.lastRevalidate = cfg.Now()
	s.Check(ctx)
	return s, nil
}

// Run re-checks the keystore every CheckInterval until ctx ends.
func (s *Service) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Check(ctx)
		}
	}
}

// Healthy reports the cached health: ok, or a short reason.
func (s *Service) Healthy() (bool, string) {
	h := s.health.Load()
	return h.ok, h.reason
}

// Status implements service.Service. It never calls the keystore.
func (s *Service) Status(context.Context) (*service.StatusResponse, error) {
	h := s.health.Load()
	resp := &service.StatusResponse{Version: "v2", Healthz: "ok"}
	if !h.ok {
		resp.Healthz = h.reason
	}
	// key_id comes from the same KEK that Encrypt uses, so the two agree.
	if k := s.cur.Load(); k != nil {
		resp.KeyID = k.rootKeyID
	}
	return resp, nil
}

// Encrypt implements service.Service. It never calls the keystore: a local
// KEK past its bounds is replaced by a spare made in the background, or, if
// none is ready (the keystore is slow or down), stays in use up to the hard
// stop of hardKEKUses. The response's Annotations map (and
// its value) is shared by every response under the same local KEK: callers
// read it, never modify it.
func (s *Service) Encrypt(_ context.Context, _ string, pt []byte) (*service.EncryptResponse, error) {
	if len(pt) == 0 || len(pt) > envelope.MaxPlaintext {
		return nil, toStatus(fmt.Errorf("%w: plaintext is %d bytes, want 1..%d", errInvalidRequest, len(pt), envelope.MaxPlaintext))
	}
	k := s.cur.Load()
	if k == nil {
		return nil, toStatus(errNoKEK)
	}
	if reason := s.due(k); reason != "" {
		k = s.rollover(k, reason)
	} else if k.uses.Load() >= s.cfg.KEKMaxUses/2 && s.next.Load() == nil {
		s.prepareSoon(k) // so that the next KEK is ready at the bound
	}
	if k.uses.Add(1) > s.hardUses {
		return nil, toStatus(errKEKSpent)
	}
	ct, err := envelope.Seal(k.aead, pt, k.aad)
	if err != nil {
		return nil, toStatus(err)
	}
	return &service.EncryptResponse{
		Ciphertext:  ct,
		KeyID:       k.rootKeyID,
		Annotations: k.annotations,
	}, nil
}

// Decrypt implements service.Service.
func (s *Service) Decrypt(ctx context.Context, _ string, req *service.DecryptRequest) ([]byte, error) {
	pt, err := s.decrypt(ctx, req)
	return pt, toStatus(err)
}

func (s *Service) decrypt(ctx context.Context, req *service.DecryptRequest) ([]byte, error) {
	if req == nil {
		return nil, fmt.Errorf("%w: empty request", errInvalidRequest)
	}
	if len(req.KeyID) == 0 || len(req.KeyID) > envelope.MaxKeyID {
		return nil, fmt.Errorf("%w: key_id is %d bytes, want 1..%d", errInvalidRequest, len(req.KeyID), envelope.MaxKeyID)
	}
	// Checked before any keystore call, and only once.
	ct, err := envelope.Parse(req.Ciphertext)
	if err != nil {
		return nil, err
	}
	ann, err := kekAnnotation(req.Annotations)
	if err != nil {
		return nil, err
	}
	k, err := s.kekFor(ctx, ann, req.KeyID)
	if err != nil {
		return nil, err
	}
	return ct.Open(k.aead, k.aad)
}

// kekAnnotation returns our one annotation. Anything else is refused: we
// never send other annotations, so their presence means the request was not
// made from our response.
func kekAnnotation(anns map[string][]byte) ([]byte, error) {
	ann, ok := anns[envelope.AnnotationKey]
	if !ok {
		return nil, fmt.Errorf("%w: annotation %s is missing", errInvalidRequest, envelope.AnnotationKey)
	}
	if len(anns) != 1 {
		return nil, fmt.Errorf("%w: %d annotations, want only %s", errInvalidRequest, len(anns), envelope.AnnotationKey)
	}
	if len(ann) > envelope.MaxAnnotationAny {
		return nil, fmt.Errorf("%w: annotation %s is %d bytes, max %d", envelope.ErrTooLarge, envelope.AnnotationKey, len(ann), envelope.MaxAnnotationAny)
	}
	return ann, nil
}

// kekFor returns the unwrapped local KEK for an annotation: from the cache,
// or through one keystore call shared by every concurrent caller.
func (s *Service) kekFor(ctx context.Context, ann []byte, keyID string) (*kek, error) {
	k := s.cachedKEK(ann)
	var a envelope.Annotation
	if k != nil {
		a.KeyID = k.rootKeyID // decoded from ann when k was made
	} else {
		var err error
		if a, err = envelope.DecodeAnnotation(ann); err != nil {
			return nil, err
		}
	}
	if a.KeyID != keyID {
		return nil, fmt.Errorf("%w: key_id does not match the wrapped KEK", errInvalidRequest)
	}
	if k != nil {
		s.cfg.Metrics.CacheHit()
		return k, nil
	}
	key := string(ann)
	if r, ok := s.negative.Get(key); ok {
		if s.cfg.Now().Before(r.until) {
			return nil, r.err
		}
		s.negative.Remove(key)
	}
	// The keystore is known down: answer now rather than wait out the
	// caller's deadline on a call that cannot succeed.
	if s.down.Load() {
		s.refuse()
		return nil, errCircuitOpen
	}
	s.cfg.Metrics.CacheMiss()
	if s.afterMiss != nil {
		s.afterMiss()
	}
	ch := s.group.DoChan(key, func() (any, error) {
		// A call for this KEK may have finished between our cache miss
		// and this flight: its result is in the cache, not in the group.
		if k, ok := s.cache.Peek(key); ok {
			return k, nil
		}
		if s.down.Load() {
			return nil, errCircuitOpen
		}
		// A hung keystore must not collect one goroutine and connection
		// per distinct KEK until the breaker opens.
		if s.inflight.Add(1) > int64(s.cfg.MaxUnwraps) {
			s.inflight.Add(-1)
			return nil, errOverloaded
		}
		defer s.inflight.Add(-1)
		// Detached from the first caller: others may be waiting on the
		// same KEK with longer deadlines. Each keystore call has its own
		// KeystoreTimeout.
		k, err := s.unwrapKEK(context.WithoutCancel(ctx), bytes.Clone(ann), a, time.Time{}, true)
		if lasting(err) {
			s.negative.Add(key, refusal{err: err, until: s.cfg.Now().Add(negativeTTL)})
		}
		return k, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			// Refused because the keystore is down: every root is (with
			// several, one down root and another refusing is not that).
			if errors.Is(r.Err, keystore.ErrUnavailable) && s.down.Load() {
				s.refuse()
			}
			return nil, r.Err
		}
		return r.Val.(*kek), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// cachedKEK returns the unwrapped local KEK for an annotation if it is in
// memory, or nil.
func (s *Service) cachedKEK(ann []byte) *kek {
	// Most Decrypts are of recent writes: try the current KEK first, with
	// neither the cache's lock nor a string copy of the annotation.
	if k := s.cur.Load(); k != nil && bytes.Equal(k.annotation, ann) {
		return k
	}
	if k, ok := s.cache.Get(string(ann)); ok {
		return k
	}
	return nil
}

// lasting reports whether the keystore's refusal will hold for a while:
// transient failures (unavailable, throttled, timeouts) are retried at once.
func lasting(err error) bool {
	return errors.Is(err, keystore.ErrKeyNotFound) || errors.Is(err, keystore.ErrKeyDisabled) || errors.Is(err, keystore.ErrInvalid)
}

// unwrapKEK asks the root keystores for a local KEK (unwrapAny) and caches
// it. a is ann decoded.
func (s *Service) unwrapKEK(ctx context.Context, ann []byte, a envelope.Annotation, created time.Time, breaker bool) (*kek, error) {
	key, _, err := s.unwrapAny(ctx, a, breaker)
	if err != nil {
		return nil, err
	}
	k, err := newKEK(key, ann, a.KeyID, created)
	clear(key)
	if err != nil {
		return nil, err
	}
	s.cache.Add(string(ann), k)
	s.cfg.Metrics.SetCacheSize(s.cache.Len())
	return k, nil
}

func newKEK(key, ann []byte, rootID string, created time.Time) (*kek, error) {
	a, err := envelope.NewAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("%w: keystore returned a local KEK of %d bytes", keystore.ErrInvalid, len(key))
	}
	sk, err := stateMACKey(key)
	if err != nil {
		return nil, fmt.Errorf("derive state file MAC key: %w", err)
	}
	return &kek{
		aead: a, annotation: ann, annotations: map[string][]byte{envelope.AnnotationKey: ann},
		rootKeyID: rootID, aad: envelope.AAD(rootID, ann), created: created, stateKey: sk,
	}, nil
}

// due says why k must be replaced, or "".
func (s *Service) due(k *kek) string {
	switch {
	case k.uses.Load() >= s.cfg.KEKMaxUses:
		return "max_uses"
	case s.cfg.Now().Sub(k.created) >= s.cfg.KEKMaxAge:
		return "max_age"
	}
	return ""
}

// mint makes, wraps and installs a new current local KEK. Callers hold mintMu.
func (s *Service) mint(ctx context.Context, reason string) (*kek, error) {
	k, err := s.newLocalKEK(ctx, reason)
	if err != nil {
		return nil, err
	}
	s.install(k, reason)
	s.saveState(k)
	return k, nil
}

// newLocalKEK makes and wraps a new local KEK without installing it.
// Callers hold mintMu.
func (s *Service) newLocalKEK(ctx context.Context, reason string) (*kek, error) {
	key := make([]byte, envelope.KEKSize)
	defer clear(key)
	if _, err := io.ReadFull(s.cfg.Rand, key); err != nil {
		return nil, fmt.Errorf("read random KEK: %w", err)
	}
	ann, keyID, wrapped, err := s.wrapAll(ctx, key)
	if err != nil {
		if !wrapped {
			err = fmt.Errorf("wrap new local KEK: %w", err)
			s.mintFailed(err, reason)
		}
		return nil, err
	}
	k, err := newKEK(key, ann, keyID, s.cfg.Now())
	if err != nil {
		return nil, err
	}
	s.renewFails = 0
	s.renewAfter.Store(0)
	return k, nil
}

func (s *Service) install(k *kek, reason string) {
	s.cur.Store(k)
	s.installed(k, reason)
}

// installed records that k just became the current KEK.
func (s *Service) installed(k *kek, reason string) {
	// A spare made under an earlier root version is of no use any more.
	if n := s.next.Load(); n != nil && n.rootKeyID != k.rootKeyID {
		s.next.CompareAndSwap(n, nil)
	}
	s.cache.Add(string(k.annotation), k)
	s.savedUses.Store(k.uses.Load())
	s.cfg.Metrics.SetCacheSize(s.cache.Len())
	s.cfg.Metrics.KEKGenerated(reason, k.created)
	s.cfg.Metrics.SetKEKUses(k.uses.Load())
	seen := s.rootSeen.Load()
	if seen == nil || seen.keyID != k.rootKeyID {
		seen = &rootSeen{keyID: k.rootKeyID, at: s.cfg.Now()}
		s.rootSeen.Store(seen)
	}
	s.cfg.Metrics.SetRootKey(s.backend, k.rootKeyID, seen.at)
	s.log.Info("new local KEK in use", "reason", reason, "root_key_id", k.rootKeyID, "created", k.created.UTC().Format(time.RFC3339))
}

// Check reads the root key_id, replaces the local KEK when the root key
// rotated or the KEK is past its bounds, probes the keystore while the
// breaker is open, re-checks the root versions of the cached KEKs every
// RevalidateInterval, and refreshes health. Run calls it every
// CheckInterval; it is exported for tests and tools.
func (s *Service) Check(ctx context.Context) {
	s.checkMu.Lock()
	defer s.checkMu.Unlock()
	err := s.check(ctx)
	for _, r := range s.roots {
		// With one root, a check that failed as unavailable anywhere
		// (its mint too) probes nothing; with several, a root whose own
		// key_id read did not fail so is probed.
		rerr := err
		if s.multi() {
			rerr = r.keyIDErr
		}
		if !r.down.Load() || errors.Is(rerr, keystore.ErrUnavailable) {
			continue
		}
		// A check can succeed without reaching the keystore (remote
		// backends cache their key_id): only a real call closes the
		// breaker.
		if perr := s.probe(ctx, r); perr != nil {
			err = cmp.Or(err, perr)
		} else {
			s.rootUp(r)
		}
	}
	now := s.cfg.Now()
	if err == nil {
		s.lastOK.Store(now.UnixNano())
		s.okStreak++
	} else {
		s.okStreak = 0
	}
	var revoked error
	if err == nil && now.Sub(s.lastRevalidate) >= s.cfg.RevalidateInterval {
		var complete bool
		revoked, complete = s.revalidate(ctx)
		s.lastRevalidate = now
		if !complete {
			// A version the keystore could not answer for (throttled,
			// say) is tried again after a quarter interval.
			s.lastRevalidate = now.Add(-s.cfg.RevalidateInterval * 3 / 4)
		}
	}
	h := s.healthNow(err, revoked, now)
	if err != nil {
		s.log.Warn("keystore check failed", "error", err, "healthy", h.ok)
	}
	s.health.Store(h)
	s.cfg.Metrics.SetHealth(h.ok, err == nil, time.Unix(0, s.lastOK.Load()))
	if cur := s.cur.Load(); cur != nil {
		uses := cur.uses.Load()
		s.cfg.Metrics.SetKEKUses(uses)
		if uses != s.savedUses.Load() {
			s.saveState(cur)
		}
	}
}

// healthNow is the rule docs/architecture.md#health states. Callers hold
// checkMu; err is this check's outcome, revoked why the current KEK was
// just dropped (or nil).
func (s *Service) healthNow(err, revoked error, now time.Time) *health {
	reason := ""
	last := time.Unix(0, s.lastOK.Load())
	switch {
	case s.cur.Load() == nil:
		if err == nil {
			err = revoked
		}
		reason = "no local KEK: keystore " + class(err)
	case err != nil && s.lastOK.Load() == 0:
		// A KEK but no check passed: adopted from the state file with a
		// root down.
		reason = "keystore " + class(err) + " since start-up"
	case err != nil && now.Sub(last) >= s.cfg.Grace:
		reason = "keystore " + class(err) + " since " + last.UTC().Format(time.RFC3339)
	case s.down.Load() && s.refused.Load() != 0:
		reason = refusedReason(class(err), s.downSince.Load())
	}
	switch {
	case reason != "":
		// Going not ok while the keystore is down (not at start-up)
		// holds Status down until the keystore has answered
		// recoveryChecks checks in a row: a flapping keystore cannot
		// flap the apiserver's readiness.
		if s.down.Load() && s.wasOK.Load() {
			s.held.Store(true)
		}
		return &health{reason: reason}
	case s.held.Load() && s.okStreak < recoveryChecks:
		return &health{reason: fmt.Sprintf("keystore recovering: %d of %d checks ok", s.okStreak, recoveryChecks)}
	}
	s.held.Store(false)
	s.wasOK.Store(true)
	return &health{ok: true, reason: "ok"}
}

func (s *Service) check(ctx context.Context) error {
	// With one root, its key_id read and the mint or adoption that
	// follows share one KeystoreTimeout, as they always have; with
	// several, each keystore call has its own.
	cctx := ctx
	if !s.multi() {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, s.cfg.KeystoreTimeout)
		defer cancel()
	}
	kid, err := s.readKeyID(cctx)
	if err != nil {
		err = fmt.Errorf("read root key_id: %w", err)
		if s.multi() && s.cur.Load() == nil {
			// Started with a root down: no KEK can be made, but the state
			// file's may be adopted through another root.
			s.mintMu.Lock()
			defer s.mintMu.Unlock()
			if s.cur.Load() == nil {
				s.adoptStateDegraded(cctx, err)
			}
		}
		return err
	}
	s.mintMu.Lock()
	defer s.mintMu.Unlock()
	cur := s.cur.Load()
	var reason string
	switch {
	case cur == nil:
		if s.adoptState(cctx, kid) {
			return nil
		}
		reason = "startup"
	case cur.rootKeyID != kid:
		reason = "root_rotation"
	default:
		reason = s.due(cur)
	}
	if reason == "" {
		return nil
	}
	if n := s.next.Swap(nil); n != nil && cur != nil && n.rootKeyID == kid && reason != "root_rotation" {
		n.created = s.cfg.Now() // its age counts from its first use
		s.cur.Store(n)
		s.installed(n, reason)
		s.saveState(n)
		return nil
	}
	_, err = s.mint(cctx, reason)
	return err
}

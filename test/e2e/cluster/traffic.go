package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/kms/envelope"
)

// TrafficOptions configures StartTraffic.
type TrafficOptions struct {
	// Namespace holds the Secrets; it must exist.
	Namespace string
	// Interval is the tick: every tick creates one Secret and reads one
	// back (default 500 ms).
	Interval time.Duration
	// ListEvery makes every ListEvery-th tick also LIST the namespace
	// (default 10).
	ListEvery int
	// Timeout bounds each request (default 30 s).
	Timeout time.Duration
}

// OpCounts counts one phase's requests by kind, and those that failed.
type OpCounts struct {
	Creates, Gets, Lists int
	// Failed counts requests that returned an error or read back a value
	// other than the one written.
	Failed int
	// LastCreate is when the phase's last successful create returned.
	LastCreate time.Time
}

// Total is the number of requests.
func (c OpCounts) Total() int { return c.Creates + c.Gets + c.Lists }

// TrafficFailure is one failed request.
type TrafficFailure struct {
	At    time.Time
	Phase string
	Op    string
	Err   string
}

// Traffic is a steady stream of Secret creates, gets and lists through one
// kube-apiserver, from one goroutine, sorted into named phases. Every
// value read is compared byte for byte with the one written. A Secret
// counts as written only when its create succeeded.
type Traffic struct {
	a    *APIServer
	opts TrafficOptions

	gate sync.RWMutex // held for reading around each request; Pause takes it
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	phase    string
	order    []string
	counts   map[string]*OpCounts
	failures []TrafficFailure
	want     map[string][]byte
	names    []string
}

// maxFailuresKept bounds the failures kept for the report; all are
// counted.
const maxFailuresKept = 100

// StartTraffic starts the stream in phase, until Stop.
func StartTraffic(a *APIServer, phase string, opts TrafficOptions) *Traffic {
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	if opts.ListEvery <= 0 {
		opts.ListEvery = 10
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	tr := &Traffic{
		a: a, opts: opts, stop: make(chan struct{}), done: make(chan struct{}),
		counts: map[string]*OpCounts{}, want: map[string][]byte{},
	}
	tr.SetPhase(phase)
	go tr.run()
	return tr
}

// SetPhase makes the requests from now on count in phase.
func (tr *Traffic) SetPhase(phase string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.phase = phase
	if tr.counts[phase] == nil {
		tr.counts[phase] = &OpCounts{}
		tr.order = append(tr.order, phase)
	}
}

// Pause waits for the request in flight and holds the next until Resume:
// around an apiserver restart, whose refused connections are not what is
// measured.
func (tr *Traffic) Pause() { tr.gate.Lock() }

// Resume lets requests go again after Pause.
func (tr *Traffic) Resume() { tr.gate.Unlock() }

// Stop ends the stream and waits for it.
func (tr *Traffic) Stop() {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	<-tr.done
}

// Phases returns the phases in the order they began.
func (tr *Traffic) Phases() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.order)
}

// Counts returns phase's counts.
func (tr *Traffic) Counts(phase string) OpCounts {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if c := tr.counts[phase]; c != nil {
		return *c
	}
	return OpCounts{}
}

// Total sums every phase's counts.
func (tr *Traffic) Total() OpCounts {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var t OpCounts
	for _, c := range tr.counts {
		t.Creates += c.Creates
		t.Gets += c.Gets
		t.Lists += c.Lists
		t.Failed += c.Failed
		if c.LastCreate.After(t.LastCreate) {
			t.LastCreate = c.LastCreate
		}
	}
	return t
}

// Failures returns the first failures (at most 100).
func (tr *Traffic) Failures() []TrafficFailure {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.failures)
}

// Written returns every Secret created so far: name → the value of its one
// data key, "v".
func (tr *Traffic) Written() map[string][]byte {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	m := make(map[string][]byte, len(tr.want))
	for k, v := range tr.want {
		m[k] = v
	}
	return m
}

func (tr *Traffic) run() {
	defer close(tr.done)
	t := time.NewTicker(tr.opts.Interval)
	defer t.Stop()
	for tick := 1; ; tick++ {
		select {
		case <-tr.stop:
			return
		case <-t.C:
		}
		tr.gate.RLock()
		tr.create(tick)
		tr.get()
		if tick%tr.opts.ListEvery == 0 {
			tr.list()
		}
		tr.gate.RUnlock()
	}
}

// newValue is a random value that cannot appear in a stored ciphertext by
// chance: 16 printable bytes, then 16 random bytes (not UTF-8, mostly).
func newValue() []byte {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return append([]byte(hex.EncodeToString(b[:8])), b[8:]...)
}

func (tr *Traffic) record(op string, err error, ok func(*OpCounts)) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	c := tr.counts[tr.phase]
	ok(c)
	if err != nil {
		c.Failed++
		if len(tr.failures) < maxFailuresKept {
			tr.failures = append(tr.failures, TrafficFailure{At: time.Now(), Phase: tr.phase, Op: op, Err: err.Error()})
		}
	}
}

func (tr *Traffic) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), tr.opts.Timeout)
}

func (tr *Traffic) create(tick int) {
	ns := tr.opts.Namespace
	name := fmt.Sprintf("t-%06d-%s", tick, hex.EncodeToString(newValue()[:4]))
	v := newValue()
	ctx, cancel := tr.ctx()
	defer cancel()
	_, err := tr.a.Client.CoreV1().Secrets(ns).Create(ctx,
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string][]byte{"v": v}},
		metav1.CreateOptions{})
	tr.record("create", err, func(c *OpCounts) {
		c.Creates++
		if err == nil {
			c.LastCreate = time.Now()
			tr.want[name] = v
			tr.names = append(tr.names, name)
		}
	})
}

func (tr *Traffic) get() {
	tr.mu.Lock()
	if len(tr.names) == 0 {
		tr.mu.Unlock()
		return
	}
	name := tr.names[mrand.IntN(len(tr.names))]
	want := tr.want[name]
	tr.mu.Unlock()
	ctx, cancel := tr.ctx()
	defer cancel()
	s, err := tr.a.Client.CoreV1().Secrets(tr.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil && !bytes.Equal(s.Data["v"], want) {
		err = fmt.Errorf("secret %s read back %d bytes that differ from the %d written", name, len(s.Data["v"]), len(want))
	}
	tr.record("get", err, func(c *OpCounts) { c.Gets++ })
}

func (tr *Traffic) list() {
	want := tr.Written()
	ctx, cancel := tr.ctx()
	defer cancel()
	l, err := tr.a.Client.CoreV1().Secrets(tr.opts.Namespace).List(ctx, metav1.ListOptions{})
	if err == nil {
		err = compareListed(l.Items, want)
	}
	tr.record("list", err, func(c *OpCounts) { c.Lists++ })
}

// compareListed checks that every Secret in want is among items with its
// value. Items not in want are ignored (a create whose answer was lost may
// still have been stored).
func compareListed(items []corev1.Secret, want map[string][]byte) error {
	seen := 0
	var bad []string
	for _, s := range items {
		w, ok := want[s.Name]
		if !ok {
			continue
		}
		seen++
		if !bytes.Equal(s.Data["v"], w) {
			bad = append(bad, s.Name)
		}
	}
	if seen != len(want) || len(bad) > 0 {
		return fmt.Errorf("list: %d of %d written Secrets listed, %d with another value (%s)", seen, len(want), len(bad), firstFew(bad))
	}
	return nil
}

func firstFew(s []string) string {
	sort.Strings(s)
	if len(s) > 5 {
		return strings.Join(s[:5], ", ") + ", …"
	}
	return strings.Join(s, ", ")
}

// SecretCheck is what CheckSecrets found.
type SecretCheck struct {
	// Listed and Read count written Secrets that a paged LIST and a GET
	// of each returned with the value written; Stored counts those etcd
	// holds sealed by the KMS v2 provider.
	Listed, Read, Stored int
	// Problems names each Secret that is missing anywhere, reads back
	// another value, or is not sealed as it must be (at most 20 kept).
	Problems []string
	// Failures is the number of problems found (all of them).
	Failures int
	// KeyIDs counts the stored values by key_id; LocalKEKs counts the
	// distinct local KEKs they are sealed under.
	KeyIDs    map[string]int
	LocalKEKs int
}

// CheckSecrets checks that every Secret in want (name → value of data key
// "v") in namespace ns is intact: a paged LIST and a GET of each through a
// return the value byte for byte, and etcd holds each as a KMS v2 value of
// provider, sealed with an HKDF seed under keywarden's local KEK, whose
// wrapping key is the value's key_id, with neither the value nor its
// base64 in clear.
func CheckSecrets(ctx context.Context, a *APIServer, e *Etcd, provider, ns string, want map[string][]byte) (SecretCheck, error) {
	r := SecretCheck{KeyIDs: map[string]int{}}
	problem := func(format string, args ...any) {
		r.Failures++
		if len(r.Problems) < 20 {
			r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
		}
	}
	listed := map[string][]byte{}
	opts := metav1.ListOptions{Limit: 500}
	for {
		l, err := a.Client.CoreV1().Secrets(ns).List(ctx, opts)
		if err != nil {
			return r, fmt.Errorf("list %s: %w", ns, err)
		}
		for _, s := range l.Items {
			listed[s.Name] = s.Data["v"]
		}
		if opts.Continue = l.Continue; opts.Continue == "" {
			break
		}
	}
	kvs, err := e.List(ctx, "/registry/secrets/"+ns+"/")
	if err != nil {
		return r, err
	}
	raw := make(map[string][]byte, len(kvs))
	for _, kv := range kvs {
		raw[strings.TrimPrefix(kv.Key, "/registry/secrets/"+ns+"/")] = kv.Value
	}
	keks := map[string]bool{}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		v := want[name]
		if got, ok := listed[name]; !ok {
			problem("%s: not listed", name)
		} else if !bytes.Equal(got, v) {
			problem("%s: listed with another value", name)
		} else {
			r.Listed++
		}
		s, err := a.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil:
			problem("%s: get: %v", name, err)
		case !bytes.Equal(s.Data["v"], v):
			problem("%s: read back another value", name)
		default:
			r.Read++
		}
		sv, ok := raw[name]
		if !ok {
			problem("%s: not in etcd", name)
			continue
		}
		if err := checkSealed(sv, provider, v); err != nil {
			problem("%s: %v", name, err)
			continue
		}
		obj, _ := ParseKMSv2(sv, provider)
		kek, _, _ := obj.KeywardenKEK()
		keks[kek.ID] = true
		r.KeyIDs[obj.KeyID]++
		r.Stored++
	}
	r.LocalKEKs = len(keks)
	return r, nil
}

// checkSealed is the stored-value check of the e2e suite's assertSealed.
func checkSealed(raw []byte, provider string, plaintext []byte) error {
	obj, err := ParseKMSv2(raw, provider)
	if err != nil {
		return err
	}
	if bytes.Contains(raw, plaintext) || bytes.Contains(raw, []byte(base64.StdEncoding.EncodeToString(plaintext))) {
		return fmt.Errorf("stored value contains the plaintext")
	}
	if obj.DEKSourceType != stored.HKDFSHA256XNonce {
		return fmt.Errorf("encryptedDEKSourceType %d, want %d (HKDF-SHA256 seed)", obj.DEKSourceType, stored.HKDFSHA256XNonce)
	}
	kek, ok, err := obj.KeywardenKEK()
	switch {
	case !ok || err != nil || len(obj.Annotations) != 1:
		return fmt.Errorf("annotations are not exactly %s (%v)", envelope.AnnotationKey, err)
	case kek.RootKeyID != obj.KeyID:
		return fmt.Errorf("local KEK wrapped under %q but keyID is %q", kek.RootKeyID, obj.KeyID)
	}
	return nil
}

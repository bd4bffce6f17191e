//go:build e2e

package outage

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/test/e2e/cluster"
)

const (
	// grace is keywarden's --keystore-grace: short, so the unhealthy
	// transition happens well inside the outage.
	grace = 60 * time.Second
	// minOutage leaves room for the transition, an apiserver restart and
	// writes after it, all inside the outage.
	minOutage = 4 * time.Minute
	// sampleEvery is how often readiness is sampled (about what a load
	// balancer's probe does).
	sampleEvery = 2 * time.Second
)

// TestKeystoreOutage freezes keywarden's keystore (a Vault dev server of
// its own, SIGSTOP) for KEYWARDEN_E2E_OUTAGE (default 10m) under steady
// Secret create/get/list traffic through the real kube-apiserver, with
// keywarden on --keystore-grace 60s. Halfway through, kube-apiserver is
// restarted, so keywarden must answer the new apiserver's Encrypt (a new
// seed) and Decrypts (filling its watch cache) with the local KEK it holds,
// without the keystore. Then Vault is resumed (SIGCONT).
//
// It asserts: no request fails in any phase; keywarden's /readyz and the
// apiserver's /readyz/kms-providers stay healthy for the grace, turn
// unhealthy after it and stay so (no flapping) until the keystore is back,
// then recover and stay healthy; the restarted apiserver is ready except
// for kms-providers; writes go on more than the apiserver's 3-minute
// write coast after kms-providers failed (when the outage is long enough
// to show it); keywarden makes no keystore unwrap and fails no Decrypt
// during the outage; and every Secret created before, during and after
// reads back byte for byte (GET and paged LIST) and is stored in etcd as a
// KMS v2 value under the root key_id, without its plaintext.
func TestKeystoreOutage(t *testing.T) {
	outage := cluster.EnvDuration(t, "KEYWARDEN_E2E_OUTAGE", 10*time.Minute)
	if outage < minOutage {
		t.Fatalf("KEYWARDEN_E2E_OUTAGE=%s: want at least %s (grace %s, an apiserver restart, writes after it)", outage, minOutage, grace)
	}
	begin := time.Now()
	tools := cluster.MustTools(t)
	bin, err := cluster.VaultBin()
	if err != nil {
		requireOrSkip(t, "KEYWARDEN_REQUIRE_VAULT", err.Error())
	}
	v := cluster.StartVault(t, tools, bin)
	args := []string{"--keystore-grace", grace.String()}
	// KEYWARDEN_E2E_OUTAGE_KEK_MAX_AGE (say 90s, under half the outage)
	// puts the local KEK past its age bound before the apiserver restart,
	// so the restarted apiserver's Encrypt meets a KEK due for renewal
	// while the keystore hangs (issue 13, defect 3).
	if s := os.Getenv("KEYWARDEN_E2E_OUTAGE_KEK_MAX_AGE"); s != "" {
		d := cluster.EnvDuration(t, "KEYWARDEN_E2E_OUTAGE_KEK_MAX_AGE", 0)
		if d >= outage/2 {
			t.Fatalf("KEYWARDEN_E2E_OUTAGE_KEK_MAX_AGE=%s: want under half the outage (%s), so the KEK is past it at the restart", s, outage/2)
		}
		args = append(args, "--kek-max-age", d.String())
	}
	c := cluster.Start(t, cluster.Options{
		Keyset:    v.Keyset,
		Keywarden: cluster.KeywardenOptions{ExtraArgs: args},
	})
	a, kw := c.APIServer, c.Keywarden
	ctx, cancel := context.WithTimeout(context.Background(), outage+15*time.Minute)
	defer cancel()

	st, err := kw.Status(ctx)
	if err != nil || st.Healthz != "ok" || st.KeyID == "" {
		t.Fatalf("keywarden Status = %+v, %v; want healthy with a key_id", st, err)
	}
	keyID := st.KeyID
	const ns = "outage"
	if _, err := a.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	tr := cluster.StartTraffic(a, "before", cluster.TrafficOptions{Namespace: ns, Interval: 500 * time.Millisecond, ListEvery: 10})
	defer tr.Stop()
	time.Sleep(30 * time.Second)

	tl := &timeline{t: t, a: a, kw: kw}
	m0 := metrics(t, ctx, kw)
	tr.SetPhase("outage")
	if err := v.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	tl.origin = frozen
	t.Logf("keystore frozen (SIGSTOP to vault, pid %d) for %s", v.Pid(), outage)

	// Until halfway, and at least until kms-providers has failed.
	tl.sampleUntil(ctx, frozen.Add(outage/2))
	if tl.firstFail(apiCheck) < 0 {
		tl.sampleUntil(ctx, frozen.Add(grace+90*time.Second), func() bool { return tl.firstFail(apiCheck) >= 0 })
	}
	if tl.firstFail(apiCheck) < 0 {
		t.Fatalf("/readyz/kms-providers still healthy %s into the outage (grace %s)", time.Since(frozen).Round(time.Second), grace)
	}
	if st, err := kw.Status(ctx); err != nil || st.Healthz == "ok" || st.KeyID != keyID {
		t.Errorf("keywarden Status during the outage = %+v, %v; want unhealthy, key_id still %q", st, err, keyID)
	} else {
		t.Logf("keywarden Status during the outage: healthz %q, key_id unchanged", st.Healthz)
	}

	// kube-apiserver restarted inside the outage: a new seed (Encrypt) and
	// its watch cache filled (Decrypts), all on the local KEK in hand.
	tr.Pause()
	restart := time.Now()
	a.Stop()
	if err := a.StartNoWait(); err != nil {
		tr.Resume()
		t.Fatal(err)
	}
	failing, err := a.WaitServing(ctx, 2*time.Minute, "kms-providers")
	tr.SetPhase("outage, after apiserver restart")
	tr.Resume()
	if err != nil {
		t.Fatalf("kube-apiserver restarted during the outage: %v", err)
	}
	if failing == "" {
		t.Errorf("restarted kube-apiserver: /readyz healthy while keywarden reports the keystore down; want kms-providers failing")
	}
	t.Logf("kube-apiserver restarted %s into the outage; serving in %s with only kms-providers failing (%s)",
		restart.Sub(frozen).Round(time.Second), time.Since(restart).Round(100*time.Millisecond), failing)
	tl.mark("apiserver restarted")

	tl.sampleUntil(ctx, frozen.Add(outage))
	m1 := metrics(t, ctx, kw)
	if err := v.Thaw(); err != nil {
		t.Fatal(err)
	}
	thawed := time.Now()
	tr.SetPhase("after")
	tl.mark("keystore resumed (SIGCONT)")
	t.Logf("keystore resumed after %s", thawed.Sub(frozen).Round(time.Second))
	tl.sampleUntil(ctx, thawed.Add(90*time.Second), func() bool { return tl.recovered(thawed) })
	tl.sampleUntil(ctx, time.Now().Add(30*time.Second))
	tr.Stop()

	// Readiness: the timeline, then what must hold of it.
	t.Logf("readiness (t = since the freeze; sampled every %s):\n%s", sampleEvery, tl.transitions())
	tl.assert(grace, thawed)

	// Requests.
	var total cluster.OpCounts
	for _, p := range tr.Phases() {
		n := tr.Counts(p)
		total.Creates += n.Creates
		total.Gets += n.Gets
		total.Lists += n.Lists
		total.Failed += n.Failed
		t.Logf("phase %-32q %4d creates, %4d gets, %3d lists: %d failed", p, n.Creates, n.Gets, n.Lists, n.Failed)
	}
	for _, f := range tr.Failures() {
		t.Errorf("failed request (%s, %s, t=%s): %s", f.Phase, f.Op, f.At.Sub(frozen).Round(time.Second), f.Err)
	}
	if total.Failed != 0 {
		t.Errorf("%d of %d requests failed; want none while keywarden holds its local KEK", total.Failed, total.Total())
	}
	for _, p := range tr.Phases() {
		if n := tr.Counts(p); n.Creates == 0 || n.Gets == 0 {
			t.Errorf("phase %q made %d creates and %d gets: the traffic did not run", p, n.Creates, n.Gets)
		}
	}

	// The apiserver's write coast: kube-apiserver extends its seed's write
	// validity on every Status with the same key_id, healthy or not
	// (encryptionconfig rotateDEKOnKeyIDChange), so writes must not stop
	// 3 minutes (kmsv2PluginWriteDEKSourceMaxTTL) after kms-providers
	// failed.
	const coast = 3 * time.Minute
	apiFail := frozen.Add(tl.firstFail(apiCheck))
	lastOutageWrite := tr.Counts("outage, after apiserver restart").LastCreate
	if thawed.Sub(apiFail) > coast+30*time.Second {
		if !lastOutageWrite.After(apiFail.Add(coast)) {
			t.Errorf("last write during the outage %s after kms-providers failed; want writes beyond the apiserver's %s coast",
				lastOutageWrite.Sub(apiFail).Round(time.Second), coast)
		} else {
			t.Logf("writes went on %s after kms-providers failed (beyond the apiserver's %s write coast)",
				lastOutageWrite.Sub(apiFail).Round(time.Second), coast)
		}
	} else {
		t.Logf("outage too short after kms-providers failed (%s) to show writes beyond the %s coast", thawed.Sub(apiFail).Round(time.Second), coast)
	}

	// keywarden during the outage: the restarted apiserver's Encrypt and
	// Decrypts answered, none failed, and no keystore unwrap tried.
	d0, d1 := m0.Counts(), m1.Counts()
	if d1.EncryptOK-d0.EncryptOK < 1 || d1.DecryptOK-d0.DecryptOK < 1 || d1.DecryptFailed != d0.DecryptFailed || d1.Unwraps != d0.Unwraps {
		t.Errorf("keywarden during the outage: %+v → %+v; want at least one Encrypt and one Decrypt answered (the restarted apiserver), no Decrypt failed, no keystore unwrap",
			d0, d1)
	}
	t.Logf("keywarden during the outage: %v Encrypts, %v Decrypts answered, %v failed, %v keystore unwraps, %v KEK cache hits",
		d1.EncryptOK-d0.EncryptOK, d1.DecryptOK-d0.DecryptOK, d1.DecryptFailed-d0.DecryptFailed, d1.Unwraps-d0.Unwraps, d1.CacheHits-d0.CacheHits)
	if end := metrics(t, ctx, kw).Counts(); end.DecryptFailed != 0 {
		t.Errorf("keywarden failed %v Decrypts in the test", end.DecryptFailed)
	}

	// No object lost.
	want := tr.Written()
	chk, err := cluster.CheckSecrets(ctx, a, c.Etcd, c.Provider, ns, want)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range chk.Problems {
		t.Error(p)
	}
	if chk.Failures != 0 || chk.Listed != len(want) || chk.Read != len(want) || chk.Stored != len(want) {
		t.Errorf("of %d Secrets written: %d listed, %d read back, %d stored sealed; %d problems", len(want), chk.Listed, chk.Read, chk.Stored, chk.Failures)
	}
	if chk.KeyIDs[keyID] != len(want) {
		t.Errorf("stored key_ids %v, want all %d under %s", chk.KeyIDs, len(want), keyID)
	}
	t.Logf("%d Secrets written (%d requests in all, %d failed) all read back byte for byte and are stored sealed under %s (%d local KEK); test took %s",
		len(want), total.Total(), total.Failed, keyID, chk.LocalKEKs, time.Since(begin).Round(time.Second))
}

func metrics(t *testing.T, ctx context.Context, kw *cluster.Keywarden) cluster.Metrics {
	t.Helper()
	m, err := kw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The two readiness checks sampled.
const (
	apiCheck = iota // kube-apiserver /readyz/kms-providers
	kwCheck         // keywarden /readyz (its KMS Status health)
)

var checkName = [2]string{"apiserver /readyz/kms-providers", "keywarden /readyz"}

type sample struct {
	at   time.Duration // since origin
	ok   [2]bool
	why  [2]string
	note string // an event marked at this time
}

// timeline samples both readiness checks.
type timeline struct {
	t       *testing.T
	a       *cluster.APIServer
	kw      *cluster.Keywarden
	origin  time.Time
	samples []sample
}

func (tl *timeline) probe(ctx context.Context) {
	s := sample{at: time.Since(tl.origin)}
	code, body, err := tl.a.Readyz(ctx, "kms-providers")
	switch {
	case err != nil:
		s.why[apiCheck] = err.Error()
	case code != http.StatusOK:
		s.why[apiCheck] = fmt.Sprintf("HTTP %d: %s", code, cluster.FailingChecks(body))
	default:
		s.ok[apiCheck] = true
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := tl.kw.Ready(pctx); err != nil {
		s.why[kwCheck] = err.Error()
	} else {
		s.ok[kwCheck] = true
	}
	tl.samples = append(tl.samples, s)
}

// sampleUntil probes every sampleEvery until deadline, or until done (if
// given) returns true.
func (tl *timeline) sampleUntil(ctx context.Context, deadline time.Time, done ...func() bool) {
	for time.Now().Before(deadline) && ctx.Err() == nil {
		tl.probe(ctx)
		if len(done) > 0 && done[0]() {
			return
		}
		time.Sleep(min(sampleEvery, time.Until(deadline)))
	}
}

func (tl *timeline) mark(note string) {
	tl.samples = append(tl.samples, sample{at: time.Since(tl.origin), note: note})
}

// firstFail is the time of the first failed sample of check, or -1.
func (tl *timeline) firstFail(check int) time.Duration {
	for _, s := range tl.samples {
		if s.note == "" && !s.ok[check] {
			return s.at
		}
	}
	return -1
}

// recovered reports whether the last sample, taken after since, has both
// checks healthy.
func (tl *timeline) recovered(since time.Time) bool {
	s := tl.samples[len(tl.samples)-1]
	return s.note == "" && tl.origin.Add(s.at).After(since) && s.ok[apiCheck] && s.ok[kwCheck]
}

// transitions renders the timeline as its changes.
func (tl *timeline) transitions() string {
	var b strings.Builder
	prev := [2]int{-1, -1} // unknown
	for _, s := range tl.samples {
		if s.note != "" {
			fmt.Fprintf(&b, "  t=%-6s %s\n", s.at.Round(time.Second), s.note)
			continue
		}
		for c := range 2 {
			st := 0
			if s.ok[c] {
				st = 1
			}
			if st == prev[c] {
				continue
			}
			prev[c] = st
			if s.ok[c] {
				fmt.Fprintf(&b, "  t=%-6s %s: healthy\n", s.at.Round(time.Second), checkName[c])
			} else {
				fmt.Fprintf(&b, "  t=%-6s %s: failing (%s)\n", s.at.Round(time.Second), checkName[c], s.why[c])
			}
		}
	}
	return b.String()
}

// assert checks the readiness timeline: each check healthy until at least
// the grace, failing from then on without a healthy sample until the
// keystore was resumed, healthy again soon after, and healthy to the end.
func (tl *timeline) assert(grace time.Duration, thawed time.Time) {
	t := tl.t
	thaw := thawed.Sub(tl.origin)
	// The grace counts from keywarden's last successful check, at most
	// about a second before the freeze.
	limits := [2]struct{ fail, recover time.Duration }{
		// kube-apiserver caches a healthy Status for 20 s and polls every
		// 10 s while unhealthy.
		apiCheck: {fail: grace + 60*time.Second, recover: 60 * time.Second},
		// keywarden's check against a hung keystore returns after
		// --keystore-timeout (10 s).
		kwCheck: {fail: grace + 30*time.Second, recover: 30 * time.Second},
	}
	for c := range 2 {
		name := checkName[c]
		fail := tl.firstFail(c)
		switch {
		case fail < 0:
			t.Errorf("%s never failed during a %s outage (grace %s)", name, thaw.Round(time.Second), grace)
			continue
		case fail < grace-5*time.Second:
			t.Errorf("%s failed %s into the outage, before the %s grace", name, fail.Round(time.Second), grace)
		case fail > limits[c].fail:
			t.Errorf("%s failed only %s into the outage; want within %s", name, fail.Round(time.Second), limits[c].fail)
		}
		var back time.Duration = -1
		for _, s := range tl.samples {
			switch {
			case s.note != "" || s.at <= fail:
			case s.at < thaw && s.ok[c]:
				t.Errorf("%s healthy again at t=%s during the outage (failed at t=%s): flapping", name, s.at.Round(time.Second), fail.Round(time.Second))
			case s.at >= thaw && s.ok[c] && back < 0:
				back = s.at
			case s.at >= thaw && !s.ok[c] && back >= 0:
				t.Errorf("%s failing again at t=%s after it recovered at t=%s: %s", name, s.at.Round(time.Second), back.Round(time.Second), s.why[c])
			}
		}
		switch {
		case back < 0:
			t.Errorf("%s did not recover after the keystore came back", name)
		case back-thaw > limits[c].recover:
			t.Errorf("%s recovered %s after the keystore came back; want within %s", name, (back - thaw).Round(time.Second), limits[c].recover)
		default:
			t.Logf("%s: failed %s after the freeze (grace %s), recovered %s after the keystore came back",
				name, fail.Round(time.Second), grace, (back - thaw).Round(time.Second))
		}
	}
}

// requireOrSkip skips t with why, or fails it if env is set (CI sets
// KEYWARDEN_REQUIRE_VAULT).
func requireOrSkip(t *testing.T, env, why string) {
	t.Helper()
	if os.Getenv(env) != "" {
		t.Fatalf("%s is set, but %s", env, why)
	}
	t.Skipf("%s (set %s=1 to make this a failure)", why, env)
}

//go:build e2e

package soak

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/bench"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// grace is keywarden's --keystore-grace: shorter than a down phase, so
// every outage turns keywarden (and kms-providers) unhealthy for a while.
const grace = 60 * time.Second

// The flatness rules (bench.FlatRule): last-quarter mean at most the
// second-quarter mean plus 10 %, plus a small absolute slack for series
// that are small integers.
var rules = map[string]bench.FlatRule{
	"rss":        {Rel: 0.10, Abs: 1024}, // KiB: 10 % + 1 MiB
	"goroutines": {Rel: 0.10, Abs: 5},
	"fds":        {Rel: 0.10, Abs: 3},
}

// sample is one row of samples.csv.
type sample struct {
	T          float64 // seconds since the start
	RSSKiB     int64
	AnonKiB    int64
	Goroutines int // go_goroutines from keywarden's /metrics
	FDs        int // entries of /proc/PID/fd
	MetricFDs  int // process_open_fds from /metrics (includes the scrape's own)
	KeystoreUp bool
	KMSReady   int // kube-apiserver /readyz/kms-providers: 1 ok, 0 failing, -1 no answer
	KWReady    bool
	Creates    int // Secrets created so far
	Failed     int // failed requests so far
}

type interval struct {
	Start float64 `json:"start_s"`
	End   float64 `json:"end_s"`
}

type restart struct {
	At         float64 `json:"at_s"`
	KeystoreUp bool    `json:"keystore_up"`
	ServingS   float64 `json:"serving_after_s"`
	Failing    string  `json:"readyz_failing,omitempty"`
}

type summary struct {
	Meta   bench.Meta `json:"meta"`
	Config struct {
		Duration     string `json:"duration"`
		Up           string `json:"keystore_up"`
		Down         string `json:"keystore_down"`
		Sample       string `json:"sample_every"`
		RestartEvery string `json:"apiserver_restart_every"`
		Grace        string `json:"keystore_grace"`
		Traffic      string `json:"traffic"`
	} `json:"config"`
	DurationS float64                     `json:"duration_s"`
	Outages   []interval                  `json:"keystore_down"`
	Restarts  []restart                   `json:"apiserver_restarts"`
	Requests  map[string]cluster.OpCounts `json:"requests"`
	Failures  []cluster.TrafficFailure    `json:"failures"`
	Secrets   struct {
		Written   int            `json:"written"`
		Listed    int            `json:"listed"`
		Read      int            `json:"read_back"`
		Stored    int            `json:"stored_sealed"`
		Problems  []string       `json:"problems"`
		KeyIDs    map[string]int `json:"key_ids"`
		LocalKEKs int            `json:"local_keks"`
	} `json:"secrets"`
	Keywarden cluster.KMSCounts `json:"keywarden"`
	Readiness struct {
		// Samples by keystore state and kms-providers answer.
		UpReady, UpFailing, DownReady, DownFailing, NoAnswer int
	} `json:"kms_providers_samples"`
	Flatness []bench.Flatness `json:"flatness"`
	Plots    []string         `json:"plots"`
}

// TestSoak runs kube-apiserver traffic against keywarden for
// KEYWARDEN_SOAK_DURATION (default 1h) while its keystore, a Vault dev
// server, flaps: up KEYWARDEN_SOAK_UP (3m), frozen with SIGSTOP
// KEYWARDEN_SOAK_DOWN (2m), and so on; kube-apiserver restarts every
// KEYWARDEN_SOAK_RESTART (9m), so that keywarden answers Encrypt and a
// burst of Decrypts in both keystore states. Every KEYWARDEN_SOAK_SAMPLE
// (5s) it samples keywarden's VmRSS, goroutines and open file descriptors.
// It writes samples.csv, summary.json and plots into $KWBENCH_OUT
// (default bench/results/<UTC date>-soak), and fails if a request failed,
// a Secret was lost, or a series is not flat by its rule (see rules).
func TestSoak(t *testing.T) {
	dur := cluster.EnvDuration(t, "KEYWARDEN_SOAK_DURATION", time.Hour)
	up := cluster.EnvDuration(t, "KEYWARDEN_SOAK_UP", 3*time.Minute)
	down := cluster.EnvDuration(t, "KEYWARDEN_SOAK_DOWN", 2*time.Minute)
	every := cluster.EnvDuration(t, "KEYWARDEN_SOAK_SAMPLE", 5*time.Second)
	restartEvery := cluster.EnvDuration(t, "KEYWARDEN_SOAK_RESTART", 9*time.Minute)
	const trafficEvery, listEvery = time.Second, 30
	out := outDir(t)
	tools := cluster.MustTools(t)
	bin, err := cluster.VaultBin()
	if err != nil {
		t.Fatal(err)
	}
	v := cluster.StartVault(t, tools, bin)
	c := cluster.Start(t, cluster.Options{
		Keyset:    v.Keyset,
		Keywarden: cluster.KeywardenOptions{ExtraArgs: []string{"--keystore-grace", grace.String()}},
	})
	a, kw := c.APIServer, c.Keywarden
	ctx, cancel := context.WithTimeout(context.Background(), dur+20*time.Minute)
	defer cancel()
	const ns = "soak"
	if _, err := a.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := kw.Status(ctx)
	if err != nil || st.Healthz != "ok" {
		t.Fatalf("keywarden Status = %+v, %v", st, err)
	}

	start := time.Now()
	var s summary
	s.Meta = bench.DefaultMeta(start)
	s.Meta.Command = "make soak"
	s.Config.Duration, s.Config.Up, s.Config.Down = dur.String(), up.String(), down.String()
	s.Config.Sample, s.Config.RestartEvery, s.Config.Grace = every.String(), restartEvery.String(), grace.String()
	s.Config.Traffic = fmt.Sprintf("one goroutine: a create and a get every %s, a LIST of the namespace every %d ticks", trafficEvery, listEvery)
	since := func() float64 { return time.Since(start).Seconds() }

	tr := cluster.StartTraffic(a, "keystore up", cluster.TrafficOptions{Namespace: ns, Interval: trafficEvery, ListEvery: listEvery})
	defer tr.Stop()
	var keystoreUp atomic.Bool
	keystoreUp.Store(true)

	// The sampler.
	var (
		mu      sync.Mutex
		samples []sample
	)
	pid := kw.Pid()
	stopSampler := make(chan struct{})
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			smp := sample{T: since(), KeystoreUp: keystoreUp.Load(), KMSReady: -1}
			if m, err := bench.ReadMemory(pid); err == nil {
				smp.RSSKiB, smp.AnonKiB = m.RSS, m.Anon
			}
			if ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd"); err == nil {
				smp.FDs = len(ents)
			}
			sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
			if m, err := kw.Metrics(sctx); err == nil {
				smp.Goroutines = int(m.Sum("go_goroutines"))
				smp.MetricFDs = int(m.Sum("process_open_fds"))
			}
			smp.KWReady = kw.Ready(sctx) == nil
			if code, _, err := a.Readyz(sctx, "kms-providers"); err == nil {
				smp.KMSReady = 0
				if code == http.StatusOK {
					smp.KMSReady = 1
				}
			}
			scancel()
			tot := tr.Total()
			smp.Creates, smp.Failed = tot.Creates, tot.Failed
			mu.Lock()
			samples = append(samples, smp)
			mu.Unlock()
			select {
			case <-stopSampler:
				return
			case <-tick.C:
			}
		}
	}()

	// The schedule: keystore flips and apiserver restarts until the end.
	end := start.Add(dur)
	nextFlip, nextRestart := start.Add(up), start.Add(restartEvery)
	var outageStart float64
	for {
		time.Sleep(time.Until(earliest(nextFlip, nextRestart, end)))
		now := time.Now()
		if !now.Before(end) {
			break
		}
		if !now.Before(nextFlip) {
			if keystoreUp.Load() {
				if err := v.Freeze(); err != nil {
					t.Fatal(err)
				}
				keystoreUp.Store(false)
				outageStart = since()
				tr.SetPhase("keystore down")
				nextFlip = nextFlip.Add(down)
				t.Logf("t=%s keystore frozen", time.Since(start).Round(time.Second))
			} else {
				if err := v.Thaw(); err != nil {
					t.Fatal(err)
				}
				keystoreUp.Store(true)
				s.Outages = append(s.Outages, interval{Start: outageStart, End: since()})
				tr.SetPhase("keystore up")
				nextFlip = nextFlip.Add(up)
				t.Logf("t=%s keystore resumed", time.Since(start).Round(time.Second))
			}
		}
		if !now.Before(nextRestart) {
			r := restart{At: since(), KeystoreUp: keystoreUp.Load()}
			tr.Pause()
			a.Stop()
			if err := a.StartNoWait(); err != nil {
				tr.Resume()
				t.Fatal(err)
			}
			failing, err := a.WaitServing(ctx, 2*time.Minute, "kms-providers")
			tr.Resume()
			if err != nil {
				t.Fatalf("kube-apiserver restarted at t=%.0fs (keystore up: %v): %v", r.At, r.KeystoreUp, err)
			}
			r.ServingS, r.Failing = since()-r.At, failing
			s.Restarts = append(s.Restarts, r)
			nextRestart = nextRestart.Add(restartEvery)
			t.Logf("t=%s kube-apiserver restarted (keystore up: %v), serving in %.1fs, failing: %q", time.Since(start).Round(time.Second), r.KeystoreUp, r.ServingS, failing)
		}
	}
	if !keystoreUp.Load() {
		if err := v.Thaw(); err != nil {
			t.Fatal(err)
		}
		keystoreUp.Store(true)
		s.Outages = append(s.Outages, interval{Start: outageStart, End: since()})
		tr.SetPhase("keystore up")
	}
	s.DurationS = since()
	close(stopSampler)
	<-samplerDone
	tr.Stop()

	// No object lost.
	if _, err := a.WaitServing(ctx, 2*time.Minute); err != nil {
		t.Errorf("after the soak: %v", err)
	}
	want := tr.Written()
	chk, err := cluster.CheckSecrets(ctx, a, c.Etcd, c.Provider, ns, want)
	if err != nil {
		t.Fatal(err)
	}
	s.Secrets.Written, s.Secrets.Listed, s.Secrets.Read, s.Secrets.Stored = len(want), chk.Listed, chk.Read, chk.Stored
	s.Secrets.Problems, s.Secrets.KeyIDs, s.Secrets.LocalKEKs = chk.Problems, chk.KeyIDs, chk.LocalKEKs
	s.Requests = map[string]cluster.OpCounts{}
	for _, p := range tr.Phases() {
		s.Requests[p] = tr.Counts(p)
	}
	s.Requests["total"] = tr.Total()
	s.Failures = tr.Failures()
	if m, err := kw.Metrics(ctx); err == nil {
		s.Keywarden = m.Counts()
	}

	// Series, flatness, plots, files.
	mu.Lock()
	defer mu.Unlock()
	series := map[string]*bench.SoakSeries{
		"rss":        {Name: "rss", Unit: "VmRSS (MiB)"},
		"goroutines": {Name: "goroutines", Unit: "goroutines"},
		"fds":        {Name: "fds", Unit: "open file descriptors"},
	}
	for _, smp := range samples {
		switch {
		case smp.KMSReady < 0:
			s.Readiness.NoAnswer++
		case smp.KeystoreUp && smp.KMSReady == 1:
			s.Readiness.UpReady++
		case smp.KeystoreUp:
			s.Readiness.UpFailing++
		case smp.KMSReady == 1:
			s.Readiness.DownReady++
		default:
			s.Readiness.DownFailing++
		}
		if smp.RSSKiB == 0 || smp.Goroutines == 0 || smp.FDs == 0 {
			continue // a sample that could not read everything
		}
		for name, y := range map[string]float64{"rss": float64(smp.RSSKiB), "goroutines": float64(smp.Goroutines), "fds": float64(smp.FDs)} {
			series[name].T = append(series[name].T, smp.T)
			series[name].Y = append(series[name].Y, y)
		}
	}
	var downs [][2]float64
	for _, o := range s.Outages {
		downs = append(downs, [2]float64{o.Start, o.End})
	}
	titles := map[string]string{
		"rss":        "keywarden resident memory",
		"goroutines": "keywarden goroutines (go_goroutines)",
		"fds":        "keywarden open file descriptors (/proc/PID/fd)",
	}
	for _, name := range []string{"rss", "goroutines", "fds"} {
		sr := *series[name]
		s.Flatness = append(s.Flatness, bench.JudgeFlat(sr, rules[name]))
		if name == "rss" { // plotted in MiB, judged in KiB
			mib := make([]float64, len(sr.Y))
			for i, y := range sr.Y {
				mib[i] = y / 1024
			}
			sr.Y = mib
		}
		f, err := bench.WriteSoakPlot(out, fmt.Sprintf("%s, %s soak, keystore %s up / %s down", titles[name], time.Duration(s.DurationS*float64(time.Second)).Round(time.Minute), up, down), sr, downs)
		if err != nil {
			t.Error(err)
			continue
		}
		s.Plots = append(s.Plots, f)
	}
	s.Meta.Duration = time.Since(start)
	if err := writeCSV(filepath.Join(out, "samples.csv"), samples); err != nil {
		t.Error(err)
	}
	if err := bench.WriteJSON(filepath.Join(out, "summary.json"), s); err != nil {
		t.Fatal(err)
	}
	t.Logf("results in %s", out)

	// The verdict.
	tot := s.Requests["total"]
	t.Logf("%.0f s, %d keystore outages, %d apiserver restarts; %d requests (%d creates, %d gets, %d lists), %d failed; %d Secrets: %d read back, %d listed, %d stored sealed",
		s.DurationS, len(s.Outages), len(s.Restarts), tot.Total(), tot.Creates, tot.Gets, tot.Lists, tot.Failed, len(want), chk.Read, chk.Listed, chk.Stored)
	for _, f := range s.Failures {
		t.Errorf("failed request (%s, %s, t=%.0fs): %s", f.Phase, f.Op, f.At.Sub(start).Seconds(), f.Err)
	}
	if tot.Failed != 0 {
		t.Errorf("%d of %d requests failed", tot.Failed, tot.Total())
	}
	for _, p := range chk.Problems {
		t.Error(p)
	}
	if chk.Failures != 0 || chk.Read != len(want) || chk.Listed != len(want) || chk.Stored != len(want) || len(want) == 0 {
		t.Errorf("Secrets lost or changed: %d written, %d read back, %d listed, %d stored sealed, %d problems", len(want), chk.Read, chk.Listed, chk.Stored, chk.Failures)
	}
	for _, f := range s.Flatness {
		verdict := "flat"
		if !f.Flat {
			verdict = "NOT FLAT"
			t.Errorf("%s is not flat: last-quarter mean %.1f > %.1f (second-quarter mean %.1f, +%.0f %%, +%g)", f.Series, f.Q4Mean, f.Limit, f.Q2Mean, 100*f.Rule.Rel, f.Rule.Abs)
		}
		t.Logf("%-10s Q2 mean %10.1f, Q4 mean %10.1f (limit %10.1f), slope over the second half %+.1f/h, %d samples: %s",
			f.Series, f.Q2Mean, f.Q4Mean, f.Limit, f.SlopePerHour, f.Samples, verdict)
	}
	if s.Readiness.DownFailing == 0 && len(s.Outages) > 0 && down > grace+30*time.Second {
		t.Errorf("kms-providers never failed while the keystore was down (%+v)", s.Readiness)
	}
}

func earliest(ts ...time.Time) time.Time {
	e := ts[0]
	for _, t := range ts[1:] {
		if t.Before(e) {
			e = t
		}
	}
	return e
}

func writeCSV(path string, samples []sample) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"t_s", "rss_kib", "rss_anon_kib", "goroutines", "open_fds", "process_open_fds", "keystore_up", "kms_providers_ready", "keywarden_ready", "creates", "failed"})
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	for _, s := range samples {
		_ = w.Write([]string{
			strconv.FormatFloat(s.T, 'f', 1, 64), strconv.FormatInt(s.RSSKiB, 10), strconv.FormatInt(s.AnonKiB, 10),
			strconv.Itoa(s.Goroutines), strconv.Itoa(s.FDs), strconv.Itoa(s.MetricFDs), b(s.KeystoreUp),
			strconv.Itoa(s.KMSReady), b(s.KWReady), strconv.Itoa(s.Creates), strconv.Itoa(s.Failed),
		})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// outDir is $KWBENCH_OUT, or bench/results/<UTC date>-soak.
func outDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KWBENCH_OUT")
	if dir == "" {
		root, err := cluster.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, "bench", "results", time.Now().UTC().Format("2006-01-02")+"-soak")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

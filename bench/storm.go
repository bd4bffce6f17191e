package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	kmsapi "k8s.io/kms/apis/v2"
)

// Mint encrypts n fresh seeds through c, conc at a time, and returns the
// seeds and responses reordered so that consecutive requests come from
// different local KEKs (round robin over the distinct annotation sets),
// the worst case for a cache. keks is the number of distinct annotation
// sets: the local KEKs for keywarden, 0 for a plugin that sends none.
func Mint(ctx context.Context, c *Client, n, conc int) (seeds [][]byte, resps []*kmsapi.EncryptResponse, keks int, err error) {
	seeds = make([][]byte, n)
	resps = make([]*kmsapi.EncryptResponse, n)
	for i := range seeds {
		seeds[i] = make([]byte, SeedSize)
		_, _ = rand.Read(seeds[i])
	}
	s := Run(ctx, Load{Concurrency: conc, Ops: n}, func(ctx context.Context, _, i int) error {
		r, err := c.Encrypt(ctx, "kwbench-mint", seeds[i])
		resps[i] = r
		return err
	})
	if s.Errors > 0 {
		return nil, nil, 0, fmt.Errorf("mint: %d of %d Encrypts failed: %w", s.Errors, n, s.FirstErr)
	}
	outS, outR, keks := interleave(seeds, resps)
	return outS, outR, keks, nil
}

// MintPerKEK is Mint for a keywarden started with --kek-max-uses perKEK:
// sequential Encrypts, at most perKEK kept per local KEK. keywarden moves to
// a new KEK at the bound once the one it prepares in the background is
// ready, so under load a KEK may seal a few seeds past it; those are
// discarded, and every KEK but the last contributes exactly perKEK.
func MintPerKEK(ctx context.Context, c *Client, n, perKEK int) (seeds [][]byte, resps []*kmsapi.EncryptResponse, keks int, err error) {
	if perKEK <= 0 {
		return nil, nil, 0, fmt.Errorf("mint: perKEK %d, want > 0", perKEK)
	}
	per := map[string]int{}
	for i := 0; len(seeds) < n; i++ {
		if i >= 4*n {
			return nil, nil, 0, fmt.Errorf("mint: %d Encrypts made only %d usable ciphertexts: the plugin does not move to a new local KEK every %d Encrypts", i, len(seeds), perKEK)
		}
		seed := make([]byte, SeedSize)
		_, _ = rand.Read(seed)
		r, err := c.Encrypt(ctx, "kwbench-mint", seed)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("mint: Encrypt %d: %w", i+1, err)
		}
		k := annotationKey(r.Annotations)
		if per[k] >= perKEK {
			continue
		}
		per[k]++
		seeds, resps = append(seeds, seed), append(resps, r)
	}
	outS, outR, keks := interleave(seeds, resps)
	return outS, outR, keks, nil
}

// interleave reorders seeds and resps round robin over their annotation
// sets, and counts the sets (0 for a plugin that sends none).
func interleave(seeds [][]byte, resps []*kmsapi.EncryptResponse) ([][]byte, []*kmsapi.EncryptResponse, int) {
	n := len(seeds)
	groups := map[string][]int{}
	var order []string
	for i, r := range resps {
		k := annotationKey(r.Annotations)
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}
	is := make([]int, 0, n)
	for j := 0; len(is) < n; j++ {
		for _, k := range order {
			if j < len(groups[k]) {
				is = append(is, groups[k][j])
			}
		}
	}
	outS := make([][]byte, n)
	outR := make([]*kmsapi.EncryptResponse, n)
	for j, i := range is {
		outS[j], outR[j] = seeds[i], resps[i]
	}
	keks := len(groups)
	if len(groups) == 1 && order[0] == "" {
		keks = 0
	}
	return outS, outR, keks
}

func annotationKey(a map[string][]byte) string {
	var b bytes.Buffer
	for _, k := range slices.Sorted(maps.Keys(a)) {
		fmt.Fprintf(&b, "%s=%x;", k, a[k])
	}
	return b.String()
}

// StormInstance is one freshly started server, its KEK cache empty.
type StormInstance struct {
	Client *Client
	// PID, if non-zero, is sampled for VmRSS during the storm.
	PID int
	// KeystoreCalls returns the keystore unwraps made so far, or nil if
	// they cannot be counted (the floor has no keystore).
	KeystoreCalls func(ctx context.Context) (int64, error)
	// RemoteCalls, if not nil, returns the Decrypt requests the keystore
	// server itself has answered so far (an emulator in the benchmark's
	// process can count them): what the storm cost the remote service,
	// retries and health probes included.
	RemoteCalls func(ctx context.Context) (int64, error)
	Stop        func() error
}

// StormTarget is a server to storm: how to start it cold, and the Decrypt
// requests (made by Mint, against the same keystore) to send it.
type StormTarget struct {
	Name     string
	Start    func(ctx context.Context) (*StormInstance, error)
	Seeds    [][]byte
	Requests []*kmsapi.EncryptResponse
	KEKs     int
}

// StormConfig says how the storm is run.
type StormConfig struct {
	Concurrency int
	Rounds      int
	Progress    io.Writer
}

// StormRound is one cold start's storm.
type StormRound struct {
	Summary
	// KeystoreCalls is the keystore unwraps the storm caused; -1 if not
	// counted.
	KeystoreCalls int64 `json:"keystore_calls"`
	// RemoteCalls is the Decrypt requests the keystore server answered
	// during the storm; -1 if not counted.
	RemoteCalls int64 `json:"remote_calls"`
	RSSPeakKiB  int64 `json:"rss_peak_kib,omitempty"`
}

// StormResult is one target's storms.
type StormResult struct {
	Target      string       `json:"target"`
	Decrypts    int          `json:"decrypts"`
	KEKs        int          `json:"keks"`
	Concurrency int          `json:"concurrency"`
	Rounds      []StormRound `json:"rounds"`
}

// Storm starts each target cold and sends it all its Decrypts at once
// (Concurrency in flight), round by round with the order rotating, and
// counts the keystore calls each storm made.
func Storm(ctx context.Context, cfg StormConfig, targets ...*StormTarget) ([]*StormResult, error) {
	out := make([]*StormResult, len(targets))
	for i, t := range targets {
		out[i] = &StormResult{Target: t.Name, Decrypts: len(t.Requests), KEKs: t.KEKs, Concurrency: cfg.Concurrency}
	}
	for round := range cfg.Rounds {
		for k := range targets {
			i := (k + round) % len(targets)
			r, err := stormOnce(ctx, cfg, targets[i])
			if err != nil {
				return nil, fmt.Errorf("storm %s round %d: %w", targets[i].Name, round+1, err)
			}
			out[i].Rounds = append(out[i].Rounds, r)
			if cfg.Progress != nil {
				remote := ""
				if r.RemoteCalls >= 0 {
					remote = fmt.Sprintf("  remote decrypts %d", r.RemoteCalls)
				}
				fmt.Fprintf(cfg.Progress, "storm round %d/%d %-22s %5d decrypts in %8s  p50 %8s  p99 %8s  keystore calls %d%s\n",
					round+1, cfg.Rounds, targets[i].Name, r.Ops, r.Elapsed.Round(10*time.Microsecond),
					r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond), r.KeystoreCalls, remote)
			}
		}
	}
	return out, nil
}

func stormOnce(ctx context.Context, cfg StormConfig, t *StormTarget) (StormRound, error) {
	inst, err := t.Start(ctx)
	if err != nil {
		return StormRound{}, err
	}
	defer func() { _ = inst.Stop() }()
	r := StormRound{KeystoreCalls: -1, RemoteCalls: -1}
	var before, remoteBefore int64
	if inst.KeystoreCalls != nil {
		if before, err = inst.KeystoreCalls(ctx); err != nil {
			return r, err
		}
	}
	if inst.RemoteCalls != nil {
		if remoteBefore, err = inst.RemoteCalls(ctx); err != nil {
			return r, err
		}
	}
	var rss *RSSSampler
	if inst.PID != 0 {
		rss = SampleRSS(inst.PID, 10*time.Millisecond)
	}
	s := Run(ctx, Load{Concurrency: cfg.Concurrency, Ops: len(t.Requests)}, func(ctx context.Context, _, i int) error {
		pt, err := inst.Client.Decrypt(ctx, "kwbench-storm", t.Requests[i])
		if err != nil {
			return err
		}
		if !bytes.Equal(pt, t.Seeds[i]) {
			return fmt.Errorf("decrypt returned other bytes than were encrypted")
		}
		return nil
	})
	if rss != nil {
		r.RSSPeakKiB = rss.Stop()
	}
	if s.Errors > 0 {
		return r, fmt.Errorf("%d of %d Decrypts failed: %w", s.Errors, len(t.Requests), s.FirstErr)
	}
	r.Summary = s.Summary()
	if inst.KeystoreCalls != nil {
		after, err := inst.KeystoreCalls(ctx)
		if err != nil {
			return r, err
		}
		r.KeystoreCalls = after - before
	}
	if inst.RemoteCalls != nil {
		after, err := inst.RemoteCalls(ctx)
		if err != nil {
			return r, err
		}
		r.RemoteCalls = after - remoteBefore
	}
	return r, nil
}

// StormComparison is one target's storm time against a base's, per round
// and the median.
type StormComparison struct {
	Target        string    `json:"target"`
	Base          string    `json:"base"`
	ElapsedRatios []float64 `json:"elapsed_ratios"`
	ElapsedRatio  float64   `json:"elapsed_ratio"`
	P99Ratio      float64   `json:"p99_ratio"`
}

// CompareStorm pairs t's and base's rounds.
func CompareStorm(t, base *StormResult) StormComparison {
	el := func(r *StormResult) []float64 {
		out := make([]float64, len(r.Rounds))
		for i, x := range r.Rounds {
			out[i] = float64(x.Elapsed)
		}
		return out
	}
	p99 := func(r *StormResult) []float64 {
		out := make([]float64, len(r.Rounds))
		for i, x := range r.Rounds {
			out[i] = float64(x.P99)
		}
		return out
	}
	ratios := RoundRatios(el(t), el(base))
	return StormComparison{
		Target: t.Target, Base: base.Target, ElapsedRatios: ratios,
		ElapsedRatio: finite(Median(ratios)), P99Ratio: finite(Median(RoundRatios(p99(t), p99(base)))),
	}
}

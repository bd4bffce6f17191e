package bench_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/bench"
	"github.com/keywarden/keywarden/bench/floor"
	"github.com/keywarden/keywarden/bench/lab"
	"github.com/keywarden/keywarden/keystore/byuri"
)

// labStarter starts a fresh lab server (an empty KEK cache) on its own
// socket for each storm round.
func labStarter(t *testing.T, dir, ks string, cfg lab.Config) func(context.Context) (*bench.StormInstance, error) {
	n := 0
	return func(ctx context.Context) (*bench.StormInstance, error) {
		n++
		cfg.Keystore = ks
		l, err := lab.New(ctx, cfg)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, fmt.Sprintf("%s%d", cfg.Mode, n), "kms.sock")
		ln, err := floor.Listen(path)
		if err != nil {
			return nil, err
		}
		go func() { _ = l.Serve(ln) }()
		c, err := bench.Dial(ctx, path, 1)
		if err != nil {
			return nil, err
		}
		return &bench.StormInstance{
			Client:        c,
			KeystoreCalls: func(context.Context) (int64, error) { return l.Counts().Unwraps, nil },
			Stop:          func() error { _ = c.Close(); return l.Close() },
		}, nil
	}
}

// The cold-start storm's keystore arithmetic, which is what the scenario
// is about: 1000 Decrypts over 10 local KEKs, 64 at a time, on a slow
// keystore, make exactly 10 keystore calls with keywarden's service and
// one per Decrypt with the per-call plugin. Counts only; nothing is timed.
func TestStormKeystoreCalls(t *testing.T) {
	const decrypts, keks = 1000, 10
	ctx := context.Background()
	dir := shortTempDir(t)
	ks := "file://" + filepath.Join(dir, "keyset.json")
	if _, err := byuri.Init(ctx, ks); err != nil {
		t.Fatal(err)
	}
	mint := func(cfg lab.Config, conc int) *bench.StormTarget {
		t.Helper()
		inst, err := labStarter(t, dir, ks, cfg)(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = inst.Stop() }()
		// Only one of the two: Encrypts made by Mint first would leave the
		// current KEK part used, and MintPerKEK would then find 11 KEKs.
		var seeds [][]byte
		var reqs []*kmsapi.EncryptResponse
		var n int
		if cfg.KEKMaxUses > 0 {
			seeds, reqs, n, err = bench.MintPerKEK(ctx, inst.Client, decrypts, int(cfg.KEKMaxUses))
		} else {
			seeds, reqs, n, err = bench.Mint(ctx, inst.Client, decrypts, conc)
		}
		if err != nil {
			t.Fatal(err)
		}
		return &bench.StormTarget{Seeds: seeds, Requests: reqs, KEKs: n}
	}
	local := mint(lab.Config{Mode: lab.ModeLocalKEK, KEKMaxUses: decrypts / keks}, 1)
	if local.KEKs != keks {
		t.Fatalf("minted under %d local KEKs, want %d", local.KEKs, keks)
	}
	// Consecutive requests come from different KEKs: every KEK is missed
	// at once, the worst case for the cache.
	for i := 1; i < keks; i++ {
		if string(local.Requests[i].Annotations["kek.keywarden.io"]) == string(local.Requests[0].Annotations["kek.keywarden.io"]) {
			t.Fatalf("request %d has the same KEK as request 0: not interleaved", i)
		}
	}
	local.Name = "keywarden"
	local.Start = labStarter(t, dir, ks, lab.Config{Mode: lab.ModeLocalKEK, Delay: 5 * time.Millisecond})
	pc := mint(lab.Config{Mode: lab.ModePerCall}, 16)
	if pc.KEKs != 0 {
		t.Errorf("per-call ciphertexts carry %d annotation sets, want none", pc.KEKs)
	}
	pc.Name = "per-call"
	pc.Start = labStarter(t, dir, ks, lab.Config{Mode: lab.ModePerCall, Delay: 5 * time.Millisecond})

	res, err := bench.Storm(ctx, bench.StormConfig{Concurrency: 64, Rounds: 2}, local, pc)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int64{keks, decrypts} {
		for r, round := range res[i].Rounds {
			if round.KeystoreCalls != want || round.Ops != decrypts || round.Errors != 0 {
				t.Errorf("%s round %d: %d keystore calls, %d ok, %d errors; want %d calls, %d ok",
					res[i].Target, r+1, round.KeystoreCalls, round.Ops, round.Errors, want, decrypts)
			}
		}
	}
}

package bench_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/bench"
	"github.com/keywarden/keywarden/bench/lab"
	"github.com/keywarden/keywarden/bench/rig"
)

// The storm's arithmetic against real root keystores, as the socket
// benchmark's keystore targets run them: 1000 Decrypts over 10 local KEKs
// made through a SoftHSM2 token, AWS KMS (local-kms in this process) and a
// Vault dev server make exactly 10 keystore calls, and, where the keystore
// server can count them (local-kms), exactly 10 Decrypt requests reach it.
// Counts only; nothing is timed.
//
// SoftHSM2 missing skips, unless KEYWARDEN_REQUIRE_SOFTHSM is set (CI);
// Vault is used when VAULT_ADDR is set (test/keystores/servers.sh start
// vault), and a missing server fails when KEYWARDEN_REQUIRE_VAULT is set.
func TestStormKeystoreCallsPerKeystore(t *testing.T) {
	setups := []struct {
		name    string
		require string
		open    func(ctx context.Context, dir string) (*rig.Keystore, error)
	}{
		{"pkcs11", "KEYWARDEN_REQUIRE_SOFTHSM", func(ctx context.Context, dir string) (*rig.Keystore, error) {
			// rig.SoftHSM points this process's SoftHSM at dir; put the
			// variable back afterwards.
			t.Setenv("SOFTHSM2_CONF", os.Getenv("SOFTHSM2_CONF"))
			return rig.SoftHSM(ctx, dir)
		}},
		{"aws", "", rig.LocalKMS},
		{"vault", "KEYWARDEN_REQUIRE_VAULT", func(ctx context.Context, dir string) (*rig.Keystore, error) {
			return rig.Vault(ctx, os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN"), dir)
		}},
	}
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			ctx := context.Background()
			dir := shortTempDir(t)
			ks, err := s.open(ctx, dir)
			if errors.Is(err, rig.ErrMissing) && (s.require == "" || os.Getenv(s.require) == "") {
				t.Skipf("%v (set %s=1 to make this a failure)", err, s.require)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := ks.Close(); err != nil {
					t.Error(err)
				}
			})
			for _, kv := range ks.Env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			stormOverKeystore(t, dir, ks)
		})
	}
}

func stormOverKeystore(t *testing.T, dir string, ks *rig.Keystore) {
	const decrypts, keks = 1000, 10
	ctx := context.Background()
	inst, err := labStarter(t, dir, ks.URI, lab.Config{Mode: lab.ModeLocalKEK, KEKMaxUses: decrypts / keks})(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seeds, reqs, n, err := bench.MintPerKEK(ctx, inst.Client, decrypts, decrypts/keks)
	_ = inst.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if n != keks {
		t.Fatalf("minted under %d local KEKs, want %d", n, keks)
	}
	start := labStarter(t, dir, ks.URI, lab.Config{Mode: lab.ModeLocalKEK})
	target := &bench.StormTarget{Name: "keywarden-" + ks.Name, Seeds: seeds, Requests: reqs, KEKs: n,
		Start: func(ctx context.Context) (*bench.StormInstance, error) {
			inst, err := start(ctx)
			if err == nil && ks.RemoteDecrypts != nil {
				inst.RemoteCalls = func(context.Context) (int64, error) { return ks.RemoteDecrypts(), nil }
			}
			return inst, err
		}}
	res, err := bench.Storm(ctx, bench.StormConfig{Concurrency: 64, Rounds: 1}, target)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res[0].Rounds {
		if r.KeystoreCalls != keks || r.Ops != decrypts || r.Errors != 0 {
			t.Errorf("%d keystore calls, %d ok, %d errors; want %d calls, %d ok", r.KeystoreCalls, r.Ops, r.Errors, keks, decrypts)
		}
		if ks.RemoteDecrypts != nil && r.RemoteCalls != keks {
			t.Errorf("%d Decrypt requests reached the keystore server, want %d", r.RemoteCalls, keks)
		}
	}
}

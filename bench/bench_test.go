package bench_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/keywarden/keywarden/bench"
	"github.com/keywarden/keywarden/bench/floor"
	"github.com/keywarden/keywarden/bench/lab"
	"github.com/keywarden/keywarden/keystore/byuri"
)

// socketEnv is the floor and keywarden (kms.Service with a file keystore,
// wired as cmd/keywarden wires it) served in this process, each on its
// own unix socket, and a client of each.
type socketEnv struct {
	floor, kw *bench.Target
	lab       *lab.Server
}

func newSocketEnv(tb testing.TB, delay time.Duration) *socketEnv {
	tb.Helper()
	ctx := context.Background()
	// Unix socket paths are limited to 108 bytes; t.TempDir's can be long.
	dir := shortTempDir(tb)
	ks := "file://" + filepath.Join(dir, "keyset.json")
	if _, err := byuri.Init(ctx, ks); err != nil {
		tb.Fatal(err)
	}
	l, err := lab.New(ctx, lab.Config{Keystore: ks, Delay: delay})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	fsrv := floor.NewGRPCServer("floor", floor.Service{})
	tb.Cleanup(fsrv.Stop)
	e := &socketEnv{lab: l}
	e.floor = serve(tb, "floor", filepath.Join(dir, "floor", "kms.sock"), func(ln net.Listener) error { return fsrv.Serve(ln) })
	e.kw = serve(tb, "keywarden", filepath.Join(dir, "kw", "kms.sock"), l.Serve)
	if err := bench.Prepare(ctx, 64, e.floor, e.kw); err != nil {
		tb.Fatal(err)
	}
	return e
}

func serve(tb testing.TB, name, path string, serve func(net.Listener) error) *bench.Target {
	tb.Helper()
	ln, err := floor.Listen(path)
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = serve(ln) }()
	c, err := bench.Dial(context.Background(), path, 1)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return &bench.Target{Name: name, Client: c}
}

// BenchmarkSocket drives Encrypt and Decrypt over the real unix socket at
// concurrency 1 and 64, keywarden and the floor in the same run: b.N calls
// to each, split into rounds that alternate floor, keywarden, floor, …
// Only keywarden's calls are timed, so ns/op is keywarden's wall time per
// call (the inverse of its throughput at that concurrency) and allocs/op
// its allocations, client and server together (floor-allocs/op is the
// floor's, for comparison). The ratios are medians of
// per-round ratios: p50/floor (≤ 1.10 is the target at c=1) and
// tput/floor (≥ 0.95 at c=64).
func BenchmarkSocket(b *testing.B) {
	e := newSocketEnv(b, 0)
	for _, op := range []string{bench.OpEncrypt, bench.OpDecrypt} {
		for _, c := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/c=%d", op, c), func(b *testing.B) { e.alternate(b, op, c) })
		}
	}
}

func (e *socketEnv) alternate(b *testing.B, op string, conc int) {
	ctx := context.Background()
	fop, err := e.floor.OpFunc(op)
	if err != nil {
		b.Fatal(err)
	}
	kop, err := e.kw.OpFunc(op)
	if err != nil {
		b.Fatal(err)
	}
	warm := bench.Load{Concurrency: conc, Ops: 50 * conc}
	bench.Run(ctx, warm, fop)
	bench.Run(ctx, warm, kop)
	rounds := min(b.N, 10)
	var fp50, kp50, ftp, ktp []float64
	var fallocs uint64
	var ms runtime.MemStats
	b.ReportAllocs()
	b.ResetTimer()
	for r := range rounds {
		n := b.N/rounds + boolInt(r < b.N%rounds)
		b.StopTimer()
		runtime.ReadMemStats(&ms)
		before := ms.Mallocs
		fs := bench.Run(ctx, bench.Load{Concurrency: conc, Ops: n}, fop).Summary()
		runtime.ReadMemStats(&ms)
		fallocs += ms.Mallocs - before
		b.StartTimer()
		ks := bench.Run(ctx, bench.Load{Concurrency: conc, Ops: n}, kop).Summary()
		if fs.Errors+ks.Errors > 0 {
			b.Fatalf("errors: floor %d, keywarden %d", fs.Errors, ks.Errors)
		}
		fp50, kp50 = append(fp50, float64(fs.P50)), append(kp50, float64(ks.P50))
		ftp, ktp = append(ftp, fs.Throughput), append(ktp, ks.Throughput)
	}
	b.StopTimer()
	b.ReportMetric(bench.Median(kp50)/1e3, "p50-µs")
	b.ReportMetric(bench.Median(fp50)/1e3, "floor-p50-µs")
	b.ReportMetric(bench.Median(bench.RoundRatios(kp50, fp50)), "p50/floor")
	b.ReportMetric(bench.Median(bench.RoundRatios(ktp, ftp)), "tput/floor")
	b.ReportMetric(float64(fallocs)/float64(b.N), "floor-allocs/op")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

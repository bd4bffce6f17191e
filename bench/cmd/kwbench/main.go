// Command kwbench benchmarks keywarden over its real KMS v2 unix socket
// against a no-op floor plugin measured in the same run, and writes JSON, a
// markdown table and PNG plots into a results folder.
//
//	go run ./bench/cmd/kwbench                       # full: 5 rounds, sweep 1,4,16,64,256, storm
//	go run ./bench/cmd/kwbench --rounds 3 --duration 300ms --storm-rounds 3
//
// It builds keywarden, kwfloor and kwlab (or takes them from --bin), starts
// each as its own process on a socket in a temporary directory, and runs:
//
//   - the sweep: Encrypt and Decrypt of 32-byte seeds at each concurrency,
//     targets interleaved and rotated round by round: floor, keywarden (file
//     keystore), keywarden with a slow keystore (kwlab, --slow-delay per
//     keystore call) and the benchmark-only per-call plugin on the same slow
//     keystore;
//   - the cold-start storm: a fresh server, an empty KEK cache, and
//     --storm-decrypts Decrypts made under --storm-keks local KEKs sent
//     --storm-conc at a time; keystore calls counted inside the server;
//   - VmRSS of every server: idle after start, sampled during the load, and
//     idle after it.
//
// --keystores adds real root keystores to the sweep and the storm (a
// SoftHSM2 token, AWS KMS emulated by local-kms in this process, a Vault dev
// server's Transit): per keystore, keywarden's service over it (kwlab
// local-kek, "keywarden-<name>") and the per-call plugin over it
// ("percall-<name>"), beside keywarden's service over the file keystore
// ("keywarden-file"):
//
//	go run ./bench/cmd/kwbench --keystores pkcs11,aws,vault --conc 1,64 --slow-delay 0 --bare=false
//
// The acceptance gates of the issues (bench.Gate*, shared with
// bench/apiserver) end the output, one PASS, FAIL or INFO line each. A
// failed gate is reported, not fatal: kwbench exits 1 on one only with
// --gates=enforce, after writing the results.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keywarden/keywarden/bench"
	"github.com/keywarden/keywarden/bench/lab"
	"github.com/keywarden/keywarden/bench/rig"
	"github.com/keywarden/keywarden/keystore/byuri"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "kwbench:", err)
		os.Exit(1)
	}
}

type options struct {
	out, bin      string
	conc          []int
	ops           []string
	conns, rounds int
	duration      time.Duration
	warmup        time.Duration
	pool          int
	slowDelay     time.Duration
	bare          bool
	aa            bool
	scenarios     map[string]bool
	stormDecrypts int
	stormKEKs     int
	stormConc     int
	stormRounds   int
	idlePause     time.Duration
	keystores     []keystoreSpec
	gates         bench.GateMode
	args          []string
}

// keystoreSpec is one --keystores entry: a name, and a URI unless the rig
// sets the keystore up.
type keystoreSpec struct{ name, uri string }

func parseFlags(args []string) (*options, error) {
	o := &options{args: args}
	fs := flag.NewFlagSet("kwbench", flag.ContinueOnError)
	fs.StringVar(&o.out, "out", "", "results folder (default bench/results/tmp/<UTC time>)")
	fs.StringVar(&o.bin, "bin", "", "folder with prebuilt keywarden, kwfloor and kwlab (default: build them into a temporary folder)")
	concs := fs.String("conc", "1,4,16,64,256", "concurrencies to sweep")
	ops := fs.String("ops", "encrypt,decrypt", "operations to sweep")
	fs.IntVar(&o.conns, "conns", 1, "gRPC connections per target (kube-apiserver uses one)")
	fs.IntVar(&o.rounds, "rounds", 15, "rounds of the sweep (a report of fewer than 5 says it is not for publishing)")
	fs.DurationVar(&o.duration, "duration", 300*time.Millisecond, "measured time per target, op, concurrency and round (short rounds, many of them: the targets of one round then see the same machine)")
	fs.DurationVar(&o.warmup, "warmup", 100*time.Millisecond, "unrecorded warm-up before each measurement")
	fs.IntVar(&o.pool, "pool", 64, "distinct seeds and ciphertexts the sweep cycles over")
	fs.DurationVar(&o.slowDelay, "slow-delay", 20*time.Millisecond, "latency injected per keystore call for the slow-keystore targets (0: leave them out)")
	fs.BoolVar(&o.aa, "aa", true, "also sweep a second floor process (floor-2): the floor/floor ratio shows how far this machine's noise moves a ratio")
	fs.BoolVar(&o.bare, "bare", true, "also sweep keywarden's service without its interceptors (kwlab --bare), to split its cost over the floor")
	scen := fs.String("scenarios", "sweep,storm", "scenarios to run: sweep, storm")
	fs.IntVar(&o.stormDecrypts, "storm-decrypts", 1000, "Decrypts in the cold-start storm")
	fs.IntVar(&o.stormKEKs, "storm-keks", 10, "distinct local KEKs they were made under")
	fs.IntVar(&o.stormConc, "storm-conc", 64, "Decrypts in flight during the storm")
	fs.IntVar(&o.stormRounds, "storm-rounds", 5, "rounds of the storm (a fresh server each)")
	fs.DurationVar(&o.idlePause, "idle-pause", 2*time.Second, "pause before reading idle VmRSS")
	fs.Var(&o.gates, "gates", "what a failed acceptance gate does: report (a FAIL line, exit 0) or enforce (exit 1 once the results are written)")
	stores := fs.String("keystores", "", "root keystores to add to the sweep and the storm, comma-separated: pkcs11 (a SoftHSM2 token made here), aws (local-kms served in this process), vault (a Transit key on the dev server at $VAULT_ADDR, root token $VAULT_TOKEN), or name=URI for a keystore that exists (its server's environment is this process's)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *stores != "" {
		seen := map[string]bool{}
		for _, f := range strings.Split(*stores, ",") {
			name, uri, _ := strings.Cut(strings.TrimSpace(f), "=")
			switch {
			case name == "" || strings.ContainsAny(name, " /"):
				return nil, fmt.Errorf("--keystores: bad name %q", name)
			case seen[name]:
				return nil, fmt.Errorf("--keystores: %q given twice", name)
			case uri == "" && name != "pkcs11" && name != "aws" && name != "vault":
				return nil, fmt.Errorf("--keystores: %q is none of pkcs11, aws, vault: give it as %s=URI", name, name)
			}
			seen[name] = true
			o.keystores = append(o.keystores, keystoreSpec{name: name, uri: uri})
		}
	}
	for _, s := range strings.Split(*concs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--conc: bad value %q", s)
		}
		o.conc = append(o.conc, n)
	}
	for _, s := range strings.Split(*ops, ",") {
		if s = strings.TrimSpace(s); s != bench.OpEncrypt && s != bench.OpDecrypt {
			return nil, fmt.Errorf("--ops: unknown op %q", s)
		}
		o.ops = append(o.ops, strings.TrimSpace(s))
	}
	o.scenarios = map[string]bool{}
	for _, s := range strings.Split(*scen, ",") {
		switch s = strings.TrimSpace(s); s {
		case "sweep", "storm":
			o.scenarios[s] = true
		default:
			return nil, fmt.Errorf("--scenarios: unknown scenario %q", s)
		}
	}
	if o.rounds < 1 || o.stormRounds < 1 {
		return nil, errors.New("--rounds and --storm-rounds must be at least 1")
	}
	if o.stormKEKs < 1 || o.stormDecrypts < o.stormKEKs {
		return nil, errors.New("--storm-decrypts must be at least --storm-keks, which must be at least 1")
	}
	return o, nil
}

// Target names in reports.
const (
	floorName   = "floor"
	floor2Name  = "floor-2"
	kwName      = "keywarden"
	bareName    = "keywarden-bare"
	slowName    = "keywarden-slowks"
	perCallName = "percall-slowks"
	// With --keystores: keywarden's service (kwlab) over the file keystore,
	// and per keystore <name> these prefixes + name.
	kwFileName = "keywarden-file"
	kwStorePfx = "keywarden-"
	perCallPfx = "percall-"
)

// env is one run's binaries, working directory and keyset.
type env struct {
	o        *options
	bin      string
	work     string // short, for socket paths
	keystore string
	logs     io.Writer
	n        int
	stores   []*rig.Keystore
}

func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	start := time.Now()
	if o.out == "" {
		o.out = filepath.Join("bench", "results", "tmp", start.UTC().Format("20060102-150405"))
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	e := &env{o: o, bin: o.bin}
	if e.bin == "" {
		if e.bin, err = os.MkdirTemp("", "kwbench-bin"); err != nil {
			return err
		}
		defer os.RemoveAll(e.bin)
		fmt.Fprintln(stdout, "building keywarden, kwfloor, kwlab into", e.bin)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", e.bin+"/", "./cmd/keywarden", "./bench/cmd/kwfloor", "./bench/cmd/kwlab")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build (run kwbench from the repository root, or pass --bin): %w", err)
		}
	}
	if e.bin, err = filepath.Abs(e.bin); err != nil {
		return err
	}
	// Unix socket paths are limited to 108 bytes: keep them in /tmp.
	if e.work, err = os.MkdirTemp("", "kwb"); err != nil {
		return err
	}
	defer os.RemoveAll(e.work)
	logPath := filepath.Join(o.out, "servers.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	// The servers log their sockets and keysets under e.work: redact the
	// local paths once every server has stopped (the later defers run
	// first).
	defer func() {
		if rerr := bench.LocalPaths().RedactFile(logPath); rerr != nil && err == nil {
			err = rerr
		}
	}()
	defer logf.Close()
	e.logs = logf
	e.keystore = "file://" + filepath.Join(e.work, "keyset.json")
	if _, err := byuri.Init(ctx, e.keystore); err != nil {
		return fmt.Errorf("create keyset: %w", err)
	}

	for _, ks := range o.keystores {
		k, err := setupKeystore(ctx, e.work, ks)
		if err != nil {
			return fmt.Errorf("keystore %s: %w", ks.name, err)
		}
		defer k.Close()
		fmt.Fprintf(stdout, "keystore %s: %s\n", k.Name, redactURI(k.URI))
		e.stores = append(e.stores, k)
	}

	r := &bench.Report{Floor: floorName, Meta: meta(start, o)}
	if o.scenarios["sweep"] {
		if err := sweep(ctx, e, r, stdout); err != nil {
			return err
		}
	}
	if o.scenarios["storm"] {
		if err := storm(ctx, e, r, stdout); err != nil {
			return err
		}
	}
	r.Checks = checks(o, e.stores, r)
	r.Meta.Duration = time.Since(start)
	if r.Plots, err = bench.WritePlots(o.out, r); err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	if err := bench.WriteJSON(filepath.Join(o.out, "results.json"), r); err != nil {
		return err
	}
	mdf, err := os.Create(filepath.Join(o.out, "results.md"))
	if err != nil {
		return err
	}
	defer mdf.Close()
	if err := bench.WriteMarkdown(io.MultiWriter(mdf, stdout), r); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "results in", o.out)
	return gates(o.gates, r.Checks, stdout)
}

// gates prints a PASS, FAIL or INFO line per check and, under
// --gates=enforce, fails the run if a gate failed.
func gates(mode bench.GateMode, checks []bench.Check, stdout io.Writer) error {
	fmt.Fprintf(stdout, "\nGates (--gates=%s):\n", mode.String())
	return mode.Enforce(bench.Verdict(stdout, checks))
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// serverKind is what a server process is: it says which binary runs, with
// which flags, and how the keystore calls it makes are counted.
type serverKind int

const (
	floorKind     serverKind = iota // kwfloor: the no-op plugin; no keystore, no HTTP
	keywardenKind                   // the shipped binary; keystore calls from its /metrics
	labKind                         // kwlab; keystore calls from its spy (/spy)
)

func (k serverKind) binary() string {
	switch k {
	case keywardenKind:
		return "keywarden"
	case labKind:
		return "kwlab"
	default:
		return "kwfloor"
	}
}

// hasHTTP says whether the server serves HTTP (metrics, spy) on an address
// of its own.
func (k serverKind) hasHTTP() bool { return k != floorKind }

// args are the flags that start a server of kind k on listen, over
// keystore, serving HTTP on httpAddr.
func (k serverKind) args(listen, keystore, httpAddr string) []string {
	switch k {
	case keywardenKind:
		return []string{"--listen", listen, "--keystore", keystore, "--metrics-addr", httpAddr}
	case labKind:
		return []string{"--listen", listen, "--keystore", keystore, "--http-addr", httpAddr}
	default:
		return []string{"--listen", listen}
	}
}

// unwraps returns how to count the keystore unwraps of a server of kind k
// serving HTTP on httpAddr, or nil for the floor, which has no keystore.
func (k serverKind) unwraps(httpAddr string) func(context.Context) (int64, error) {
	switch k {
	case keywardenKind:
		return func(ctx context.Context) (int64, error) {
			return bench.FetchKeystoreCalls(ctx, httpAddr, "unwrap")
		}
	case labKind:
		return func(ctx context.Context) (int64, error) {
			n, err := bench.FetchSpy(ctx, httpAddr)
			return n.Unwraps, err
		}
	default:
		return nil
	}
}

// spied says whether kwlab's keystore spy counts every keystore call of the
// server (wraps, unwraps, key_id reads): the sweep's table of keystore
// calls.
func (k serverKind) spied() bool { return k == labKind }

type server struct {
	name string
	kind serverKind
	args []string
	// keystore overrides the run's file keystore; env is added to the
	// server's environment.
	keystore string
	env      []string
}

// storeServer is kwlab in mode over the keystore k.
func storeServer(name, mode string, k *rig.Keystore, extra ...string) server {
	s := labServer(name, mode, 0, extra...)
	s.keystore, s.env = k.URI, k.Env
	return s
}

// setupKeystore makes the keystore spec names, or wraps the URI it gives.
func setupKeystore(ctx context.Context, dir string, ks keystoreSpec) (*rig.Keystore, error) {
	if ks.uri != "" {
		return &rig.Keystore{Name: ks.name, URI: ks.uri, Remote: !strings.HasPrefix(ks.uri, "pkcs11:")}, nil
	}
	var k *rig.Keystore
	var err error
	switch ks.name {
	case "pkcs11":
		k, err = rig.SoftHSM(ctx, dir)
	case "aws":
		k, err = rig.LocalKMS(ctx, dir)
	case "vault":
		k, err = rig.Vault(ctx, os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN"), dir)
	}
	if err != nil {
		return nil, err
	}
	k.Name = ks.name
	return k, nil
}

// redactURI drops a URI's query (PINs, token paths) for printing.
func redactURI(uri string) string {
	u, _, _ := strings.Cut(uri, "?")
	return u
}

// perCallGate is the issues' bar for keywarden over the per-call plugin on
// the same keystore at concurrency 64: an HSM (#4), a remote KMS (#8).
func perCallGate(k *rig.Keystore) bench.Gate {
	if k.Remote {
		return bench.GatePerCallRemote
	}
	return bench.GatePerCallHSM
}

func floorServer() server { return server{name: floorName, kind: floorKind} }

func kwServer(extra ...string) server { return server{name: kwName, kind: keywardenKind, args: extra} }

func labServer(name, mode string, delay time.Duration, extra ...string) server {
	return server{name: name, kind: labKind, args: append([]string{"--mode", mode, "--keystore-delay", delay.String()}, extra...)}
}

// start starts s on a fresh socket.
func (e *env) start(ctx context.Context, s server) (*bench.Process, error) {
	e.n++
	sock := filepath.Join(e.work, fmt.Sprintf("s%d", e.n), "kms.sock")
	listen := "unix://" + sock
	httpAddr := ""
	if s.kind.hasHTTP() {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		httpAddr = a
	}
	ks := e.keystore
	if s.keystore != "" {
		ks = s.keystore
	}
	bin, args := s.kind.binary(), s.kind.args(listen, ks, httpAddr)
	args = append(args, s.args...)
	logged := make([]string, len(args))
	for i, a := range args {
		logged[i] = a
		if i > 0 && args[i-1] == "--keystore" {
			logged[i] = redactURI(a)
		}
	}
	fmt.Fprintf(e.logs, "=== %s: %s %s\n", s.name, bin, strings.Join(logged, " "))
	return bench.StartProcessEnv(ctx, s.name, sock, httpAddr, s.env, e.logs, filepath.Join(e.bin, bin), args...)
}

func sweep(ctx context.Context, e *env, r *bench.Report, stdout io.Writer) error {
	o := e.o
	servers := []server{floorServer(), kwServer()}
	if o.aa {
		f2 := floorServer()
		f2.name = floor2Name
		servers = append(servers, f2)
	}
	if o.bare {
		servers = append(servers, labServer(bareName, lab.ModeLocalKEK, 0, "--bare"))
	}
	if o.slowDelay > 0 {
		servers = append(servers,
			labServer(slowName, lab.ModeLocalKEK, o.slowDelay),
			labServer(perCallName, lab.ModePerCall, o.slowDelay))
	}
	if len(e.stores) > 0 {
		servers = append(servers, labServer(kwFileName, lab.ModeLocalKEK, 0))
		for _, k := range e.stores {
			servers = append(servers,
				storeServer(kwStorePfx+k.Name, lab.ModeLocalKEK, k),
				storeServer(perCallPfx+k.Name, lab.ModePerCall, k))
		}
	}
	var targets []*bench.Target
	var procs []*bench.Process
	defer func() {
		for _, p := range procs {
			_ = p.Stop()
		}
	}()
	for _, s := range servers {
		p, err := e.start(ctx, s)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		c, err := bench.Dial(ctx, p.Socket, o.conns)
		if err != nil {
			return err
		}
		defer c.Close()
		targets = append(targets, &bench.Target{Name: s.name, Client: c, PID: p.PID()})
	}
	// Idle memory: after one Encrypt and one Decrypt, and a pause.
	for _, t := range targets {
		seed := make([]byte, bench.SeedSize)
		er, err := t.Client.Encrypt(ctx, "kwbench-idle", seed)
		if err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
		if _, err := t.Client.Decrypt(ctx, "kwbench-idle", er); err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
	}
	sleep(ctx, o.idlePause)
	for _, t := range targets {
		m, err := bench.ReadMemory(t.PID)
		if err != nil {
			return err
		}
		r.Memory = append(r.Memory, bench.ProcessMemory{Target: t.Name, Idle: m})
		fmt.Fprintf(stdout, "%-18s idle VmRSS %.1f MiB\n", t.Name, bench.MiB(m.RSS))
	}
	if err := bench.Prepare(ctx, o.pool, targets...); err != nil {
		return err
	}
	res, err := bench.Sweep(ctx, bench.SweepConfig{
		Ops: o.ops, Concurrency: o.conc, Rounds: o.rounds, Duration: o.duration, Warmup: o.warmup,
		Pool: o.pool, CDFPoints: 400, Progress: stdout,
	}, targets...)
	if err != nil {
		return err
	}
	r.Sweep = res
	for _, t := range targets[1:] {
		if err := r.Compare(t.Name, floorName); err != nil {
			return err
		}
	}
	if o.slowDelay > 0 {
		for _, n := range []string{slowName, perCallName} {
			if err := r.Compare(n, kwName); err != nil {
				return err
			}
		}
	}
	// What the warm path cost each keystore: kwlab's spy counts every call
	// since the server started (its first local KEK, the Status checks).
	if len(e.stores) > 0 {
		tab := bench.Table{Title: "Keystore calls during the sweep (since server start)",
			Header: []string{"target", "measured calls", "keystore wraps", "keystore unwraps", "keystore key_id reads"}}
		for i, s := range servers {
			if !s.kind.spied() {
				continue
			}
			n, err := bench.FetchSpy(ctx, procs[i].HTTP)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			var calls int
			for _, c := range res.Cells {
				if c.Target == s.name {
					for _, x := range c.Rounds {
						calls += x.Ops
					}
				}
			}
			tab.Rows = append(tab.Rows, []string{s.name, strconv.Itoa(calls), strconv.FormatInt(n.Wraps, 10), strconv.FormatInt(n.Unwraps, 10), strconv.FormatInt(n.KeyIDs, 10)})
		}
		r.Tables = append(r.Tables, tab)
	}
	for _, k := range e.stores {
		if err := r.Compare(kwStorePfx+k.Name, kwFileName); err != nil {
			return err
		}
		if err := r.Compare(kwStorePfx+k.Name, perCallPfx+k.Name); err != nil {
			return err
		}
	}
	sleep(ctx, o.idlePause)
	for i, t := range targets {
		m, err := bench.ReadMemory(t.PID)
		if err != nil {
			return err
		}
		r.Memory[i].AfterLoad = m
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// mint starts s, makes the storm's ciphertexts through it, and stops it.
// perKEK > 0 is s's --kek-max-uses: at most that many are kept per local
// KEK (bench.MintPerKEK, sequential); 0 mints conc at a time.
func (e *env) mint(ctx context.Context, s server, conc, perKEK int) (*bench.StormTarget, error) {
	p, err := e.start(ctx, s)
	if err != nil {
		return nil, err
	}
	defer func() { _ = p.Stop() }()
	c, err := bench.Dial(ctx, p.Socket, 1)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	t := &bench.StormTarget{}
	if perKEK > 0 {
		t.Seeds, t.Requests, t.KEKs, err = bench.MintPerKEK(ctx, c, e.o.stormDecrypts, perKEK)
	} else {
		t.Seeds, t.Requests, t.KEKs, err = bench.Mint(ctx, c, e.o.stormDecrypts, conc)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return t, nil
}

// starter starts s cold for one storm round and counts its keystore
// unwraps: kwlab's keystore spy, keywarden's own metrics.
func (e *env) starter(s server) func(ctx context.Context) (*bench.StormInstance, error) {
	return func(ctx context.Context) (*bench.StormInstance, error) {
		p, err := e.start(ctx, s)
		if err != nil {
			return nil, err
		}
		c, err := bench.Dial(ctx, p.Socket, e.o.conns)
		if err != nil {
			_ = p.Stop()
			return nil, err
		}
		return &bench.StormInstance{
			Client: c, PID: p.PID(), KeystoreCalls: s.kind.unwraps(p.HTTP),
			Stop: func() error {
				_ = c.Close()
				return p.Stop()
			},
		}, nil
	}
}

// remoteCounting adds the keystore server's own Decrypt count to start's
// instances, where the rig can count them (local-kms).
func (e *env) remoteCounting(k *rig.Keystore, start func(ctx context.Context) (*bench.StormInstance, error)) func(ctx context.Context) (*bench.StormInstance, error) {
	if k.RemoteDecrypts == nil {
		return start
	}
	return func(ctx context.Context) (*bench.StormInstance, error) {
		inst, err := start(ctx)
		if err != nil {
			return nil, err
		}
		inst.RemoteCalls = func(context.Context) (int64, error) { return k.RemoteDecrypts(), nil }
		return inst, nil
	}
}

func storm(ctx context.Context, e *env, r *bench.Report, stdout io.Writer) error {
	o := e.o
	perKEK := (o.stormDecrypts + o.stormKEKs - 1) / o.stormKEKs
	// Sequential Encrypts through keywarden with --kek-max-uses, at most
	// perKEK kept per local KEK, make exactly storm-keks local KEKs.
	local, err := e.mint(ctx, kwServer("--kek-max-uses", strconv.Itoa(perKEK)), 1, perKEK)
	if err != nil {
		return err
	}
	if local.KEKs != o.stormKEKs {
		return fmt.Errorf("minting made %d local KEKs, want %d", local.KEKs, o.stormKEKs)
	}
	floorReqs, err := e.mint(ctx, floorServer(), 16, 0)
	if err != nil {
		return err
	}
	floorReqs.Name, floorReqs.Start = floorName, e.starter(floorServer())
	kw := *local
	kw.Name, kw.Start = kwName, e.starter(kwServer())
	targets := []*bench.StormTarget{floorReqs, &kw}
	if o.slowDelay > 0 {
		slow := *local
		slow.Name, slow.Start = slowName, e.starter(labServer(slowName, lab.ModeLocalKEK, o.slowDelay))
		pc, err := e.mint(ctx, labServer(perCallName, lab.ModePerCall, 0), 16, 0)
		if err != nil {
			return err
		}
		pc.Name, pc.Start = perCallName, e.starter(labServer(perCallName, lab.ModePerCall, o.slowDelay))
		targets = append(targets, &slow, pc)
	}
	for _, k := range e.stores {
		name := kwStorePfx + k.Name
		t, err := e.mint(ctx, storeServer(name, lab.ModeLocalKEK, k, "--kek-max-uses", strconv.Itoa(perKEK)), 1, perKEK)
		if err != nil {
			return err
		}
		if t.KEKs != o.stormKEKs {
			return fmt.Errorf("%s: minting made %d local KEKs, want %d", name, t.KEKs, o.stormKEKs)
		}
		t.Name, t.Start = name, e.remoteCounting(k, e.starter(storeServer(name, lab.ModeLocalKEK, k)))
		pname := perCallPfx + k.Name
		pc, err := e.mint(ctx, storeServer(pname, lab.ModePerCall, k), 16, 0)
		if err != nil {
			return err
		}
		pc.Name, pc.Start = pname, e.remoteCounting(k, e.starter(storeServer(pname, lab.ModePerCall, k)))
		targets = append(targets, t, pc)
	}
	res, err := bench.Storm(ctx, bench.StormConfig{Concurrency: o.stormConc, Rounds: o.stormRounds, Progress: stdout}, targets...)
	if err != nil {
		return err
	}
	r.Storm = res
	for _, s := range res[1:] {
		r.StormComparisons = append(r.StormComparisons, bench.CompareStorm(s, res[0]))
	}
	return nil
}

func checks(o *options, stores []*rig.Keystore, r *bench.Report) []bench.Check {
	var cs []bench.Check
	nan := func(c *bench.Comparison, f func(*bench.Comparison) float64) float64 {
		if c == nil {
			return math.NaN()
		}
		return f(c)
	}
	p50 := func(c *bench.Comparison) float64 { return c.P50Ratio }
	tput := func(c *bench.Comparison) float64 { return c.TputRatio }
	bound := func(c *bench.Comparison) float64 {
		if c.BoundRatio == 0 {
			return math.NaN()
		}
		return c.BoundRatio
	}
	// aa says what the same statistic gave for floor-2 against floor: the
	// noise this run could not tell from a difference.
	aa := func(op string, conc int, f func(*bench.Comparison) float64) string {
		c := r.Comparison(floor2Name, floorName, op, conc)
		if c == nil {
			return ""
		}
		return fmt.Sprintf("A/A control (floor-2 / floor) at the same point: %.3f", f(c))
	}
	if r.Sweep != nil {
		// A concurrency left out of the sweep (--conc) has no check, rather
		// than a ratio of 0.
		for _, op := range o.ops {
			if slices.Contains(o.conc, 1) {
				cs = append(cs, bench.GateSocketP50.Check(op+" p50 / floor, concurrency 1", nan(r.Comparison(kwName, floorName, op, 1), p50), aa(op, 1, p50)))
			}
		}
		for _, op := range o.ops {
			cs = append(cs, bench.GateSocketThroughput.Check(op+" throughput / floor, concurrency 64", nan(r.Comparison(kwName, floorName, op, 64), tput), aa(op, 64, tput)))
		}
		for _, op := range o.ops {
			cs = append(cs, bench.GateSocketThroughput.Check(op+" CPU-bound throughput / floor, concurrency 64 (from CPU per call, client + server)",
				nan(r.Comparison(kwName, floorName, op, 64), bound), aa(op, 64, bound)))
		}
		if o.slowDelay > 0 {
			for _, op := range o.ops {
				cs = append(cs, bench.GateSlowKeystore.Check(fmt.Sprintf("%s throughput, keystore +%s / fast keystore, concurrency 64", op, o.slowDelay),
					nan(r.Comparison(slowName, kwName, op, 64), tput), ""))
			}
		}
		for _, m := range r.Memory {
			if m.Target == kwName {
				cs = append(cs, bench.GateIdleRSS.Check("keywarden VmRSS idle", bench.MiB(m.Idle.RSS),
					fmt.Sprintf("after start, one Encrypt and one Decrypt, and a pause; of it RssAnon %.1f MiB, RssFile %.1f MiB (the executable's pages)", bench.MiB(m.Idle.Anon), bench.MiB(m.Idle.File))))
			}
		}
		var peak int64
		for _, op := range o.ops {
			if c := r.Sweep.Cell(kwName, op, 64); c != nil {
				peak = max(peak, c.RSSPeakKiB)
			}
		}
		if peak > 0 {
			cs = append(cs, bench.GatePeakRSS.Check("keywarden VmRSS peak at concurrency 64", bench.MiB(peak), "sampled every 20 ms during every round"))
		}
		for _, k := range stores {
			kw := kwStorePfx + k.Name
			for _, op := range o.ops {
				cs = append(cs, bench.GateKeystoreThroughput.Check(fmt.Sprintf("%s: %s throughput / %s, concurrency 64", kw, op, kwFileName),
					nan(r.Comparison(kw, kwFileName, op, 64), tput), aa(op, 64, tput)))
			}
			for _, op := range o.ops {
				cs = append(cs, perCallGate(k).Check(fmt.Sprintf("%s: %s throughput / %s%s, concurrency 64", kw, op, perCallPfx, k.Name),
					nan(r.Comparison(kw, perCallPfx+k.Name, op, 64), tput), ""))
			}
		}
	}
	for _, s := range r.Storm {
		if s.Target != kwName && s.Target != slowName && (s.KEKs == 0 || !strings.HasPrefix(s.Target, kwStorePfx)) {
			continue
		}
		worst, worstRemote := int64(0), int64(-1)
		for _, x := range s.Rounds {
			worst = max(worst, x.KeystoreCalls)
			worstRemote = max(worstRemote, x.RemoteCalls)
		}
		gate := bench.GateStormKeystoreCalls.At(float64(s.KEKs))
		cs = append(cs, gate.Check(fmt.Sprintf("%s: keystore calls for a cold storm of %d Decrypts over %d KEKs (worst round)", s.Target, s.Decrypts, s.KEKs),
			float64(worst), ""))
		if worstRemote >= 0 {
			cs = append(cs, gate.Check(fmt.Sprintf("%s: Decrypt requests reaching the keystore server in that storm (worst round)", s.Target),
				float64(worstRemote), "counted by the emulator itself"))
		}
	}
	return cs
}

// minPublishRounds is the fewest sweep rounds whose medians docs/benchmarks.md
// may quote; a shorter run says so in its report.
const minPublishRounds = 5

func meta(start time.Time, o *options) bench.Meta {
	m := bench.DefaultMeta(start)
	m.Conns = o.conns
	m.Command = strings.TrimSpace("go run ./bench/cmd/kwbench " + strings.Join(o.args, " "))
	if o.rounds < minPublishRounds {
		m.Notes = append(m.Notes, fmt.Sprintf("**Only %d rounds: not for publishing.** A median of per-round ratios needs at least %d rounds to mean anything on a shared machine.", o.rounds, minPublishRounds))
	}
	if o.slowDelay > 0 {
		m.Notes = append(m.Notes, fmt.Sprintf("%s and %s run the benchmark-only kwlab server with %s added to every keystore call; %s calls the keystore on every request (no local KEK).",
			slowName, perCallName, o.slowDelay, perCallName))
	}
	if o.aa {
		m.Notes = append(m.Notes, floor2Name+" is a second, identical floor process: its ratios to floor are this run's noise, the resolution of every other ratio.")
	}
	if len(o.keystores) > 0 {
		m.Notes = append(m.Notes, kwFileName+" and every "+kwStorePfx+"<keystore> run kwlab --mode local-kek (keywarden's kms.Service and interceptors, as cmd/keywarden wires them) over the file keystore and over each root keystore; "+
			perCallPfx+"<keystore> runs kwlab --mode per-call (one keystore call per request) over the same keystore. Ratios between them are same-binary, same-run.")
		for _, ks := range o.keystores {
			switch {
			case ks.uri != "":
				m.Notes = append(m.Notes, fmt.Sprintf("keystore %s: %s", ks.name, redactURI(ks.uri)))
			case ks.name == "pkcs11":
				m.Notes = append(m.Notes, "keystore pkcs11: a SoftHSM2 token made for the run (file object store in a temporary directory), opened by each server process through the PKCS#11 module.")
			case ks.name == "aws":
				m.Notes = append(m.Notes, "keystore aws: local-kms (an AWS KMS emulator) served on 127.0.0.1 inside kwbench's own process, so its CPU is counted as client CPU for the aws targets: their CPU-bound ratios mean nothing. The emulator answers in well under a millisecond, far faster than AWS KMS over a network.")
			case ks.name == "vault":
				m.Notes = append(m.Notes, "keystore vault: a Transit aes256-gcm96 key on a Vault dev server (in memory) on 127.0.0.1, a token with keywarden's least-privilege policy.")
			}
		}
	}
	if o.bare {
		m.Notes = append(m.Notes, bareName+" is a diagnostic: keywarden's kms.Service served without its interceptors (metrics, logging, recovery); keywarden never runs so.")
	}
	return m
}

package faults

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/kms"
	"github.com/keywarden/keywarden/kms/kmsgrpc"
	"github.com/keywarden/keywarden/metrics"
)

// fault is one row of the matrix.
type fault int

const (
	fNone fault = iota
	fHang
	fRefused
	fLatency
	fThrottled
	fServerError
	fCredsRevoked
	fKeyDisabled
	fKeyDeleted
	fTokenRemoved
	fDiskFull
	fClockForward
	fClockBack
	fHangPastAge
)

var faults = []fault{fNone, fHang, fRefused, fLatency, fThrottled, fServerError, fCredsRevoked, fKeyDisabled, fKeyDeleted, fTokenRemoved, fDiskFull, fClockForward, fClockBack, fHangPastAge}

func (f fault) String() string {
	return [...]string{
		"none (baseline)", "hang", "connection refused", "2 s latency", "throttled", "server error (5xx)",
		"credentials revoked", "key disabled", "key deleted", "token removed", "disk full (state file)",
		"clock +30 days", "clock −1 hour", "hang, KEK past its max age",
	}[f]
}

// testName is the row's name as a subtest name: letters, digits and
// underscores only, since it also names the test's temporary directories,
// and their paths go into keystore URIs.
func (f fault) testName() string {
	return strings.Trim(strings.Map(func(r rune) rune {
		switch {
		case r == '+':
			return 'p'
		case r == '−':
			return 'm'
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, f.String()), "_")
}

// Clock jumps, in keywarden's injected clock (kms.Config.Now) only.
const (
	clockForward = 30 * 24 * time.Hour // past the default --kek-max-age (7 days)
	clockBack    = -time.Hour
)

// row is what one cell recorded.
type row struct {
	na                           string // the footnote, if the fault does not apply
	encrypt, warm, cold, startup string
	status, readyz               string
	// took is the measured durations, for the log (the cells hold buckets).
	took []time.Duration
}

var kinds = []keystoreKind{fileKeystore, pkcs11Keystore, vaultKeystore, awsKeystore}

// TestFaultMatrix runs every fault against every keystore it applies to and
// compares the table with docs/reliability.md.
//
// Cells run concurrently, at most maxConcurrentCells at a time (their time
// is mostly spent waiting on timeouts; t.Run from goroutines rather than
// t.Parallel, so that go test's -parallel, 2 on a 2-core CI machine, does
// not serialise the waits). The PKCS#11 cells run one after another: they
// share this process's SoftHSM2 module and one token.
func TestFaultMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault matrix takes a few minutes; not with -short")
	}
	var (
		mu     sync.Mutex
		tables = map[string]string{}
		sem    = make(chan struct{}, maxConcurrentCells)
		all    sync.WaitGroup
	)
	for _, ks := range kinds {
		all.Go(func() {
			t.Run(ks.name, func(t *testing.T) {
				if why := ks.missing(); why != "" {
					if ks.require != "" && os.Getenv(ks.require) != "" {
						t.Fatalf("%s is set, but %s", ks.require, why)
					}
					t.Skipf("%s (set %s=1 to make this a failure)", why, ks.require)
				}
				rows := make([]row, len(faults))
				var cells sync.WaitGroup
				for i, f := range faults {
					if why, ok := ks.na[f]; ok {
						rows[i] = row{na: why}
						continue
					}
					cell := func() {
						sem <- struct{}{}
						defer func() { <-sem }()
						t.Run(f.testName(), func(t *testing.T) {
							begin := time.Now()
							if f == fClockForward || f == fClockBack || f == fHangPastAge {
								rows[i] = runClockCell(t, ks, f)
							} else {
								rows[i] = runCell(t, ks, f)
							}
							t.Logf("%s / %s: %+v (%.1fs)", ks.name, f, rows[i], time.Since(begin).Seconds())
						})
					}
					if ks.sequential {
						cell()
					} else {
						cells.Go(cell)
					}
				}
				cells.Wait()
				// A cell whose row differs from the documented one is
				// measured once more: a loaded machine can push one answer
				// over a bucket's edge, and a real change differs twice
				// (except the cells that cannot run twice, ks.once).
				if !t.Failed() {
					documented := docRows(ks.name)
					for i, f := range faults {
						if rows[i].na != "" || rows[i].startup == "" || ks.once[f] || i >= len(documented) || renderRow(f, rows[i]) == documented[i] {
							continue
						}
						t.Run(f.testName()+"-again", func(t *testing.T) {
							t.Logf("%s / %s differs from %s; measuring again", ks.name, f, docPath)
							sem <- struct{}{}
							defer func() { <-sem }()
							if f == fClockForward || f == fClockBack || f == fHangPastAge {
								rows[i] = runClockCell(t, ks, f)
							} else {
								rows[i] = runCell(t, ks, f)
							}
						})
					}
				}
				// A -run filter may have left cells out: such a table is
				// neither checked nor written.
				complete := !slices.ContainsFunc(rows, func(r row) bool { return r.na == "" && r.startup == "" })
				if !t.Failed() && complete {
					mu.Lock()
					tables[ks.name] = renderTable(ks.name, rows)
					mu.Unlock()
				}
			})
		})
	}
	all.Wait()
	if t.Failed() {
		return
	}
	checkDoc(t, tables)
}

// maxConcurrentCells bounds the keywardens alive at once, so that start-up
// times stay in their buckets on a loaded 2-core machine.
const maxConcurrentCells = 4

// runCell measures one fault on a keywarden process: started healthy, one
// Encrypt made (its response is the warm Decrypt's request), the fault
// injected, the check loop waited for, then every call once; then a new
// keywarden started under the fault with the same state file.
func runCell(t *testing.T, ks keystoreKind, f fault) row {
	c := ks.newCell(t, f)
	stateDir := t.TempDir()
	if f == fDiskFull {
		mountTiny(t, stateDir)
	}
	stateFile := filepath.Join(stateDir, "state.json")
	cold := coldRequest(t, c.uri)

	p := start(t, c.uri, stateFile)
	warm, o := p.encrypt()
	if o.code != codes.OK {
		t.Fatalf("Encrypt before the fault: %v", o)
	}
	all0, failed0 := p.checks()
	inject(t, c, f, stateDir)
	p.afterChecks(all0, failed0)

	var r row
	_, enc := p.encrypt()
	warmD, coldD := p.decrypt(decryptRequest(warm)), p.decrypt(cold)
	r.encrypt, r.warm, r.cold = enc.String(), warmD.String(), coldD.String()
	r.took = []time.Duration{enc.d, warmD.d, coldD.d}
	r.status = p.status()
	r.readyz = p.readyz()
	p.stop()

	var took time.Duration
	r.startup, took = startUnder(t, c.uri, stateFile)
	r.took = append(r.took, took)
	return r
}

func inject(t *testing.T, c *cellKeystore, f fault, stateDir string) {
	t.Helper()
	need := func(ok bool) {
		if !ok {
			t.Fatalf("%s: the keystore has no way to inject it, yet it is not marked n/a", f)
		}
	}
	switch f {
	case fNone:
	case fHang, fRefused, fLatency, fThrottled, fServerError:
		need(c.proxy != nil)
		c.proxy.set(map[fault]proxyMode{fHang: hang, fRefused: refuse, fLatency: slow, fThrottled: throttle, fServerError: serverErr}[f])
	case fCredsRevoked:
		need(c.revoke != nil)
		c.revoke(t)
	case fKeyDisabled, fKeyDeleted:
		need(c.retire != nil)
		c.retire(t, f == fKeyDeleted)
	case fTokenRemoved:
		need(c.removeToken != nil)
		c.removeToken(t)
	case fDiskFull:
		fill(t, stateDir)
	default:
		t.Fatalf("%s is not injected in a process", f)
	}
}

// startUnder starts keywarden under the fault and reports the first
// Encrypt's code and the time from exec until it answered (or how start-up
// ended).
func startUnder(t *testing.T, uri, stateFile string) (string, time.Duration) {
	begin := time.Now()
	p := launch(t, uri, stateFile)
	defer p.stop()
	err := p.serving(begin.Add(startTimeout))
	switch {
	case errors.Is(err, errNotServing):
		return fmt.Sprintf("not serving after %s", startTimeout), time.Since(begin)
	case err != nil:
		code := -1
		var ee *exec.ExitError
		if errors.As(p.err, &ee) {
			code = ee.ExitCode()
		}
		d := time.Since(begin)
		return fmt.Sprintf("exit %d %s", code, bucket(d)), d
	}
	_, o := p.encrypt()
	o.d = time.Since(begin)
	return o.code.String() + " " + bucket(o.d), o.d
}

// coldRequest is a DecryptRequest under a local KEK that the keywarden of
// the cell has never seen: made by another kms.Service on the same root
// key, in this process, before the fault.
func coldRequest(t *testing.T, uri string) *kmsapi.DecryptRequest {
	t.Helper()
	ctx := context.Background()
	b, err := byuri.Open(ctx, uri)
	if err != nil {
		t.Fatalf("open %s: %v", redact(uri), err)
	}
	defer b.Close()
	svc, err := kms.New(ctx, kms.Config{Backend: b, KeystoreTimeout: keystoreTimeout})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := svc.Encrypt(ctx, "faults-cold", seed)
	if err != nil {
		t.Fatalf("Encrypt for the cold ciphertext: %v", err)
	}
	return &kmsapi.DecryptRequest{Uid: "faults-cold", Ciphertext: resp.Ciphertext, KeyId: resp.KeyID, Annotations: resp.Annotations}
}

// mountTiny mounts a 256 KiB tmpfs on dir for the state file. The matrix
// needs root for it; without a mount the disk-full cell cannot be made
// (a symlink to /dev/full would not do: the state file is written to a
// temporary file and renamed over the path, so a symlink is replaced,
// never followed).
func mountTiny(t *testing.T, dir string) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=256k,mode=0700"); err != nil {
		t.Fatalf("mount a tmpfs for the disk-full cell (needs root, CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fill writes a file on dir's file system until it is full.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatalf("fill %s: %v", dir, err)
		}
	}
}

// ---- clock jumps: in-process ----

// inProcess is a kms.Service built as cmd/keywarden builds it, with an
// injected clock, served by kmsgrpc on a unix socket and by the metrics
// handler on HTTP. A process's clock cannot be moved without moving the
// machine's; kms.Config.Now can.
type inProcess struct {
	target
	stop func()
}

func serveInProcess(t *testing.T, uri, stateFile string, now func() time.Time) (*inProcess, error) {
	ctx, cancel := context.WithCancel(context.Background())
	b, err := byuri.Open(ctx, uri)
	if err != nil {
		cancel()
		return nil, err
	}
	m := metrics.New()
	svc, err := kms.New(ctx, kms.Config{
		Backend: b, Metrics: m, CheckInterval: checkInterval, KeystoreTimeout: keystoreTimeout, RevalidateInterval: revalidateInterval,
		Grace: grace, StateFile: stateFile, Now: now,
	})
	if err != nil {
		cancel()
		b.Close()
		return nil, err
	}
	sock := filepath.Join(t.TempDir(), "kms.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		cancel()
		b.Close()
		return nil, err
	}
	srv := kmsgrpc.NewServer(svc, kmsgrpc.Options{Metrics: m})
	go func() { _ = srv.Serve(ln) }()
	hs := httptest.NewServer(metrics.Handler(m, svc.Healthy))
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ip := &inProcess{target: target{client: kmsapi.NewKeyManagementServiceClient(conn), httpURL: hs.URL}}
	var once sync.Once
	ip.stop = func() {
		once.Do(func() {
			conn.Close()
			srv.Stop()
			hs.Close()
			cancel()
			<-done
			b.Close()
		})
	}
	t.Cleanup(ip.stop)
	return ip, nil
}

func runClockCell(t *testing.T, ks keystoreKind, f fault) row {
	c := ks.newCell(t, f)
	stateFile := filepath.Join(t.TempDir(), "state.json")
	cold := coldRequest(t, c.uri)
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }

	ip, err := serveInProcess(t, c.uri, stateFile, now)
	if err != nil {
		t.Fatal(err)
	}
	warm, o := ip.encrypt()
	if o.code != codes.OK {
		t.Fatalf("Encrypt before the jump: %v", o)
	}
	jump := clockForward
	if f == fClockBack {
		jump = clockBack
	}
	all0, failed0 := ip.checks()
	if f == fHangPastAge {
		// The keystore hangs, then the local KEK passes --kek-max-age:
		// the next Encrypt is due to make a new KEK it cannot wrap.
		if c.proxy == nil {
			t.Fatalf("%s: no proxy, yet not marked n/a", f)
		}
		c.proxy.set(hang)
		ip.afterChecks(all0, failed0)
		all0, failed0 = ip.checks()
	}
	offset.Store(int64(jump))
	ip.afterChecks(all0, failed0)

	var r row
	_, enc := ip.encrypt()
	warmD, coldD := ip.decrypt(decryptRequest(warm)), ip.decrypt(cold)
	r.encrypt, r.warm, r.cold = enc.String(), warmD.String(), coldD.String()
	r.took = []time.Duration{enc.d, warmD.d, coldD.d}
	r.status = ip.status()
	r.readyz = ip.readyz()
	ip.stop()

	// Start-up with the clock already jumped, on the state file written
	// before the jump.
	begin := time.Now()
	ip2, err := serveInProcess(t, c.uri, stateFile, now)
	if err != nil {
		r.startup = "error " + bucket(time.Since(begin))
		return r
	}
	_, o = ip2.encrypt()
	d := time.Since(begin)
	r.startup = o.code.String() + " " + bucket(d)
	r.took = append(r.took, d)
	ip2.stop()
	return r
}

// ---- the table ----

var columns = []string{"fault", "warm Encrypt", "warm Decrypt", "cold Decrypt", "Status", "/readyz", "start-up"}

// footnote labels, in the order they are listed.
var notes = []struct{ label, text string }{
	{"local", naLocal},
	{"nocreds", naNoCreds},
	{"hsm", naInProcess},
	{"localkms", naLocalKMS},
	{"tokens", naPKCS11Only},
}

func noteLabel(text string) string {
	for _, n := range notes {
		if n.text == text {
			return n.label
		}
	}
	return "?"
}

func renderTable(name string, rows []row) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(columns, " | ") + " |\n|")
	for range columns {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for i, f := range faults {
		b.WriteString(renderRow(f, rows[i]) + "\n")
	}
	return b.String()
}

// renderRow is one line of a table, without its newline.
func renderRow(f fault, r row) string {
	cells := []string{f.String()}
	if r.na != "" {
		cells = append(cells, "n/a [^"+noteLabel(r.na)+"]", "n/a", "n/a", "n/a", "n/a", "n/a")
	} else {
		cells = append(cells, r.encrypt, r.warm, r.cold, r.status, r.readyz, r.startup)
	}
	return "| " + strings.Join(cells, " | ") + " |"
}

// docRows returns the fault rows of name's table in docs/reliability.md,
// in order (nil if the document or the block is missing: checkDoc says so).
func docRows(name string) []string {
	b, err := os.ReadFile(docPath)
	if err != nil {
		return nil
	}
	doc := string(b)
	begin, end := markers(name)
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i < 0 || j < i {
		return nil
	}
	lines := strings.Split(strings.TrimSuffix(doc[i+len(begin):j], "\n"), "\n")
	if len(lines) < 2 {
		return nil
	}
	return lines[2:] // after the header and its rule
}

func renderNotes() string {
	var b strings.Builder
	for _, n := range notes {
		fmt.Fprintf(&b, "[^%s]: %s\n", n.label, n.text)
	}
	return b.String()
}

const docPath = "../../docs/reliability.md"

func markers(name string) (begin, end string) {
	return "<!-- faults:" + name + ":begin (generated by test/faults; do not edit) -->\n", "<!-- faults:" + name + ":end -->"
}

// checkDoc compares each generated block with docs/reliability.md, or
// rewrites it with -update.
func checkDoc(t *testing.T, tables map[string]string) {
	b, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	blocks := map[string]string{"notes": renderNotes()}
	for k, v := range tables {
		blocks[k] = v
	}
	names := []string{"notes"}
	for _, ks := range kinds {
		names = append(names, ks.name)
	}
	for _, name := range names {
		want, ok := blocks[name]
		if !ok {
			t.Logf("%s did not run in full: its table in %s is neither checked nor rewritten", name, docPath)
			continue
		}
		begin, end := markers(name)
		i := strings.Index(doc, begin)
		j := strings.Index(doc, end)
		if i < 0 || j < i {
			t.Errorf("%s has no %q ... %q block", docPath, strings.TrimSpace(begin), end)
			continue
		}
		got := doc[i+len(begin) : j]
		if got == want {
			continue
		}
		if *update {
			doc = doc[:i+len(begin)] + want + doc[j:]
			continue
		}
		t.Errorf("the %s fault table in %s differs from what the code does (- doc, + code); if that is intended, regenerate it with\n\tmake faults-update\n%s", name, docPath, lineDiff(got, want))
	}
	if *update && !t.Failed() {
		if err := os.WriteFile(docPath, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// lineDiff lists the lines of a and b that differ, by position: the tables
// have one line per fault, so a changed cell is one -/+ pair.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var d strings.Builder
	for i := range max(len(al), len(bl)) {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			fmt.Fprintf(&d, "- %s\n+ %s\n", x, y)
		}
	}
	return d.String()
}

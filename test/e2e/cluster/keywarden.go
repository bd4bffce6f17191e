package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// KeyVersion is one root key version as `kmsctl keys list -o json` prints it.
type KeyVersion struct {
	KeyID   string `json:"keyID"`
	State   string `json:"state"`
	Primary bool   `json:"primary"`
}

// Keyset is keywarden's root keystore, managed with kmsctl: a file keystore
// (a Tink keyset, NewKeyset), or any keystore keywarden opens by URI
// (NewKeystore: PKCS#11, Vault Transit, AWS KMS, ...).
type Keyset struct {
	// Path is the keyset file's absolute path; "" if the keystore is not a
	// file.
	Path string
	// Env ("KEY=value") is added to the environment of keywarden and of
	// kmsctl when they open this keystore: SOFTHSM2_CONF, AWS credentials.
	Env   []string
	uri   string
	tools Tools
}

// NewKeyset makes a keyset with one primary root key version in a fresh
// working directory, with `kmsctl keys init`.
func NewKeyset(t testing.TB, tools Tools) *Keyset {
	t.Helper()
	k := &Keyset{Path: filepath.Join(workDir(t, "keys"), "keyset.json"), tools: tools}
	if _, err := k.kmsctl(context.Background(), "keys", "init"); err != nil {
		t.Fatal(err)
	}
	return k
}

// NewKeystore names the keystore at uri, which keywarden and kmsctl open
// with env added to their environment. Nothing is created: the key must
// exist, or be made with Init.
func NewKeystore(tools Tools, uri string, env ...string) *Keyset {
	return &Keyset{uri: uri, Env: env, tools: tools}
}

// URI is the keystore URI keywarden and kmsctl open.
func (k *Keyset) URI() string {
	if k.uri != "" {
		return k.uri
	}
	return "file://" + k.Path
}

// Init creates the keystore's first, primary root key version with `kmsctl
// keys init`.
func (k *Keyset) Init(ctx context.Context) (KeyVersion, error) {
	out, err := k.kmsctl(ctx, "keys", "init")
	if err != nil {
		return KeyVersion{}, err
	}
	var vs []KeyVersion
	if err := json.Unmarshal(out, &vs); err != nil || len(vs) != 1 {
		return KeyVersion{}, fmt.Errorf("kmsctl keys init printed %q: %v", out, err)
	}
	return vs[0], nil
}

func (k *Keyset) kmsctl(ctx context.Context, args ...string) ([]byte, error) {
	args = append(args, "--keystore", k.URI(), "-o", "json")
	return runKmsctlEnv(ctx, k.tools, k.Env, args...)
}

func runKmsctl(ctx context.Context, tools Tools, args ...string) ([]byte, error) {
	return runKmsctlEnv(ctx, tools, nil, args...)
}

func runKmsctlEnv(ctx context.Context, tools Tools, env []string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, tools.Kmsctl, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kmsctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// List returns every root key version.
func (k *Keyset) List(ctx context.Context) ([]KeyVersion, error) {
	out, err := k.kmsctl(ctx, "keys", "list")
	if err != nil {
		return nil, err
	}
	var vs []KeyVersion
	return vs, json.Unmarshal(out, &vs)
}

// Primary returns the primary version's key ID.
func (k *Keyset) Primary(ctx context.Context) (string, error) {
	vs, err := k.List(ctx)
	if err != nil {
		return "", err
	}
	for _, v := range vs {
		if v.Primary {
			return v.KeyID, nil
		}
	}
	return "", fmt.Errorf("keystore %s has no primary version", k.URI())
}

// Add adds a new root key version (enabled, not primary) and returns it.
func (k *Keyset) Add(ctx context.Context) (KeyVersion, error) {
	out, err := k.kmsctl(ctx, "keys", "add")
	if err != nil {
		return KeyVersion{}, err
	}
	var vs []KeyVersion
	if err := json.Unmarshal(out, &vs); err != nil || len(vs) != 1 {
		return KeyVersion{}, fmt.Errorf("kmsctl keys add printed %q: %v", out, err)
	}
	return vs[0], nil
}

// Promote makes keyID the primary version.
func (k *Keyset) Promote(ctx context.Context, keyID string) error {
	_, err := k.kmsctl(ctx, "keys", "promote", "--yes", keyID)
	return err
}

// CopyTo installs a copy of the keyset at path, atomically (a temporary
// file renamed over it), mode 0600: what distributing a keyset to another
// control-plane node does.
func (k *Keyset) CopyTo(path string) (*Keyset, error) {
	if k.Path == "" {
		return nil, fmt.Errorf("keystore %s is not a file: there is nothing to copy", k.URI())
	}
	b, err := os.ReadFile(k.Path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	return &Keyset{Path: abs(path), tools: k.tools}, nil
}

// KeywardenOptions configures StartKeywarden.
type KeywardenOptions struct {
	// Keyset is the root keystore. Required.
	Keyset *Keyset
	// CheckInterval is keywarden's --check-interval; default 1s, so a
	// promotion reaches Status quickly.
	CheckInterval time.Duration
	// StateFile keeps the wrapped local KEK across restarts (--state-file).
	StateFile bool
	// ExtraArgs are appended to keywarden's command line.
	ExtraArgs []string
}

// Keywarden is a keywarden process serving KMS v2 on a unix socket.
type Keywarden struct {
	// Socket is the KMS v2 endpoint, unix:///….
	Socket string
	// MetricsURL is the base URL of /metrics, /healthz and /readyz.
	MetricsURL string
	// LogPath is keywarden's log file (all runs, appended).
	LogPath string

	opts  KeywardenOptions
	tools Tools
	dir   string
	port  int
	p     *proc
}

// StartKeywarden starts keywarden on a socket in a fresh directory and a
// free metrics port, waits for the socket and for /readyz, and stops it at
// cleanup.
func StartKeywarden(t testing.TB, tools Tools, opts KeywardenOptions) *Keywarden {
	t.Helper()
	if opts.Keyset == nil {
		t.Fatal("cluster: KeywardenOptions.Keyset is required")
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = time.Second
	}
	dir := workDir(t, "kw")
	k := &Keywarden{
		Socket:  "unix://" + filepath.Join(dir, "run", "kms.sock"),
		LogPath: filepath.Join(dir, "keywarden.log"),
		opts:    opts,
		tools:   tools,
		dir:     dir,
		port:    mustPort(t),
	}
	k.MetricsURL = "http://" + hostPort(k.port)
	logOnFailure(t, "keywarden", k.LogPath)
	t.Cleanup(func() { k.p.stop(20 * time.Second) })
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	return k
}

// StatePath is the --state-file path ("" without StateFile). Removing the
// file before Start makes keywarden mint a new local KEK.
func (k *Keywarden) StatePath() string {
	if !k.opts.StateFile {
		return ""
	}
	return filepath.Join(k.dir, "state.json")
}

// Keyset is the keystore this keywarden uses.
func (k *Keywarden) Keyset() *Keyset { return k.opts.Keyset }

// SetKeyset makes the next Start use ks (for example, a wrong root key).
func (k *Keywarden) SetKeyset(ks *Keyset) { k.opts.Keyset = ks }

// SetExtraArgs replaces the arguments the next Start appends to
// keywarden's command line (for example, more --keystore roots).
func (k *Keywarden) SetExtraArgs(args ...string) { k.opts.ExtraArgs = args }

// Pid is the running process's id, or 0.
func (k *Keywarden) Pid() int {
	if k.p == nil || k.p.exited() {
		return 0
	}
	return k.p.Pid()
}

// Start starts keywarden (again) and waits until it is ready. It is an
// error if it is running.
func (k *Keywarden) Start() error { return k.start(true) }

// StartUnready starts keywarden (again) and waits for its socket and for
// /healthz only, not /readyz: for a keywarden expected to start unhealthy
// (a root keystore down).
func (k *Keywarden) StartUnready() error { return k.start(false) }

func (k *Keywarden) start(ready bool) error {
	if k.Pid() != 0 {
		return fmt.Errorf("keywarden already running (pid %d)", k.Pid())
	}
	args := []string{
		"--listen", k.Socket,
		"--keystore", k.opts.Keyset.URI(),
		"--metrics-addr", hostPort(k.port),
		"--check-interval", k.opts.CheckInterval.String(),
		"--log-format", "text",
	}
	if p := k.StatePath(); p != "" {
		args = append(args, "--state-file", p)
	}
	args = append(args, k.opts.ExtraArgs...)
	p, err := startProcEnv("keywarden", k.LogPath, k.opts.Keyset.Env, k.tools.Keywarden, args...)
	if err != nil {
		return err
	}
	k.p = p
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sock := strings.TrimPrefix(k.Socket, "unix://")
	err = waitFor(ctx, p, func() error {
		if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("no socket at %s yet", sock)
		}
		if !ready {
			return k.Live(ctx)
		}
		return k.Ready(ctx)
	})
	if err != nil {
		return fmt.Errorf("keywarden not ready: %w\n%s", err, tail(k.LogPath, 20))
	}
	return nil
}

// Stop sends SIGTERM and waits (graceful drain).
func (k *Keywarden) Stop() { k.p.stop(20 * time.Second) }

// Kill sends SIGKILL and waits: the plugin dies without cleaning up its
// socket.
func (k *Keywarden) Kill() { k.p.kill() }

// Restart stops keywarden gracefully and starts it again.
func (k *Keywarden) Restart() error {
	k.Stop()
	return k.Start()
}

// Ready returns nil if keywarden's /readyz answers 200.
func (k *Keywarden) Ready(ctx context.Context) error {
	body, code, err := httpGet(ctx, http.DefaultClient, k.MetricsURL+"/readyz", "")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("keywarden /readyz: HTTP %d: %s", code, strings.TrimSpace(string(body)))
	}
	return nil
}

// Live returns nil if keywarden's /healthz answers 200.
func (k *Keywarden) Live(ctx context.Context) error {
	body, code, err := httpGet(ctx, http.DefaultClient, k.MetricsURL+"/healthz", "")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("keywarden /healthz: HTTP %d: %s", code, strings.TrimSpace(string(body)))
	}
	return nil
}

// Metrics scrapes keywarden's /metrics.
func (k *Keywarden) Metrics(ctx context.Context) (Metrics, error) {
	body, code, err := httpGet(ctx, http.DefaultClient, k.MetricsURL+"/metrics", "")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("keywarden /metrics: HTTP %d", code)
	}
	return ParseMetrics(bytes.NewReader(body))
}

// Status is keywarden's KMS Status, as `kmsctl status` reports it.
type Status struct {
	Version string `json:"version"`
	Healthz string `json:"healthz"`
	KeyID   string `json:"keyID"`
}

// Status calls the KMS Status RPC over the socket with kmsctl.
func (k *Keywarden) Status(ctx context.Context) (Status, error) {
	out, err := runKmsctl(ctx, k.tools, "status", "--socket", k.Socket, "-o", "json")
	var s Status
	if jerr := json.Unmarshal(out, &s); jerr != nil {
		if err == nil {
			err = jerr
		}
		return s, err
	}
	// kmsctl exits non-zero when unhealthy but still prints the status.
	return s, nil
}

func httpGet(ctx context.Context, c *http.Client, url, token string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return body, resp.StatusCode, err
}

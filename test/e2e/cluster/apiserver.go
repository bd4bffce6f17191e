package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// APIServerOptions configures StartAPIServer.
type APIServerOptions struct {
	// EtcdServers are etcd client URLs. Required.
	EtcdServers []string
	// Providers is the EncryptionConfiguration's provider list, in order.
	// Required: use KMSv2(name, keywarden.Socket), Identity() for the
	// usual setup.
	Providers []Provider
	// Resources are the encrypted resources; default secrets, configmaps.
	Resources []string
	// ExtraArgs are appended to kube-apiserver's command line.
	ExtraArgs []string
	// NoWait makes StartAPIServer return without waiting for /readyz.
	NoWait bool
}

// APIServer is a kube-apiserver on loopback with a static admin token.
type APIServer struct {
	// URL is https://127.0.0.1:<port>.
	URL string
	// Kubeconfig is a kubeconfig file for the admin (system:masters).
	Kubeconfig string
	// Token is the admin's bearer token.
	Token string
	// CA is the PEM of the CA that signed the serving certificate.
	CA []byte
	// Client is a clientset for the admin.
	Client *kubernetes.Clientset
	// RESTConfig is the admin's client configuration.
	RESTConfig *rest.Config
	// LogPath is kube-apiserver's log file (all runs, appended).
	LogPath string

	tools      Tools
	opts       APIServerOptions
	dir        string
	port       int
	configPath string
	http       *http.Client
	p          *proc
}

// StartAPIServer starts kube-apiserver on a free loopback port with a
// generated CA and serving certificate, service-account keys, RBAC, a
// static admin token and the given EncryptionConfiguration; waits for
// /readyz unless opts.NoWait; and stops it at cleanup. The certificates
// stay the same across restarts, so Kubeconfig and Client stay valid.
func StartAPIServer(t testing.TB, tools Tools, opts APIServerOptions) *APIServer {
	t.Helper()
	if len(opts.EtcdServers) == 0 || len(opts.Providers) == 0 {
		t.Fatal("cluster: APIServerOptions.EtcdServers and Providers are required")
	}
	if len(opts.Resources) == 0 {
		opts.Resources = []string{"secrets", "configmaps"}
	}
	dir := workDir(t, "apiserver")
	a := &APIServer{
		LogPath:    filepath.Join(dir, "kube-apiserver.log"),
		tools:      tools,
		opts:       opts,
		dir:        dir,
		port:       mustPort(t),
		configPath: filepath.Join(dir, "encryption-config.yaml"),
	}
	a.URL = "https://" + hostPort(a.port)
	if err := a.setup(); err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, "kube-apiserver", a.LogPath)
	t.Cleanup(a.Stop)
	if err := a.start(); err != nil {
		t.Fatal(err)
	}
	if !opts.NoWait {
		d, err := a.waitReady(2 * time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kube-apiserver at %s ready in %s", a.URL, d.Round(time.Millisecond))
	}
	return a
}

// setup writes the PKI, token file, encryption config and kubeconfig, and
// builds the clients.
func (a *APIServer) setup() error {
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	a.Token = hex.EncodeToString(tok)
	caPEM, certPEM, keyPEM, err := servingPKI()
	if err != nil {
		return err
	}
	a.CA = caPEM
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return err
	}
	a.Kubeconfig = filepath.Join(a.dir, "kubeconfig")
	files := map[string][]byte{
		"ca.crt":      caPEM,
		"serving.crt": certPEM,
		"serving.key": keyPEM,
		"sa.key":      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}),
		"tokens.csv":  []byte(a.Token + `,admin,admin-uid,"system:masters"` + "\n"),
		"kubeconfig":  a.kubeconfig(),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(a.dir, name), b, 0o600); err != nil {
			return err
		}
	}
	if err := a.SetProviders(a.opts.Providers...); err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	a.http = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	a.RESTConfig = &rest.Config{
		Host:            a.URL,
		BearerToken:     a.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: caPEM},
		QPS:             500,
		Burst:           1000,
		Timeout:         30 * time.Second,
	}
	a.Client, err = kubernetes.NewForConfig(a.RESTConfig)
	return err
}

func (a *APIServer) kubeconfig() []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
  - name: e2e
    cluster:
      server: %s
      certificate-authority-data: %s
users:
  - name: admin
    user:
      token: %s
contexts:
  - name: e2e
    context:
      cluster: e2e
      user: admin
      namespace: default
current-context: e2e
`, a.URL, base64.StdEncoding.EncodeToString(a.CA), a.Token)
}

// servingPKI makes a CA and a serving certificate for 127.0.0.1 and
// localhost, valid for a day.
func servingPKI() (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "keywarden-e2e-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// EncryptionConfigPath is the EncryptionConfiguration file kube-apiserver
// reads (--encryption-provider-config).
func (a *APIServer) EncryptionConfigPath() string { return a.configPath }

// SetProviders rewrites the EncryptionConfiguration; it takes effect at the
// next Start.
func (a *APIServer) SetProviders(providers ...Provider) error {
	a.opts.Providers = providers
	return os.WriteFile(a.configPath, EncryptionConfig(a.opts.Resources, providers), 0o600)
}

// Providers is the current provider list.
func (a *APIServer) Providers() []Provider { return a.opts.Providers }

func (a *APIServer) start() error {
	if a.p != nil && !a.p.exited() {
		return fmt.Errorf("kube-apiserver already running (pid %d)", a.p.Pid())
	}
	f := func(name string) string { return filepath.Join(a.dir, name) }
	args := []string{
		"--etcd-servers", strings.Join(a.opts.EtcdServers, ","),
		"--bind-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(a.port),
		"--advertise-address", "127.0.0.1",
		// A loopback advertise address is refused by the default
		// endpoint reconciler; nothing here needs the kubernetes Service.
		"--endpoint-reconciler-type", "none",
		"--cert-dir", f("certs"),
		"--tls-cert-file", f("serving.crt"),
		"--tls-private-key-file", f("serving.key"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", f("sa.key"),
		"--service-account-signing-key-file", f("sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--authorization-mode", "RBAC",
		"--token-auth-file", f("tokens.csv"),
		"--encryption-provider-config", a.configPath,
		"--profiling=false",
	}
	args = append(args, a.opts.ExtraArgs...)
	p, err := startProc("kube-apiserver", a.LogPath, a.tools.KubeAPIServer, args...)
	if err != nil {
		return err
	}
	a.p = p
	return nil
}

// Start starts kube-apiserver (again) and waits for /readyz; it returns the
// time from exec to ready.
func (a *APIServer) Start() (time.Duration, error) {
	if err := a.start(); err != nil {
		return 0, err
	}
	return a.waitReady(2 * time.Minute)
}

// StartNoWait starts kube-apiserver (again) without waiting.
func (a *APIServer) StartNoWait() error { return a.start() }

// Stop sends SIGTERM, waits up to 30 s, then SIGKILL.
func (a *APIServer) Stop() { a.p.stop(30 * time.Second) }

// Kill sends SIGKILL and waits.
func (a *APIServer) Kill() { a.p.kill() }

// Restart stops kube-apiserver and starts it again, returning the time
// from exec to /readyz.
func (a *APIServer) Restart() (time.Duration, error) {
	a.Stop()
	return a.Start()
}

// Pid is the running process's id, or 0.
func (a *APIServer) Pid() int {
	if a.p == nil || a.p.exited() {
		return 0
	}
	return a.p.Pid()
}

func (a *APIServer) waitReady(timeout time.Duration) (time.Duration, error) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := waitFor(ctx, a.p, func() error {
		code, body, err := a.Readyz(ctx, "")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/readyz: HTTP %d: %s", code, FailingChecks(body))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("kube-apiserver not ready: %w", err)
	}
	return time.Since(began), nil
}

// WaitReady polls /readyz until it answers 200 or timeout passes.
func (a *APIServer) WaitReady(timeout time.Duration) error {
	_, err := a.waitReady(timeout)
	return err
}

// Readyz GETs /readyz, or /readyz/<check> if check is not empty (as
// "kms-providers"), with ?verbose, and returns the status and body.
func (a *APIServer) Readyz(ctx context.Context, check string) (int, string, error) {
	return a.getPath(ctx, "/readyz", check)
}

// Livez GETs /livez or /livez/<check>.
func (a *APIServer) Livez(ctx context.Context, check string) (int, string, error) {
	return a.getPath(ctx, "/livez", check)
}

func (a *APIServer) getPath(ctx context.Context, base, check string) (int, string, error) {
	path := base
	if check != "" {
		path += "/" + check
	}
	body, code, err := httpGet(ctx, a.http, a.URL+path+"?verbose", a.Token)
	return code, string(body), err
}

// Metrics scrapes kube-apiserver's /metrics as the admin.
func (a *APIServer) Metrics(ctx context.Context) (Metrics, error) {
	body, code, err := httpGet(ctx, a.http, a.URL+"/metrics", a.Token)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("kube-apiserver /metrics: HTTP %d", code)
	}
	return ParseMetrics(strings.NewReader(string(body)))
}

// Kubectl runs the real kubectl against this apiserver with stdin (may be
// empty) and returns its stdout; a non-zero exit is an error carrying
// stderr.
func (a *APIServer) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	args = append([]string{"--kubeconfig", a.Kubeconfig, "--cache-dir", filepath.Join(a.dir, "kubectl-cache")}, args...)
	cmd := exec.CommandContext(ctx, a.tools.Kubectl, args...)
	cmd.Env = append(os.Environ(), "HOME="+a.dir, "KUBECONFIG="+a.Kubeconfig)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return stdout.String(), fmt.Errorf("kubectl %s: exit %d: %s", strings.Join(args[4:], " "), ee.ExitCode(), strings.TrimSpace(stderr.String()))
		}
		return stdout.String(), fmt.Errorf("kubectl %s: %w", strings.Join(args[4:], " "), err)
	}
	return stdout.String(), nil
}

// Log returns kube-apiserver's log so far.
func (a *APIServer) Log() string {
	f, err := os.Open(a.LogPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	return string(b)
}

// FailingChecks picks the failed checks ("[-]…" lines) out of a verbose
// /readyz or /livez body.
func FailingChecks(body string) string {
	var failed []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "[-]") {
			failed = append(failed, strings.TrimSpace(l))
		}
	}
	if len(failed) == 0 {
		return strings.TrimSpace(body)
	}
	return strings.Join(failed, "; ")
}

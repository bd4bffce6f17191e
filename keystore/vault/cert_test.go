package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/keystore"
)

// TestCertAuth logs in with a TLS client certificate. It starts a second
// dev server of its own (the binary test/vault/tools/build.sh built) with a
// TLS listener on 127.0.0.1 that asks for client certificates, since the
// shared dev server speaks plain HTTP.
func TestCertAuth(t *testing.T) {
	needServer(t)
	bin := os.Getenv("KEYWARDEN_VAULT_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../../test/vault/tools/bin/vault")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv(requireEnv) != "" {
			t.Fatalf("%s is set but there is no vault binary at %s (KEYWARDEN_VAULT_BIN)", requireEnv, bin)
		}
		t.Skipf("no vault binary at %s", bin)
	}
	dir := t.TempDir()
	ca, caKey := newCert(t, nil, nil, "keywarden test CA", true)
	srvCert, srvKey := newCert(t, ca, caKey, "127.0.0.1", false)
	cliCert, cliKey := newCert(t, ca, caKey, "keywarden", false)
	write := func(name string, blocks ...*pem.Block) string {
		p := filepath.Join(dir, name)
		var b []byte
		for _, blk := range blocks {
			b = append(b, pem.EncodeToMemory(blk)...)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", certBlock(ca))
	srvCertFile, srvKeyFile := write("srv.pem", certBlock(srvCert)), write("srv-key.pem", keyBlock(t, srvKey))
	cliCertFile, cliKeyFile := write("cli.pem", certBlock(cliCert)), write("cli-key.pem", keyBlock(t, cliKey))
	devAddr, tlsAddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "tls.hcl")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `listener "tcp" {
  address = %q
  tls_cert_file = %q
  tls_key_file = %q
  tls_client_ca_file = %q
}
`, tlsAddr, srvCertFile, srvKeyFile, caFile), 0o600); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "server", "-dev", "-dev-root-token-id=root", "-dev-no-store-token",
		"-dev-listen-address="+devAddr, "-config="+cfg)
	cmd.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}
	logf, err := os.Create(filepath.Join(dir, "vault.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("vault log:\n%s", b)
		}
	})

	acfg := api.DefaultConfig()
	acfg.Address = "http://" + devAddr
	admin, err := api.NewClient(acfg)
	if err != nil {
		t.Fatal(err)
	}
	admin.SetToken("root")
	ready := false
	for range 100 {
		if _, err := admin.Sys().Health(); err == nil {
			ready = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !ready {
		t.Fatal("TLS dev server did not come up")
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.Sys().Mount("transit", &api.MountInput{Type: "transit"}))
	_, err = admin.Logical().Write("transit/keys/kw", map[string]any{"type": "aes256-gcm96"})
	must(err)
	must(admin.Sys().PutPolicy("kw", `
path "transit/encrypt/kw" { capabilities = ["update"] }
path "transit/decrypt/kw" { capabilities = ["update"] }
path "transit/keys/kw"    { capabilities = ["read"] }`))
	must(admin.Sys().EnableAuthWithOptions("cert", &api.EnableAuthOptions{Type: "cert"}))
	caPEM, _ := os.ReadFile(caFile)
	_, err = admin.Logical().Write("auth/cert/certs/keywarden", map[string]any{"certificate": string(caPEM), "token_policies": "kw", "token_ttl": "1h"})
	must(err)

	ctx := context.Background()
	uri := "hcvault://" + tlsAddr + "/transit/keys/kw?auth=cert&cert-role=keywarden&ca-file=" + caFile +
		"&cert-file=" + cliCertFile + "&key-file=" + cliKeyFile
	b, err := Open(ctx, uri)
	if err != nil {
		t.Fatalf("Open with a client certificate: %v", err)
	}
	pt := []byte("0123456789abcdef0123456789abcdef")
	w, err := b.Wrap(ctx, pt, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.Unwrap(ctx, w, []byte("a")); err != nil || string(got) != string(pt) {
		t.Fatalf("Unwrap: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// A server certificate from another CA is a configuration error, not an
	// outage.
	other, _ := newCert(t, nil, nil, "another CA", true)
	bad := "hcvault://" + tlsAddr + "/transit/keys/kw?auth=cert&ca-file=" + write("other.pem", certBlock(other)) +
		"&cert-file=" + cliCertFile + "&key-file=" + cliKeyFile
	if _, err := Open(ctx, bad); !errors.Is(err, keystore.ErrConfig) {
		t.Fatalf("Open against an untrusted server certificate: %v, want ErrConfig", err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	if ip := net.ParseIP(cn); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func certBlock(c *x509.Certificate) *pem.Block { return &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw} }

func keyBlock(t *testing.T, k *ecdsa.PrivateKey) *pem.Block {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
}

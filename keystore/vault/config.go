package vault

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/internal/remote"
)

// Scheme is the URI scheme of this backend (Tink's prefix for Vault).
const Scheme = "hcvault"

type authMethod string

const (
	authToken   authMethod = "token"
	authAppRole authMethod = "approle"
	authCert    authMethod = "cert"
	// authJWT and authKubernetes log in with a JWT read from jwt-file= (a
	// projected service-account token): Vault's auth/jwt checks its
	// signature itself, auth/kubernetes asks the cluster (TokenReview).
	authJWT        authMethod = "jwt"
	authKubernetes authMethod = "kubernetes"
)

// config is the typed form of an hcvault:// URI. It holds paths to secrets,
// never the secrets themselves, so rotated files are picked up.
type config struct {
	addr  string // https://host:port (or http:// for loopback with tls=off)
	mount string // transit mount path, e.g. "transit" or "team/transit"
	name  string // key name

	namespace string
	tls       *tls.Config // nil with tls=off

	auth         authMethod
	tokenFile    string
	roleIDFile   string
	secretIDFile string
	authMount    string // approle or cert mount
	certRole     string
	jwtFile      string // auth=jwt or kubernetes: re-read at every login
	role         string // auth=jwt or kubernetes: the Vault role

	remote.Options
}

// maxSecretFile bounds token, role-id and secret-id files.
const maxSecretFile = 16 << 10

var knownParams = map[string]bool{
	"tls": true, "ca-file": true, "cert-file": true, "key-file": true, "server-name": true,
	"namespace": true, "auth": true, "token-file": true, "role-id-file": true, "secret-id-file": true,
	"auth-mount": true, "cert-role": true, "jwt-file": true, "role": true,
}

func parseURI(s string) (config, error) {
	bad := func(format string, args ...any) (config, error) {
		return config{}, remote.URIError("vault", format, args...)
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != Scheme {
		return bad("want %s://host:port/<mount>/keys/<name>?...", Scheme)
	}
	if u.User != nil {
		return bad("credentials in the URI are not allowed; use token-file= or role-id-file=/secret-id-file=")
	}
	if u.Hostname() == "" {
		return bad("no host")
	}
	// url.Parse takes some hosts ("::") that it refuses in the https://
	// address the client is given.
	if _, err := url.Parse("https://" + u.Host); err != nil {
		return bad("host %q", u.Host)
	}
	if u.Fragment != "" {
		return bad("unexpected fragment")
	}
	mount, name, ok := cutLast(strings.Trim(u.Path, "/"), "/keys/")
	if !ok || mount == "" || name == "" || strings.Contains(name, "/") {
		return bad("path %q: want /<transit mount>/keys/<key name>", u.Path)
	}
	// A key_id is "<mount>/keys/<name>:v<n>#<time>": the version and the
	// time take at most 32 bytes.
	if n := len(mount) + len("/keys/") + len(name) + 1; n > keystore.MaxKeyIDLen-32 {
		return bad("mount and key name are %d bytes; key_ids must stay under %d", n, keystore.MaxKeyIDLen)
	}
	q := u.Query()
	c := config{mount: mount, name: name, namespace: q.Get("namespace"), certRole: q.Get("cert-role"), Options: remote.DefaultOptions()}
	for _, k := range []string{"timeout", "key-id-ttl"} {
		if v, ok := q[k]; ok && len(v) == 1 && v[0] == "" {
			delete(q, k) // here, as for every other parameter, empty means unset
		}
	}
	if err := c.ParseQuery("vault", q, func(k, _ string) (bool, error) { return knownParams[k], nil }); err != nil {
		return config{}, err
	}

	host := u.Hostname()
	switch q.Get("tls") {
	case "", "on":
		tc, err := tlsConfig(q.Get("ca-file"), q.Get("cert-file"), q.Get("key-file"), q.Get("server-name"))
		if err != nil {
			return config{}, err
		}
		c.tls = tc
		c.addr = "https://" + u.Host
	case "off":
		// Plain HTTP sends the Vault token in clear: only ever to this host.
		if !isLoopback(host) {
			return bad("tls=off is allowed only for a loopback address (a dev server), not %q", host)
		}
		if q.Get("ca-file") != "" || q.Get("cert-file") != "" {
			return bad("tls=off with TLS files")
		}
		c.addr = "http://" + u.Host
	default:
		return bad("tls=%q: want on or off", q.Get("tls"))
	}

	c.tokenFile, c.roleIDFile, c.secretIDFile = q.Get("token-file"), q.Get("role-id-file"), q.Get("secret-id-file")
	c.jwtFile, c.role = q.Get("jwt-file"), q.Get("role")
	c.auth = authMethod(q.Get("auth"))
	if c.auth == "" {
		switch {
		case c.tokenFile != "":
			c.auth = authToken
		case c.roleIDFile != "" || c.secretIDFile != "":
			c.auth = authAppRole
		default:
			return bad("no credentials: set token-file=, role-id-file= and secret-id-file=, auth=jwt or auth=kubernetes with jwt-file= and role=, or auth=cert with cert-file= and key-file=")
		}
	}
	switch c.auth {
	case authToken:
		if c.tokenFile == "" || c.roleIDFile != "" || c.secretIDFile != "" {
			return bad("auth=token needs token-file= and nothing else")
		}
	case authAppRole:
		if c.roleIDFile == "" || c.secretIDFile == "" || c.tokenFile != "" {
			return bad("auth=approle needs role-id-file= and secret-id-file=")
		}
		c.authMount = "approle"
	case authCert:
		if c.tls == nil || len(c.tls.Certificates) == 0 || c.tokenFile != "" || c.roleIDFile != "" {
			return bad("auth=cert needs TLS with cert-file= and key-file=, and no other credentials")
		}
		c.authMount = "cert"
	case authJWT, authKubernetes:
		if c.jwtFile == "" || c.role == "" || c.tokenFile != "" || c.roleIDFile != "" || c.secretIDFile != "" {
			return bad("auth=%s needs jwt-file= and role=, and no other credentials", c.auth)
		}
		c.authMount = string(c.auth)
	default:
		return bad("auth=%q: want token, approle, cert, jwt or kubernetes", c.auth)
	}
	if (c.jwtFile != "" || c.role != "") && c.auth != authJWT && c.auth != authKubernetes {
		return bad("jwt-file= and role= go with auth=jwt or auth=kubernetes")
	}
	if m := q.Get("auth-mount"); m != "" {
		if c.auth == authToken {
			return bad("auth-mount= has no meaning with a token")
		}
		c.authMount = strings.Trim(m, "/")
	}
	for _, f := range []string{c.tokenFile, c.roleIDFile, c.secretIDFile, c.jwtFile} {
		if f != "" && !strings.HasPrefix(f, "/") {
			return bad("file %q must be an absolute path", f)
		}
	}
	return c, nil
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func tlsConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%w: vault ca-file: %v", keystore.ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: vault ca-file %s holds no PEM certificate", keystore.ErrConfig, caFile)
		}
		tc.RootCAs = pool
	}
	switch {
	case certFile != "" && keyFile != "":
		// Loaded per handshake, so a renewed certificate is used without a
		// restart.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("load vault client certificate: %w", err)
			}
			return &c, nil
		}
		// Checked once now, so a wrong path fails at start-up.
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: vault cert-file/key-file: %v", keystore.ErrConfig, err)
		}
		tc.Certificates = []tls.Certificate{c}
	case certFile != "" || keyFile != "":
		return nil, fmt.Errorf("%w: vault cert-file= and key-file= go together", keystore.ErrConfig)
	}
	return tc, nil
}

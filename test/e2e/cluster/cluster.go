package cluster

import (
	"testing"
)

// DefaultProvider is the KMS v2 provider name Start configures.
const DefaultProvider = "keywarden"

// Options configures Start.
type Options struct {
	// EtcdMembers is 1 (default) or 3.
	EtcdMembers int
	// Keyset is keywarden's root keystore; default a new file keyset.
	// NewKeystore makes one of any other keystore URI (pkcs11:,
	// hcvault://, aws-kms://).
	Keyset *Keyset
	// Keywarden configures keywarden; its Keyset field is overridden by
	// Keyset above.
	Keywarden KeywardenOptions
	// Providers overrides the default provider list (KMSv2 keywarden
	// first, identity second). A function, so it can name the socket.
	Providers func(kw *Keywarden) []Provider
	// APIServer configures kube-apiserver; EtcdServers and Providers are
	// filled in.
	APIServer APIServerOptions
}

// Cluster is one etcd cluster, one keywarden and one kube-apiserver that
// encrypts secrets and configmaps with it.
type Cluster struct {
	Tools     Tools
	Etcd      *Etcd
	Keywarden *Keywarden
	APIServer *APIServer
	// Provider is the KMS v2 provider name in the stored prefix.
	Provider string
}

// MustTools is FindTools, failing t if a binary is missing.
func MustTools(t testing.TB) Tools {
	t.Helper()
	tools, err := FindTools()
	if err != nil {
		t.Fatal(err)
	}
	return tools
}

// Start starts etcd, keywarden and kube-apiserver, in that order, and
// stops them in reverse order at cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{Tools: MustTools(t), Provider: DefaultProvider}
	c.Etcd = StartEtcd(t, c.Tools, EtcdOptions{Members: opts.EtcdMembers})
	if opts.Keyset == nil {
		opts.Keyset = NewKeyset(t, c.Tools)
	}
	opts.Keywarden.Keyset = opts.Keyset
	c.Keywarden = StartKeywarden(t, c.Tools, opts.Keywarden)
	providers := []Provider{KMSv2(c.Provider, c.Keywarden.Socket), Identity()}
	if opts.Providers != nil {
		providers = opts.Providers(c.Keywarden)
	}
	as := opts.APIServer
	as.EtcdServers = c.Etcd.Endpoints
	as.Providers = providers
	c.APIServer = StartAPIServer(t, c.Tools, as)
	return c
}

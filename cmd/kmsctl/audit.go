package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/encconfig"
)

// resourceFlags say which resources a command covers: --resources, or the
// encrypted resources of --encryption-config.
type resourceFlags struct {
	resources  []string
	encConfig  string
	defaultRes []string
}

func (r *resourceFlags) add(cmd *cobra.Command, def []string) {
	r.defaultRes = def
	cmd.Flags().StringSliceVar(&r.resources, "resources", nil,
		fmt.Sprintf("resources to cover, as an EncryptionConfiguration names them (default %s)", strings.Join(def, ",")))
	cmd.Flags().StringVar(&r.encConfig, "encryption-config", "", "read the resources from kube-apiserver's EncryptionConfiguration file (every resource named with a provider other than identity, in any position)")
	cmd.MarkFlagsMutuallyExclusive("resources", "encryption-config")
}

func (r *resourceFlags) names() ([]string, error) {
	switch {
	case r.encConfig != "":
		c, err := encconfig.Load(r.encConfig)
		if err != nil {
			return nil, usageError{err}
		}
		names := c.EncryptedResources()
		if len(names) == 0 {
			return nil, usageError{fmt.Errorf("%s encrypts no resource", r.encConfig)}
		}
		return names, nil
	case len(r.resources) > 0:
		return r.resources, nil
	}
	return r.defaultRes, nil
}

// etcdFlags reach etcd for audits.
type etcdFlags struct {
	endpoints         []string
	cacert, cert, key string
	prefix            string
	timeout           time.Duration
	pageSize          int64
	// res is the resources to read; rotate shares its migrate's.
	res *resourceFlags
}

// add registers the flags; with own, also --page-size and the resource
// flags (rotate registers those once, for migrate and audit both).
func (e *etcdFlags) add(cmd *cobra.Command, own bool) {
	cmd.Flags().StringSliceVar(&e.endpoints, "etcd-endpoints", nil, "etcd client URLs, e.g. https://127.0.0.1:2379")
	cmd.Flags().StringVar(&e.cacert, "cacert", "", "CA bundle that signed etcd's serving certificate")
	cmd.Flags().StringVar(&e.cert, "cert", "", "client certificate for etcd (PEM)")
	cmd.Flags().StringVar(&e.key, "key", "", "client key for etcd (PEM)")
	cmd.Flags().StringVar(&e.prefix, "prefix", "/registry", "kube-apiserver's --etcd-prefix")
	cmd.Flags().DurationVar(&e.timeout, "etcd-timeout", 10*time.Second, "timeout of each etcd request")
	e.pageSize = audit.DefaultPageSize
	if own {
		cmd.Flags().Int64Var(&e.pageSize, "page-size", audit.DefaultPageSize, "keys read per etcd request")
		e.res = &resourceFlags{}
		e.res.add(cmd, []string{"secrets"})
	}
}

func (e *etcdFlags) set() bool { return len(e.endpoints) > 0 }

// timedGetter bounds each etcd request rather than the whole scan.
type timedGetter struct {
	c       *clientv3.Client
	timeout time.Duration
}

func (t timedGetter) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	return t.c.Get(ctx, key, opts...)
}

func (e *etcdFlags) client() (*clientv3.Client, error) {
	if !e.set() {
		return nil, usageError{errors.New("--etcd-endpoints is required")}
	}
	cfg := clientv3.Config{Endpoints: e.endpoints, DialTimeout: e.timeout, Logger: zap.NewNop()}
	if e.cacert != "" || e.cert != "" || e.key != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if e.cacert != "" {
			pem, err := os.ReadFile(e.cacert)
			if err != nil {
				return nil, usageError{err}
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, usageError{fmt.Errorf("--cacert %s holds no PEM certificate", e.cacert)}
			}
			tc.RootCAs = pool
		}
		if (e.cert == "") != (e.key == "") {
			return nil, usageError{errors.New("--cert and --key go together")}
		}
		if e.cert != "" {
			kp, err := tls.LoadX509KeyPair(e.cert, e.key)
			if err != nil {
				return nil, usageError{err}
			}
			tc.Certificates = []tls.Certificate{kp}
		}
		cfg.TLS = tc
	}
	return clientv3.New(cfg)
}

// run audits the resources of e.res; progress, if not nil, gets a line now
// and then.
func (e *etcdFlags) run(ctx context.Context, progress io.Writer) (*auditOut, error) {
	names, err := e.res.names()
	if err != nil {
		return nil, err
	}
	return e.runScopes(ctx, progress, names)
}

// runAll audits every value under --prefix, whatever the resource: the
// evidence keys disable and destroy need.
func (e *etcdFlags) runAll(ctx context.Context, progress io.Writer) (*auditOut, error) {
	return e.runScopes(ctx, progress, []string{allResources})
}

// allResources names every key under the etcd prefix (audit.Scopes).
const allResources = "*.*"

func (e *etcdFlags) runScopes(ctx context.Context, progress io.Writer, names []string) (*auditOut, error) {
	scopes, err := audit.Scopes(e.prefix, names)
	if err != nil {
		return nil, usageError{err}
	}
	c, err := e.client()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	start := time.Now()
	last := start
	r, err := audit.Run(ctx, timedGetter{c, e.timeout}, audit.Options{Scopes: scopes, PageSize: e.pageSize, Progress: func(n int) {
		if progress != nil && time.Since(last) > 5*time.Second {
			last = time.Now()
			fmt.Fprintf(progress, "audit: %d objects read\n", n)
		}
	}})
	if err != nil {
		return nil, err
	}
	return &auditOut{Report: r, Time: start.UTC().Truncate(time.Second), Seconds: time.Since(start).Seconds()}, nil
}

// auditOut is what `kmsctl audit -o json` prints and `keys destroy
// --audit-report` reads back.
type auditOut struct {
	*audit.Report
	Time    time.Time `json:"time"`
	Seconds float64   `json:"seconds"`
	// Gates lists the --fail-on-* checks that failed.
	Gates []string `json:"failedGates,omitempty"`
}

func loadAuditReport(path string) (*auditOut, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError{err}
	}
	var a auditOut
	if err := json.Unmarshal(b, &a); err != nil || a.Report == nil || a.KeyIDs == nil || len(a.Resources) == 0 || a.Time.IsZero() {
		return nil, usageError{fmt.Errorf("--audit-report %s is not the JSON of `kmsctl audit -o json` (%v)", path, err)}
	}
	return &a, nil
}

func (g *globals) printAudit(a *auditOut) error {
	return g.print(a, func(w *tabwriter.Writer) {
		snap := "one snapshot"
		if !a.Consistent {
			snap = "NOT one snapshot: etcd compacted during the scan"
		}
		fmt.Fprintf(w, "etcd revision %d (%s), %d objects, %.1fs\n\n", a.Revision, snap, a.Objects, a.Seconds)
		fmt.Fprintln(w, "RESOURCE\tPREFIX\tOBJECTS\tKMS V2\tPLAINTEXT\tOTHER")
		for _, r := range a.Resources {
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\n", r.Resource, r.Prefix, r.Objects, r.KMSv2, r.Plaintext, r.Other)
		}
		fmt.Fprintln(w, "\nPROVIDER\tOBJECTS")
		for _, p := range sortedKeys(a.Providers) {
			fmt.Fprintf(w, "%s\t%d\n", p, a.Providers[p])
		}
		if len(a.KeyIDs) > 0 {
			fmt.Fprintln(w, "\nKEY ID\tOBJECTS")
			for _, k := range sortedKeys(a.KeyIDs) {
				fmt.Fprintf(w, "%s\t%d\n", k, a.KeyIDs[k])
			}
		}
		if len(a.LocalKEKs) > 0 {
			fmt.Fprintln(w, "\nLOCAL KEK\tROOT KEY ID\tOBJECTS")
			for _, k := range a.LocalKEKs {
				fmt.Fprintf(w, "%s\t%s\t%d\n", k.ID, k.RootKeyID, k.Objects)
			}
		}
		fmt.Fprintf(w, "\nplaintext %d, other providers %d, other KMS v2 plugins %d, unrecognized %d, malformed %d, bad keywarden annotation %d\n",
			a.Plaintext, a.OtherProviders, a.OtherKMSv2, a.Unrecognized, a.Malformed, a.BadAnnotation)
		for _, c := range sortedKeys(a.Samples) {
			fmt.Fprintf(w, "  %s, e.g.: %s\n", c, strings.Join(a.Samples[c], " "))
		}
		for _, gate := range a.Gates {
			fmt.Fprintf(w, "FAILED: %s\n", gate)
		}
	})
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func newAuditCmd(g *globals) *cobra.Command {
	var (
		e           etcdFlags
		failPlain   bool
		failOnKeys  []string
		failOnSole  []string
		failOnOther bool
		kwProviders []string
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Count the objects in etcd by provider, root key_id and local KEK (never prints values)",
		Long: `audit reads every value of the encrypted resources straight from etcd, at one
etcd revision, and counts them: per provider (kms:v2:<name>, aescbc, aesgcm,
secretbox, identity), per KMS v2 key_id (for keywarden, the root key version),
per keywarden local KEK, plus plaintext, malformed and unrecognized values.
It prints counts, key_ids, digests and, for problems, a few etcd keys; never a
value.

Resources map to etcd keys as kube-apiserver stores them: secrets under
<prefix>/secrets/, custom resources under <prefix>/<group>/<resource>/;
"*.*" reads everything under --prefix; a name starting with / is a raw key
prefix.

With --fail-on-plaintext or --fail-on-key, exits 3 when the gate fails: use
them in CI and before retiring a key.

--fail-on-sole-key KEYID exits 3 if any object can be read only through root
key version KEYID: its key_id names KEYID (one root), or its local KEK's
copies are all under KEYID (a copy sealed to the recovery key is not another
root). Run it before dropping a keystore from keywarden's --keystore: it
passes once every object also has a copy under a root that stays. It is
weaker than --fail-on-key, which also counts objects that another root can
read; use that one before retiring or destroying the keystore.

keys disable and destroy accept as evidence (--audit-report) only an audit
of every value under --prefix, whatever the resource: --resources '*.*'.
An object that an EncryptionConfiguration no longer lists, or a custom
resource nobody thought of, is still under the key.`,
		Example: `  kmsctl audit --etcd-endpoints https://127.0.0.1:2379 \
    --cacert /etc/kubernetes/pki/etcd/ca.crt \
    --cert /etc/kubernetes/pki/apiserver-etcd-client.crt --key /etc/kubernetes/pki/apiserver-etcd-client.key \
    --encryption-config /etc/kubernetes/encryption/encryption-config.yaml
  kmsctl audit --etcd-endpoints http://127.0.0.1:2379 --resources secrets,configmaps \
    --fail-on-plaintext --fail-on-key tink:3473997605:81291f5360ee4023
  kmsctl audit --etcd-endpoints http://127.0.0.1:2379 --resources '*.*' \
    --fail-on-key tink:3473997605:81291f5360ee4023 -o json > audit.json
  kmsctl audit --etcd-endpoints http://127.0.0.1:2379 --resources '*.*' \
    --fail-on-sole-key tink:3473997605:81291f5360ee4023`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := e.run(cmd.Context(), g.stderr)
			if err != nil {
				return err
			}
			if failPlain && a.Plaintext+a.Unrecognized > 0 {
				a.Gates = append(a.Gates, fmt.Sprintf("%d plaintext and %d unrecognized objects (--fail-on-plaintext)", a.Plaintext, a.Unrecognized))
			}
			if failOnOther {
				if a.OtherProviders+a.OtherKMSv2 > 0 {
					a.Gates = append(a.Gates, fmt.Sprintf("%d objects under other providers, %d of them from another KMS v2 plugin (--fail-on-other-providers)", a.OtherProviders+a.OtherKMSv2, a.OtherKMSv2))
				}
				if names := otherKMSv2Names(a.Providers, kwProviders); len(names) > 0 {
					a.Gates = append(a.Gates, fmt.Sprintf("objects under KMS v2 providers that are not keywarden's (%s; --keywarden-provider names keywarden's: %s) (--fail-on-other-providers)",
						strings.Join(names, ", "), strings.Join(kwProviders, ",")))
				}
			}
			for _, k := range failOnKeys {
				if n := a.InUse(k); n > 0 {
					a.Gates = append(a.Gates, fmt.Sprintf("%d objects under key_id %s (--fail-on-key)", n, k))
				}
			}
			for _, k := range failOnSole {
				if n := a.SoleUse(k); n > 0 {
					a.Gates = append(a.Gates, fmt.Sprintf("%d objects readable only under key_id %s (--fail-on-sole-key)", n, k))
				}
			}
			if err := g.printAudit(a); err != nil {
				return err
			}
			if len(a.Gates) > 0 {
				return problem("audit gate failed: %s", strings.Join(a.Gates, "; "))
			}
			return nil
		},
	}
	e.add(cmd, true)
	_ = cmd.MarkFlagRequired("etcd-endpoints")
	cmd.Flags().BoolVar(&failPlain, "fail-on-plaintext", false, "exit 3 if any object is stored in plaintext (or unrecognized)")
	cmd.Flags().StringSliceVar(&failOnKeys, "fail-on-key", nil, "exit 3 if any object is stored under this key_id (repeatable)")
	cmd.Flags().StringSliceVar(&failOnSole, "fail-on-sole-key", nil, "exit 3 if any object can be read only through this root key_id, i.e. has no copy under another root (repeatable)")
	cmd.Flags().BoolVar(&failOnOther, "fail-on-other-providers", false, "exit 3 if any object is under aescbc, aesgcm, secretbox, KMS v1 or another KMS v2 plugin (a KMS v2 value without keywarden's annotation, or under a provider name not in --keywarden-provider)")
	cmd.Flags().StringSliceVar(&kwProviders, "keywarden-provider", []string{"keywarden"}, "keywarden's provider name(s) in the EncryptionConfiguration, for --fail-on-other-providers (repeatable)")
	return cmd
}

// otherKMSv2Names lists "kms:v2:<name> N" for each KMS v2 provider name in
// providers (audit's per-label counts) that is not one of keywarden's:
// objects kube-apiserver reads only through a plugin by that name, even
// when that plugin was keywarden under an older name.
func otherKMSv2Names(providers map[string]int, keywarden []string) []string {
	var out []string
	for _, label := range sortedKeys(providers) {
		name, ok := strings.CutPrefix(label, "kms:v2:")
		if ok && providers[label] > 0 && !slices.Contains(keywarden, name) {
			out = append(out, fmt.Sprintf("%s %d", label, providers[label]))
		}
	}
	return out
}

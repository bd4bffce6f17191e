package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/internal/fipsmode"
)

type socketFlags struct {
	socket  string
	timeout time.Duration
}

func (s *socketFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&s.socket, "socket", "unix:///run/keywarden/kms.sock", "keywarden's KMS v2 socket")
	cmd.Flags().DurationVar(&s.timeout, "timeout", 5*time.Second, "timeout for each call")
}

func (s *socketFlags) dial() (kmsapi.KeyManagementServiceClient, func(), error) {
	u, err := url.Parse(s.socket)
	if err != nil || u.Scheme != "unix" || u.Path == "" {
		return nil, nil, usageError{fmt.Errorf("--socket %q: want unix:///absolute/path", s.socket)}
	}
	conn, err := grpc.NewClient("unix://"+u.Path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return kmsapi.NewKeyManagementServiceClient(conn), func() { _ = conn.Close() }, nil
}

type statusOut struct {
	Version string          `json:"version"`
	Healthz string          `json:"healthz"`
	KeyID   string          `json:"keyID"`
	Metrics *metricsSummary `json:"metrics,omitempty"`
	// KmsctlFIPS140 is this kmsctl's own FIPS 140-3 mode. The plugin's
	// is not in KMS Status: Metrics has it (keywarden_fips140_enabled).
	KmsctlFIPS140 fips140State `json:"kmsctlFIPS140"`
}

// fips140State is a process's FIPS 140-3 mode (off, on or only) and its Go
// Cryptographic Module version (docs/fips.md).
type fips140State struct {
	Mode   string `json:"mode"`
	Module string `json:"module"`
}

func (f *fips140State) String() string {
	switch {
	case f == nil:
		return "? (--metrics-url shows it)"
	case f.Mode == fipsmode.Off:
		return f.Mode
	}
	return f.Mode + " (Go module " + f.Module + ")"
}

// status calls the plugin's Status once.
func (s *socketFlags) status(ctx context.Context) (*kmsapi.StatusResponse, error) {
	c, done, err := s.dial()
	if err != nil {
		return nil, err
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	r, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("calling Status: %w", err)
	}
	return r, nil
}

func newStatusCmd(g *globals) *cobra.Command {
	var s socketFlags
	var metricsURL string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a running plugin's KMS Status and, with --metrics-url, a metrics summary (exit 3 if not healthy)",
		Long: `status calls the plugin's Status over its socket, as kube-apiserver does, and
prints version, healthz and key_id, and kmsctl's own FIPS 140-3 mode. With
--metrics-url it also reads keywarden's /metrics and summarizes them: health,
keystore reachability, the root key (hashed) and whether it matches Status'
key_id, RPC counts, errors by code and p50/p99 latency per method, local KEK
generations and cache, and the plugin's FIPS 140-3 mode (docs/fips.md).

Exits 3 if healthz is not "ok", or the metrics say the plugin or its keystore
is down or that the root key differs from Status' key_id.`,
		Example: `  kmsctl status --socket unix:///run/keywarden/kms.sock
  kmsctl status --socket unix:///run/keywarden/kms.sock --metrics-url http://127.0.0.1:8095/metrics -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := s.status(cmd.Context())
			if err != nil {
				return err
			}
			out := statusOut{Version: r.Version, Healthz: r.Healthz, KeyID: r.KeyId,
				KmsctlFIPS140: fips140State{Mode: fipsmode.Mode(), Module: fipsmode.Module()}}
			if metricsURL != "" {
				mfs, err := fetchMetrics(cmd.Context(), metricsURL, s.timeout)
				if err != nil {
					return err
				}
				out.Metrics = summarize(metricsURL, mfs, r.KeyId, g.now())
			}
			if err := g.print(out, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "VERSION\tHEALTHZ\tKEY ID")
				fmt.Fprintf(w, "%s\t%s\t%s\n", out.Version, out.Healthz, out.KeyID)
				var plugin *fips140State
				if out.Metrics != nil {
					plugin = out.Metrics.FIPS140
				}
				fmt.Fprintf(w, "\nFIPS 140-3\tplugin: %s; kmsctl: %s\n", plugin, &out.KmsctlFIPS140)
				if m := out.Metrics; m != nil {
					printMetrics(w, m)
				}
			}); err != nil {
				return err
			}
			if r.Healthz != "ok" {
				return problem("plugin is not healthy: %s", r.Healthz)
			}
			if m := out.Metrics; m != nil {
				switch {
				case m.Healthy != nil && !*m.Healthy:
					return problem("metrics say the plugin is not healthy")
				case m.KeystoreUp != nil && !*m.KeystoreUp:
					return problem("metrics say the last keystore check failed")
				case m.RootKeyMatchesStatus != nil && !*m.RootKeyMatchesStatus:
					return problem("metrics' root key hash %s does not match Status key_id %s", m.RootKeyIDHash, r.KeyId)
				}
			}
			return nil
		},
	}
	s.add(cmd)
	cmd.Flags().StringVar(&metricsURL, "metrics-url", "", "keywarden's metrics endpoint, e.g. http://127.0.0.1:8095/metrics")
	return cmd
}

func printMetrics(w *tabwriter.Writer, m *metricsSummary) {
	yn := func(b *bool) string {
		switch {
		case b == nil:
			return "?"
		case *b:
			return "yes"
		}
		return "NO"
	}
	fmt.Fprintf(w, "\nMETRICS\t%s\n", m.URL)
	fmt.Fprintf(w, "healthy\t%s\n", yn(m.Healthy))
	fmt.Fprintf(w, "keystore up\t%s (backend %s, last success %s)\n", yn(m.KeystoreUp), m.Backend, m.KeystoreLastSuccess)
	fmt.Fprintf(w, "root key_id hash\t%s (matches Status: %s)\n", m.RootKeyIDHash, yn(m.RootKeyMatchesStatus))
	fmt.Fprintf(w, "local KEK\tuses %.0f, age %s, generations %v\n", m.KEKUses, m.KEKAge, m.KEKGenerations)
	fmt.Fprintf(w, "KEK cache\thits %.0f, misses %.0f, entries %.0f\n", m.CacheHits, m.CacheMisses, m.CacheEntries)
	fmt.Fprintln(w, "\nMETHOD\tCALLS\tERRORS\tP50\tP99")
	for _, r := range m.RPCs {
		errs := "-"
		if len(r.Errors) > 0 {
			errs = fmt.Sprint(r.Errors)
		}
		fmt.Fprintf(w, "%s\t%.0f\t%s\t%s\t%s\n", r.Method, r.Calls, errs, seconds(r.P50), seconds(r.P99))
	}
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond).String()
}

type checkOut struct {
	StatusKeyID  string `json:"statusKeyID"`
	EncryptKeyID string `json:"encryptKeyID"`
	Ciphertext   int    `json:"ciphertextBytes"`
	Encrypt      string `json:"encrypt"`
	Decrypt      string `json:"decrypt"`
	OK           bool   `json:"ok"`
}

func newCheckCmd(g *globals) *cobra.Command {
	var s socketFlags
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Round-trip a random seed through a running plugin (exit 3 on any mismatch)",
		Long: `check does what kube-apiserver does: Status, then Encrypt of a random 32-byte
seed, then Decrypt of the result. It fails if the key_ids disagree or the
seed does not come back intact.`,
		Example: "  kmsctl check --socket unix:///run/keywarden/kms.sock",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, done, err := s.dial()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithTimeout(cmd.Context(), s.timeout)
			defer cancel()
			st, err := c.Status(ctx, &kmsapi.StatusRequest{})
			if err != nil {
				return fmt.Errorf("calling Status: %w", err)
			}
			seed := make([]byte, 32)
			_, _ = rand.Read(seed)
			t0 := time.Now()
			enc, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "kmsctl-check"})
			if err != nil {
				return fmt.Errorf("calling Encrypt: %w", err)
			}
			encD := time.Since(t0)
			t1 := time.Now()
			dec, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations, Uid: "kmsctl-check"})
			if err != nil {
				return fmt.Errorf("calling Decrypt: %w", err)
			}
			out := checkOut{
				StatusKeyID: st.KeyId, EncryptKeyID: enc.KeyId, Ciphertext: len(enc.Ciphertext),
				Encrypt: encD.String(), Decrypt: time.Since(t1).String(),
				OK: st.KeyId == enc.KeyId && bytes.Equal(dec.Plaintext, seed),
			}
			if err := g.print(out, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "STATUS KEY ID\tENCRYPT KEY ID\tCIPHERTEXT\tENCRYPT\tDECRYPT\tOK")
				fmt.Fprintf(w, "%s\t%s\t%dB\t%s\t%s\t%v\n", out.StatusKeyID, out.EncryptKeyID, out.Ciphertext, out.Encrypt, out.Decrypt, out.OK)
			}); err != nil {
				return err
			}
			switch {
			case st.KeyId != enc.KeyId:
				return problem("Status key_id %q differs from Encrypt key_id %q (kube-apiserver would mark the plugin unhealthy)", st.KeyId, enc.KeyId)
			case !bytes.Equal(dec.Plaintext, seed):
				return problem("Decrypt did not return the seed")
			}
			return nil
		},
	}
	s.add(cmd)
	return cmd
}

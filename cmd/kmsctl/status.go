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
	Version string `json:"version"`
	Healthz string `json:"healthz"`
	KeyID   string `json:"keyID"`
}

func newStatusCmd(g *globals) *cobra.Command {
	var s socketFlags
	cmd := &cobra.Command{
		Use:     "status",
		Short:   "Show a running plugin's KMS Status (exit 3 if not healthy)",
		Example: "  kmsctl status --socket unix:///run/keywarden/kms.sock",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, done, err := s.dial()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithTimeout(cmd.Context(), s.timeout)
			defer cancel()
			r, err := c.Status(ctx, &kmsapi.StatusRequest{})
			if err != nil {
				return fmt.Errorf("calling Status: %w", err)
			}
			out := statusOut{r.Version, r.Healthz, r.KeyId}
			if err := g.print(out, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "VERSION\tHEALTHZ\tKEY ID")
				fmt.Fprintf(w, "%s\t%s\t%s\n", out.Version, out.Healthz, out.KeyID)
			}); err != nil {
				return err
			}
			if r.Healthz != "ok" {
				return problem("plugin is not healthy: %s", r.Healthz)
			}
			return nil
		},
	}
	s.add(cmd)
	return cmd
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

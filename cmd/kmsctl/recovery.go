package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/offline"
	"github.com/keywarden/keywarden/internal/snapshot"
	"github.com/keywarden/keywarden/keystore/recovery"
)

func newRecoveryCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "recovery",
		Short: "The offline recovery key: an escrow of every local KEK (docs/disaster-recovery.md)",
	}
	cmd.AddCommand(newRecoveryInitCmd(g))
	return cmd
}

// passphraseFlags say where a passphrase comes from.
type passphraseFlags struct {
	file string
	none bool
}

func (p *passphraseFlags) add(cmd *cobra.Command, none string) {
	cmd.Flags().StringVar(&p.file, "passphrase-file", "", "read the passphrase from this file (its first line); without it kmsctl asks on the terminal")
	if none != "" {
		cmd.Flags().BoolVar(&p.none, "no-passphrase", false, none)
		cmd.MarkFlagsMutuallyExclusive("passphrase-file", "no-passphrase")
	}
}

// get returns the passphrase: from the file, or asked on the terminal
// (twice when confirm), or nil with --no-passphrase.
func (p *passphraseFlags) get(g *globals, confirm bool) ([]byte, error) {
	switch {
	case p.none:
		return nil, nil
	case p.file != "":
		b, err := os.ReadFile(p.file)
		if err != nil {
			return nil, err
		}
		line, _, _ := bytes.Cut(b, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			return nil, usageError{fmt.Errorf("%s holds an empty passphrase", p.file)}
		}
		return line, nil
	case !g.stdinTTY:
		return nil, usageError{errors.New("stdin is not a terminal: pass --passphrase-file (or, for init, --no-passphrase)")}
	}
	fd := int(os.Stdin.Fd()) //nolint:gosec // fd fits in int
	fmt.Fprint(g.stderr, "Passphrase: ")
	pass, err := term.ReadPassword(fd)
	fmt.Fprintln(g.stderr)
	if err != nil {
		return nil, err
	}
	if len(pass) == 0 {
		return nil, usageError{errors.New("empty passphrase")}
	}
	if confirm {
		fmt.Fprint(g.stderr, "Again: ")
		again, err := term.ReadPassword(fd)
		fmt.Fprintln(g.stderr)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(pass, again) {
			return nil, usageError{errors.New("the passphrases differ")}
		}
	}
	return pass, nil
}

type recoveryInit struct {
	KeyID      string `json:"keyID"`
	Public     string `json:"public"`
	Private    string `json:"private"`
	Passphrase bool   `json:"passphrase"`
}

func newRecoveryInitCmd(g *globals) *cobra.Command {
	var pubOut, privOut string
	var pf passphraseFlags
	cmd := &cobra.Command{
		Use:   "init --public-out FILE --private-out FILE",
		Short: "Make a recovery keyset: the public half for every node's --recovery-public-key, the private half for offline storage",
		Long: `Make a recovery keyset (Tink hybrid encryption, HPKE with X25519, HKDF-SHA256
and AES-256-GCM).

The public keyset goes to every control-plane node (keywarden
--recovery-public-key): every new local KEK is then also sealed to it.
The private keyset is written once, 0600, for offline storage; sealed under
a passphrase (argon2id t=3 m=64MiB p=4, then AES-256-GCM) unless
--no-passphrase. Neither file is overwritten. With the private keyset and
an etcd, kmsctl recover reads everything without any root keystore: keep it
as you would keep every Secret of the cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pass, err := pf.get(g, true)
			if err != nil {
				return err
			}
			k, err := recovery.New()
			if err != nil {
				return err
			}
			priv, err := k.Marshal(pass, recovery.DefaultKDF())
			clear(pass)
			if err != nil {
				return err
			}
			pub, err := k.MarshalPublic()
			if err != nil {
				return err
			}
			if filepath.Clean(pubOut) == filepath.Clean(privOut) {
				return usageError{errors.New("--public-out and --private-out are the same file")}
			}
			if err := writeNew(privOut, priv, 0o600); err != nil {
				return err
			}
			if err := writeNew(pubOut, pub, 0o644); err != nil {
				return fmt.Errorf("%w (the private keyset %s was written: remove it before trying again)", err, privOut)
			}
			r := recoveryInit{KeyID: k.KeyID(), Public: pubOut, Private: privOut, Passphrase: pass != nil}
			return g.print(r, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "KEY ID\t%s\nPUBLIC\t%s\nPRIVATE\t%s\nPASSPHRASE\t%v\n", r.KeyID, r.Public, r.Private, r.Passphrase)
			})
		},
	}
	cmd.Flags().StringVar(&pubOut, "public-out", "", "write the public keyset here (for every node's --recovery-public-key)")
	cmd.Flags().StringVar(&privOut, "private-out", "", "write the private keyset here, 0600, for offline storage")
	_ = cmd.MarkFlagRequired("public-out")
	_ = cmd.MarkFlagRequired("private-out")
	pf.add(cmd, "write the private keyset in clear (for a keyset that goes straight into an HSM-backed or otherwise sealed store)")
	return cmd
}

// writeNew writes a file that must not exist yet, and syncs it.
func writeNew(path string, b []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

type recoverFlags struct {
	etcd           etcdFlags
	snapshot       string
	privateKey     string
	pass           passphraseFlags
	verify         bool
	outDir         string
	writePlaintext bool
}

func newRecoverCmd(g *globals) *cobra.Command {
	f := &recoverFlags{}
	cmd := &cobra.Command{
		Use:   "recover --private-key FILE (--etcd-endpoints URL | --snapshot FILE) (--verify | --out-dir DIR --write-plaintext)",
		Short: "Decrypt every KMS v2 value in etcd with the private recovery key alone, no root keystore",
		Long: `Decrypt every KMS v2 value in etcd with the private recovery keyset alone,
through kube-apiserver's own KMS v2 envelope transformer (docs/disaster-recovery.md).
It reads a live etcd (--etcd-endpoints) or an etcd snapshot file (--snapshot,
from etcdctl snapshot save or a member's member/snap/db), with no etcd running.

--verify decrypts everything and reports counts, writing nothing: run it
after setting up a recovery key, and now and then, to know it works.
--out-dir writes each object as a Kubernetes manifest for kubectl apply into a
new cluster, one file 0600 per object in a new 0700 directory, and only with
--write-plaintext: those files are the cluster's Secrets in clear.
Plaintext is never written to stdout.

Exit 3 if a KMS v2 value could not be decrypted (no recovery copy: its local
KEK predates the recovery key; or it did not open).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return f.run(cmd.Context(), g) },
	}
	f.etcd.add(cmd, true)
	cmd.Flags().StringVar(&f.privateKey, "private-key", "", "the private recovery keyset (from kmsctl recovery init --private-out), 0600")
	f.pass.add(cmd, "")
	cmd.Flags().BoolVar(&f.verify, "verify", false, "decrypt everything and report counts; write nothing")
	cmd.Flags().StringVar(&f.outDir, "out-dir", "", "write the objects as manifests into this new directory (0700, files 0600); needs --write-plaintext")
	cmd.Flags().BoolVar(&f.writePlaintext, "write-plaintext", false, "confirm that --out-dir gets every object in clear")
	_ = cmd.MarkFlagRequired("private-key")
	cmd.Flags().StringVar(&f.snapshot, "snapshot", "", "read this etcd snapshot file instead of a live etcd")
	cmd.MarkFlagsOneRequired("etcd-endpoints", "snapshot")
	cmd.MarkFlagsMutuallyExclusive("etcd-endpoints", "snapshot")
	cmd.MarkFlagsMutuallyExclusive("verify", "out-dir")
	cmd.MarkFlagsOneRequired("verify", "out-dir")
	return cmd
}

func (f *recoverFlags) run(ctx context.Context, g *globals) error {
	if f.outDir != "" && !f.writePlaintext {
		return usageError{errors.New("--out-dir writes every object in clear: add --write-plaintext to mean it")}
	}
	if f.writePlaintext && f.outDir == "" {
		return usageError{errors.New("--write-plaintext goes with --out-dir")}
	}
	names, err := f.etcd.res.names()
	if err != nil {
		return err
	}
	scopes, err := audit.Scopes(f.etcd.prefix, names)
	if err != nil {
		return usageError{err}
	}
	b, err := os.ReadFile(f.privateKey)
	if err != nil {
		return usageError{err}
	}
	var pass []byte
	if recovery.Sealed(b) {
		if pass, err = f.pass.get(g, false); err != nil {
			return err
		}
	}
	key, err := recovery.OpenPrivate(f.privateKey, pass)
	clear(pass)
	if err != nil {
		return err
	}
	var src audit.Getter
	if f.snapshot != "" {
		snap, err := snapshot.Open(f.snapshot)
		if err != nil {
			return err
		}
		src = snap
	} else {
		c, err := f.etcd.client()
		if err != nil {
			return err
		}
		defer c.Close()
		src = timedGetter{c, f.etcd.timeout}
	}
	opts := offline.Options{Scopes: scopes, PageSize: f.etcd.pageSize}
	if f.outDir != "" {
		d, err := offline.NewDir(f.outDir, f.etcd.prefix)
		if err != nil {
			return err
		}
		opts.Write = d.Write
	}
	r, err := offline.Run(ctx, src, key, opts)
	if err != nil {
		return err
	}
	if err := g.print(r, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "REVISION\t%d\nOBJECTS\t%d\nDECRYPTED\t%d\nNO RECOVERY COPY\t%d\nFAILED\t%d\nNOT KMS V2\t%d\nLOCAL KEKS\t%d\nWRITTEN\t%d\n",
			r.Revision, r.Objects, r.Decrypted, r.NoRecoveryCopy, r.Failed, r.NotKMSv2, r.KEKs, r.Written)
		for _, class := range []string{"noRecoveryCopy", "failed"} {
			for _, k := range r.Samples[class] {
				fmt.Fprintf(w, "  %s\t%s\n", class, k)
			}
		}
	}); err != nil {
		return err
	}
	if !r.OK() {
		return problem("%d KMS v2 values have no copy under this recovery key, %d did not decrypt", r.NoRecoveryCopy, r.Failed)
	}
	return nil
}

package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/byuri"
)

func newKeysCmd(g *globals) *cobra.Command {
	var uri string
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage root key versions in a keystore",
		Long: `Manage root key versions. The rotation procedure (docs/rotation.md):

  kmsctl keys add      on every control-plane node (new version, not primary)
  kmsctl keys promote  on every node; keywarden notices within --check-interval
  kmsctl migrate / audit until nothing uses the old version
  kmsctl keys disable, later destroy, the old version`,
	}
	cmd.PersistentFlags().StringVar(&uri, "keystore", "", "keystore URI (file:///…, pkcs11:…)")
	_ = cmd.MarkPersistentFlagRequired("keystore")

	manager := func(cmd *cobra.Command) (keystore.Manager, func(), error) {
		b, err := byuri.Open(cmd.Context(), uri)
		if err != nil {
			return nil, nil, err
		}
		m, ok := b.(keystore.Manager)
		if !ok {
			_ = b.Close()
			return nil, nil, fmt.Errorf("keystore %s manages its key versions in the provider's own console or API", b.Name())
		}
		return m, func() { _ = b.Close() }, nil
	}
	printVersions := func(vs []keystore.KeyVersion) error {
		return g.print(vs, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "KEY ID\tSTATE\tPRIMARY")
			for _, v := range vs {
				p := ""
				if v.Primary {
					p = "*"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", v.KeyID, v.State, p)
			}
		})
	}

	initCmd := &cobra.Command{
		Use:     "init",
		Short:   "Create a keystore with one primary root key version",
		Example: "  kmsctl keys init --keystore file:///etc/keywarden/keyset.json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := byuri.Init(cmd.Context(), uri)
			if err != nil {
				return err
			}
			return printVersions([]keystore.KeyVersion{v})
		},
	}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List root key versions",
		Example: "  kmsctl keys list --keystore file:///etc/keywarden/keyset.json -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, done, err := manager(cmd)
			if err != nil {
				return err
			}
			defer done()
			vs, err := m.List(cmd.Context())
			if err != nil {
				return err
			}
			return printVersions(vs)
		},
	}
	add := &cobra.Command{
		Use:     "add",
		Short:   "Add a new root key version (enabled, not primary)",
		Example: "  kmsctl keys add --keystore file:///etc/keywarden/keyset.json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, done, err := manager(cmd)
			if err != nil {
				return err
			}
			defer done()
			v, err := m.Add(cmd.Context())
			if err != nil {
				return err
			}
			return printVersions([]keystore.KeyVersion{v})
		},
	}
	action := func(use, short string, fn func(keystore.Manager) func(cmd *cobra.Command, id string) error) *cobra.Command {
		return &cobra.Command{
			Use:     use + " KEY_ID",
			Short:   short,
			Example: "  kmsctl keys " + use + " --keystore file:///etc/keywarden/keyset.json tink:123:0a1b2c3d4e5f6071",
			Args:    cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				m, done, err := manager(cmd)
				if err != nil {
					return err
				}
				defer done()
				if err := fn(m)(cmd, args[0]); err != nil {
					return err
				}
				vs, err := m.List(cmd.Context())
				if err != nil {
					return err
				}
				return printVersions(vs)
			},
		}
	}
	promote := action("promote", "Make a version primary: new writes use it", func(m keystore.Manager) func(*cobra.Command, string) error {
		return func(cmd *cobra.Command, id string) error { return m.Promote(cmd.Context(), id) }
	})
	disable := action("disable", "Disable a non-primary version (reversible with enable)", func(m keystore.Manager) func(*cobra.Command, string) error {
		return func(cmd *cobra.Command, id string) error { return m.Disable(cmd.Context(), id) }
	})
	enable := action("enable", "Re-enable a disabled version", func(m keystore.Manager) func(*cobra.Command, string) error {
		return func(cmd *cobra.Command, id string) error { return m.Enable(cmd.Context(), id) }
	})
	destroy := action("destroy", "Irreversibly delete a disabled version's key material", func(m keystore.Manager) func(*cobra.Command, string) error {
		return func(cmd *cobra.Command, id string) error { return m.Destroy(cmd.Context(), id) }
	})
	cmd.AddCommand(initCmd, list, add, promote, disable, enable, destroy)
	return cmd
}

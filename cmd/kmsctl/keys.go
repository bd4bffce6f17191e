package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keywarden/keywarden/internal/audit"
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
	cmd.PersistentFlags().StringVar(&uri, "keystore", "", "keystore URI: "+byuri.URIForms)
	_ = cmd.MarkPersistentFlagRequired("keystore")

	// managed runs op on the keystore as a Manager, and closes it after.
	managed := func(cmd *cobra.Command, op func(m keystore.Manager) ([]keystore.KeyVersion, error)) ([]keystore.KeyVersion, error) {
		b, err := byuri.Open(cmd.Context(), uri)
		if err != nil {
			return nil, err
		}
		defer func() { _ = b.Close() }()
		m, ok := b.(keystore.Manager)
		if !ok {
			return nil, fmt.Errorf("keystore %s manages its key versions in the provider's own console or API", b.Name())
		}
		return op(m)
	}
	one := func(v keystore.KeyVersion, err error) ([]keystore.KeyVersion, error) {
		if err != nil {
			return nil, err
		}
		return []keystore.KeyVersion{v}, nil
	}
	// versionsCmd builds every keys subcommand: run it, print the versions
	// it returns.
	versionsCmd := func(use, short, long, example string, args cobra.PositionalArgs, run func(cmd *cobra.Command, args []string) ([]keystore.KeyVersion, error)) *cobra.Command {
		return &cobra.Command{
			Use:     use,
			Short:   short,
			Long:    long,
			Example: example,
			Args:    args,
			RunE: func(cmd *cobra.Command, args []string) error {
				vs, err := run(cmd, args)
				if err != nil {
					return err
				}
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
			},
		}
	}

	initCmd := versionsCmd("init", "Create a keystore with one primary root key version", "",
		"  kmsctl keys init --keystore file:///etc/keywarden/keyset.json", cobra.NoArgs,
		func(cmd *cobra.Command, _ []string) ([]keystore.KeyVersion, error) {
			return one(byuri.Init(cmd.Context(), uri))
		})
	list := versionsCmd("list", "List root key versions", "",
		"  kmsctl keys list --keystore file:///etc/keywarden/keyset.json -o json", cobra.NoArgs,
		func(cmd *cobra.Command, _ []string) ([]keystore.KeyVersion, error) {
			return managed(cmd, func(m keystore.Manager) ([]keystore.KeyVersion, error) { return m.List(cmd.Context()) })
		})
	add := versionsCmd("add", "Add a new root key version (enabled, not primary)", "",
		"  kmsctl keys add --keystore file:///etc/keywarden/keyset.json", cobra.NoArgs,
		func(cmd *cobra.Command, _ []string) ([]keystore.KeyVersion, error) {
			return managed(cmd, func(m keystore.Manager) ([]keystore.KeyVersion, error) { return one(m.Add(cmd.Context())) })
		})
	// action builds promote, disable, enable and destroy: look up the
	// version, let guard check and describe the change (and confirm it),
	// apply it, print the versions after.
	type guardFn func(cmd *cobra.Command, m keystore.Manager, vs []keystore.KeyVersion, v keystore.KeyVersion) error
	action := func(use, short, long, example string, apply func(keystore.Manager) func(context.Context, string) error, guard guardFn) *cobra.Command {
		return versionsCmd(use+" KEY_ID", short, long, example, cobra.ExactArgs(1), func(cmd *cobra.Command, args []string) ([]keystore.KeyVersion, error) {
			return managed(cmd, func(m keystore.Manager) ([]keystore.KeyVersion, error) {
				vs, err := m.List(cmd.Context())
				if err != nil {
					return nil, err
				}
				// An untagged Vault key_id (keystore.SameVersion) names the
				// same version as its tagged form; exact matches first.
				i := slices.IndexFunc(vs, func(v keystore.KeyVersion) bool { return v.KeyID == args[0] })
				if i < 0 {
					i = slices.IndexFunc(vs, func(v keystore.KeyVersion) bool { return keystore.SameVersion(v.KeyID, args[0]) })
				}
				if i < 0 {
					return nil, fmt.Errorf("%w: %s is not in keystore %s", keystore.ErrKeyNotFound, args[0], byuri.Redact(uri))
				}
				if guard != nil {
					if err := guard(cmd, m, vs, vs[i]); err != nil {
						return nil, err
					}
				}
				if err := apply(m)(cmd.Context(), vs[i].KeyID); err != nil {
					return nil, err
				}
				return m.List(cmd.Context())
			})
		})
	}
	var yes, force bool
	var auditReport string
	var maxAge time.Duration
	var eDisable, eDestroy etcdFlags
	primaryOf := func(vs []keystore.KeyVersion) string {
		for _, v := range vs {
			if v.Primary {
				return v.KeyID
			}
		}
		return "(none)"
	}
	promote := action("promote", "Make a version primary: new writes use it",
		`promote makes an enabled version the primary. keywarden notices within its
--check-interval and reports the new key_id in Status; kube-apiserver then
makes new DEKs under it. Objects written under the old primary stay readable
(the old version stays enabled) until kmsctl migrate rewrites them.

On an HA control plane, add the version on every node first: a node that
meets a key it does not have cannot decrypt.

promote prints what will change and asks for confirmation on a terminal;
--yes skips the question.`,
		"  kmsctl keys promote --keystore file:///etc/keywarden/keyset.json --yes tink:123:0a1b2c3d4e5f6071",
		func(m keystore.Manager) func(context.Context, string) error { return m.Promote },
		func(cmd *cobra.Command, _ keystore.Manager, vs []keystore.KeyVersion, v keystore.KeyVersion) error {
			if v.Primary {
				fmt.Fprintf(g.stderr, "%s is already the primary: nothing to do\n", v.KeyID)
				return nil
			}
			if v.State != keystore.KeyEnabled {
				return fmt.Errorf("%w: %s is %s; enable it first", keystore.ErrKeyDisabled, v.KeyID, v.State)
			}
			plan := fmt.Sprintf("Will promote %s to primary in %s (primary now: %s).\n"+
				"keywarden will report key_id %s; kube-apiserver will encrypt new writes under it.\n"+
				"Run this on every control-plane node, after `keys add` reached all of them.\n", v.KeyID, byuri.Redact(uri), primaryOf(vs), v.KeyID)
			return g.confirm(plan, yes)
		})
	disable := action("disable", "Disable a non-primary version (reversible with enable)",
		`disable makes a non-primary version unusable for Decrypt, reversibly (keys
enable undoes it). Objects still under it become unreadable: a Decrypt that
must unwrap a local KEK under it fails with FailedPrecondition, and every
running keywarden drops the local KEKs under it that it holds in memory
within its --kek-revalidate-interval plus --check-interval (65s at the
defaults, while its keystore answers), without a restart. Run kmsctl audit
first. Given --etcd-endpoints or --audit-report, disable checks the audit as
destroy does (see keys destroy --help) and refuses while it counts objects
under the version or is not evidence enough, unless --force. Given neither,
it checks nothing.`,
		"  kmsctl keys disable --keystore file:///etc/keywarden/keyset.json --etcd-endpoints http://127.0.0.1:2379 tink:123:0a1b2c3d4e5f6071",
		func(m keystore.Manager) func(context.Context, string) error { return m.Disable },
		func(cmd *cobra.Command, _ keystore.Manager, vs []keystore.KeyVersion, v keystore.KeyVersion) error {
			if !eDisable.set() && auditReport == "" {
				return nil
			}
			return g.checkUnused(cmd.Context(), &eDisable, retire{report: auditReport, maxAge: maxAge, force: force, verb: "disable"}, vs, v.KeyID)
		})
	enable := action("enable", "Re-enable a disabled version", "", "  kmsctl keys enable --keystore file:///etc/keywarden/keyset.json tink:123:0a1b2c3d4e5f6071",
		func(m keystore.Manager) func(context.Context, string) error { return m.Enable }, nil)
	destroy := action("destroy", "Irreversibly delete a disabled version's key material",
		`destroy deletes a disabled version's key material for good: every object
still stored under it becomes unreadable forever.

It needs evidence that nothing uses the version, and checks that evidence:

  --etcd-endpoints  a live audit of every value under --prefix (kube-apiserver's
                    --etcd-prefix), whatever the resource: Secrets, ConfigMaps,
                    custom resources, anything an EncryptionConfiguration ever
                    encrypted. --resources and --encryption-config are ignored,
                    with a warning.
  --audit-report    the JSON of an earlier kmsctl audit --resources '*.*'.

It refuses (exit 3) while the audit counts any object under the version, and
also when the audit is not evidence enough: it covers less than every value
under --prefix; it is not one etcd snapshot (etcd compacted mid-scan); it
counts no object under any other version of this keystore (so it read another
cluster's etcd, or the wrong --prefix: after a rotation, the objects are under
the new primary); or, for a report, it is older than --audit-max-age (default
1h) or dated over 5 minutes in the future. --force overrides any of these,
and the lack of evidence, after printing a warning that names each one.

Disable the version first and wait longer than keywarden's
--kek-revalidate-interval plus --check-interval (65s at the defaults): from
then on no keywarden decrypts under it from memory, so anything read that
still needs it fails with FailedPrecondition while keys enable can still undo
it. kube-apiserver's own cache of decrypted DEK seeds is beyond keywarden's
reach: the audit is the proof.

It prints what will change and needs --yes when stdin is not a terminal.`,
		`  kmsctl keys destroy --keystore file:///etc/keywarden/keyset.json \
    --etcd-endpoints https://127.0.0.1:2379 --cacert ca.crt --cert client.crt --key client.key --yes tink:123:0a1b2c3d4e5f6071
  kmsctl audit --etcd-endpoints https://127.0.0.1:2379 ... --resources '*.*' -o json > audit.json
  kmsctl keys destroy --keystore file:///etc/keywarden/keyset.json --audit-report audit.json tink:123:0a1b2c3d4e5f6071`,
		func(m keystore.Manager) func(context.Context, string) error { return m.Destroy },
		func(cmd *cobra.Command, _ keystore.Manager, vs []keystore.KeyVersion, v keystore.KeyVersion) error {
			if v.Primary || v.State == keystore.KeyEnabled {
				return fmt.Errorf("%w: %s is %s%s; disable it (and wait) before destroying it", keystore.ErrKeyDisabled, v.KeyID, v.State, map[bool]string{true: " and primary"}[v.Primary])
			}
			if err := g.checkUnused(cmd.Context(), &eDestroy, retire{report: auditReport, maxAge: maxAge, force: force, verb: "destroy"}, vs, v.KeyID); err != nil {
				return err
			}
			return g.confirm(fmt.Sprintf("Will DESTROY root key version %s in %s: irreversible; anything still encrypted under it is lost.\n", v.KeyID, byuri.Redact(uri)), yes)
		})
	for _, c := range []*cobra.Command{promote, destroy} {
		c.Flags().BoolVar(&yes, "yes", false, "confirm the change without asking")
	}
	for c, e := range map[*cobra.Command]*etcdFlags{disable: &eDisable, destroy: &eDestroy} {
		c.Flags().BoolVar(&force, "force", false, "go ahead even if the audit shows objects under the version (they become unreadable) or is not evidence enough")
		c.Flags().StringVar(&auditReport, "audit-report", "", "the JSON of kmsctl audit --resources '*.*' -o json, checked instead of a live audit")
		c.Flags().DurationVar(&maxAge, "audit-max-age", time.Hour, "refuse an --audit-report older than this")
		e.add(c, true)
		// The audit covers every value under --prefix: these would only narrow it.
		_ = c.Flags().MarkHidden("resources")
		_ = c.Flags().MarkHidden("encryption-config")
		c.MarkFlagsMutuallyExclusive("audit-report", "etcd-endpoints")
	}
	cmd.AddCommand(initCmd, list, add, promote, disable, enable, destroy)
	return cmd
}

// retire is how keys disable or destroy was asked to check its evidence.
type retire struct {
	report string        // --audit-report, or "" for a live audit
	maxAge time.Duration // --audit-max-age
	force  bool
	verb   string // "disable" or "destroy"
}

// maxFutureSkew bounds how far in the future a report's time may be (clock
// skew between the node that audited and this one).
const maxFutureSkew = 5 * time.Minute

// checkUnused refuses to retire keyID unless an audit (live, or the report
// r.report) covers every value under the etcd prefix, at one snapshot,
// recently, of the etcd this keystore's versions (vs) serve, and counts no
// object under keyID. With r.force it warns loudly instead, naming each
// check it overrides. With neither an audit nor force it refuses too:
// retiring a key needs evidence.
func (g *globals) checkUnused(ctx context.Context, e *etcdFlags, r retire, vs []keystore.KeyVersion, keyID string) error {
	if e.res.encConfig != "" || len(e.res.resources) > 0 {
		fmt.Fprintf(g.stderr, "warning: --resources and --encryption-config are ignored: %s audits every value under --prefix\n", r.verb)
	}
	var a *auditOut
	var err error
	switch {
	case r.report != "":
		a, err = loadAuditReport(r.report)
	case e.set():
		a, err = e.runAll(ctx, g.stderr)
	default:
		if r.force {
			g.warnForce(r.verb, keyID, []string{"no audit was given"})
			return nil
		}
		return usageError{fmt.Errorf("%s needs evidence that nothing uses %s: --etcd-endpoints (live audit) or --audit-report (or --force)", r.verb, keyID)}
	}
	if err != nil {
		return err
	}
	var scopes []string
	for _, s := range a.Resources {
		scopes = append(scopes, s.Prefix)
	}
	n := a.InUse(keyID)
	fmt.Fprintf(g.stderr, "audit at etcd revision %d (%s, %d objects under %v): %d under %s\n",
		a.Revision, a.Time.Format("2006-01-02 15:04:05Z"), a.Objects, scopes, n, keyID)
	whole, err := audit.Scopes(e.prefix, []string{allResources})
	if err != nil {
		return usageError{err}
	}
	var why []string
	if !slices.Contains(scopes, whole[0].Prefix) {
		why = append(why, fmt.Sprintf("the audit covers only %v, not every value under %s (kmsctl audit --resources '*.*' --prefix %s)", scopes, whole[0].Prefix, e.prefix))
	}
	if !a.Consistent {
		why = append(why, "the audit is not one etcd snapshot (etcd compacted it mid-scan): audit again")
	}
	var others []string
	seen := 0
	for _, v := range vs {
		if v.KeyID != keyID {
			others = append(others, v.KeyID)
			seen += a.InUse(v.KeyID)
		}
	}
	if seen == 0 {
		why = append(why, fmt.Sprintf("the audit counts no object under any other version of this keystore (%s): it read another cluster's etcd or the wrong --prefix, or nothing is encrypted under the new primary yet", strings.Join(others, ", ")))
	}
	if r.report != "" {
		switch age := g.now().Sub(a.Time); {
		case age > r.maxAge:
			why = append(why, fmt.Sprintf("the audit report is %s old (--audit-max-age %s): audit again", age.Round(time.Minute), r.maxAge))
		case age < -maxFutureSkew:
			why = append(why, fmt.Sprintf("the audit report is dated %s in the future: check the clocks, audit again", (-age).Round(time.Minute)))
		}
	}
	if n > 0 {
		why = append(why, fmt.Sprintf("the audit counts %d objects stored under it (run kmsctl migrate, then audit again)", n))
	}
	if len(why) == 0 {
		return nil
	}
	if r.force {
		g.warnForce(r.verb, keyID, why)
		return nil
	}
	return problem("refusing to %s %s: %s (--force overrides)", r.verb, keyID, strings.Join(why, "; "))
}

// warnForce prints, in a banner, that --force overrides each reason why.
func (g *globals) warnForce(verb, keyID string, why []string) {
	var b strings.Builder
	for _, w := range why {
		fmt.Fprintf(&b, "!!!   - %s\n", w)
	}
	fmt.Fprintf(g.stderr, "\n"+
		"!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"+
		"!!! WARNING: --force: %s %s although:\n%s"+
		"!!! Objects stored under it will fail to decrypt%s.\n"+
		"!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n",
		verb, keyID, b.String(), map[string]string{"destroy": " FOREVER", "disable": " until you run keys enable"}[verb])
}

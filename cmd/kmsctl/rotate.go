package main

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/migrate"
	"github.com/keywarden/keywarden/internal/rotation"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/byuri"
)

type rotateFlags struct {
	keystore      string
	nodes         []string
	nodeSockets   []string
	sock          socketFlags
	mig           migrateFlags
	etcd          etcdFlags
	newKey        string
	oldKey        string
	stateFile     string
	resume        bool
	dryRun        bool
	yes           bool
	failPlain     bool
	pluginTimeout time.Duration
	pickupWindow  time.Duration
	pickupPoll    time.Duration
	canaryNS      string
}

// rotateOut is the rotation report.
type rotateOut struct {
	DryRun  bool            `json:"dryRun"`
	State   *rotation.State `json:"rotation"`
	Migrate *migrateOut     `json:"migrate,omitempty"`
	Audit   *auditOut       `json:"audit,omitempty"`
	Next    []string        `json:"next,omitempty"`
}

func newRotateCmd(g *globals) *cobra.Command {
	var f rotateFlags
	f.etcd.res = &f.mig.res
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the root key end to end: add, promote, wait, migrate, audit",
		Long: `rotate runs the whole rotation of docs/rotation.md for one control plane and
checks each step before the next:

  add      a new root version in --keystore (or take --new-key, already added)
  promote  it to primary
  plugin   wait until keywarden's Status (--socket) reports its key_id
  pickup   wait until kube-apiserver encrypts with it: a canary Secret is
           written every few seconds and read back from etcd, up to
           --pickup-window
  migrate  rewrite every encrypted object (see kmsctl migrate)
  audit    read etcd for the migrated resources: zero objects may remain
           under the old key_id (not the whole-prefix audit that keys
           disable and destroy accept as evidence)
  report   what was done, and what is next (disable, later destroy, the old key)

It stops at the first surprise (plugin not reporting the key, apiserver not
picking it up, objects failing to migrate, objects left under the old key)
with exit code 3 and a hint: fix the cause, then run the same command with
--resume, which skips the steps already done (their record is in
--state-file).

--dry-run changes nothing: it checks that the keystore, the plugin, the
apiserver and etcd are reachable and consistent, shows what each step would
do, and audits etcd as it is now.

HA control planes: every node has its own keywarden and keystore copy, and
a node that meets a key it does not have cannot decrypt. So the rotation is
two-phase: add the version everywhere, then promote it everywhere. With
--nodes (the other nodes' keystore URIs, reachable from here: a mounted or
synced copy of each node's keyset, or each node's view of a shared token)
rotate does both: the add step adds NEW here and copies it into every
node's keyset (file keystores; a token must already have it), then checks
that every node has it enabled; the promote step refuses while any node
lacks it, then promotes it on every node. --node-sockets adds the other
nodes' keywarden sockets to the plugin step's wait. Without --nodes, rotate
refuses to add or promote when kube-apiserver lists more apiservers than
keystores it was given (the default/kubernetes EndpointSlice); do the two
phases by hand (kmsctl keys add, copy, promote on each node), then run
rotate with --new-key NEW --old-key OLD: it finds NEW already primary and
goes on with the waits, migrate and audit.

Changing the keystore needs --yes when stdin is not a terminal.`,
		Example: `  # single control-plane node, file keystore
  kmsctl rotate --keystore file:///etc/keywarden/keyset.json --socket unix:///run/keywarden/kms.sock \
    --kubeconfig /etc/kubernetes/admin.conf \
    --etcd-endpoints https://127.0.0.1:2379 --cacert /etc/kubernetes/pki/etcd/ca.crt \
    --cert /etc/kubernetes/pki/apiserver-etcd-client.crt --key /etc/kubernetes/pki/apiserver-etcd-client.key \
    --encryption-config /etc/kubernetes/encryption/encryption-config.yaml \
    --state-file /var/lib/keywarden/rotate.json --dry-run
  # then the same without --dry-run, with --yes; after a surprise, the same with --resume`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.rotate(cmd.Context(), &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.keystore, "keystore", "", "keystore URI of this node's keywarden: "+byuri.URIForms)
	_ = cmd.MarkFlagRequired("keystore")
	fl.StringSliceVar(&f.nodes, "nodes", nil, "HA: the other control-plane nodes' keystore URIs (their keyset copies), for the two-phase add-everywhere-then-promote-everywhere")
	fl.StringSliceVar(&f.nodeSockets, "node-sockets", nil, "HA: the other nodes' keywarden sockets (unix:///…), also waited for in the plugin step")
	f.sock.add(cmd)
	f.mig.add(cmd, false)
	f.etcd.add(cmd, false)
	_ = cmd.MarkFlagRequired("etcd-endpoints")
	fl.StringVar(&f.newKey, "new-key", "", "use this already-added version instead of adding one (HA: added and promoted on every node)")
	fl.StringVar(&f.oldKey, "old-key", "", "the version being retired (default: the primary when rotate starts)")
	fl.StringVar(&f.stateFile, "state-file", "kmsctl-rotate.json", "rotation record, for --resume (0600); the migration's progress goes next to it")
	fl.BoolVar(&f.resume, "resume", false, "go on with the rotation recorded in --state-file")
	fl.BoolVar(&f.dryRun, "dry-run", false, "check everything and show the plan; change nothing")
	fl.BoolVar(&f.yes, "yes", false, "confirm the change without asking")
	fl.BoolVar(&f.failPlain, "fail-on-plaintext", false, "treat plaintext objects found by the final audit as a surprise")
	fl.DurationVar(&f.pluginTimeout, "plugin-timeout", time.Minute, "how long keywarden may take to report the new key_id (its --check-interval is 5s)")
	fl.DurationVar(&f.pickupWindow, "pickup-window", 3*time.Minute, "how long kube-apiserver may take to start using the new key (it polls Status about once a minute)")
	fl.DurationVar(&f.pickupPoll, "pickup-poll", 3*time.Second, "how often the canary Secret is written and read back")
	fl.StringVar(&f.canaryNS, "canary-namespace", "default", "namespace of the canary Secret kmsctl-rotation-canary (deleted at the end)")
	return cmd
}

func (g *globals) resumeHint(f *rotateFlags) string {
	args := slices.Clone(g.args)
	if len(args) > 0 {
		args[0] = path.Base(args[0])
	}
	if !slices.Contains(args, "--resume") {
		args = append(args, "--resume")
	}
	return strings.Join(args, " ")
}

func (g *globals) rotate(ctx context.Context, f *rotateFlags) (err error) {
	if f.dryRun && f.resume {
		return usageError{errors.New("--dry-run and --resume do not go together")}
	}
	b, err := byuri.Open(ctx, f.keystore)
	if err != nil {
		return err
	}
	defer b.Close()
	m, ok := b.(keystore.Manager)
	if !ok {
		return fmt.Errorf("keystore %s manages its key versions in the provider's own console or API: use keys in the provider, then migrate and audit", b.Name())
	}
	vs, err := m.List(ctx)
	if err != nil {
		return err
	}
	primary := rotation.Primary(vs)

	st, err := rotation.Begin(f.stateFile, rotation.Request{
		Resume: f.resume, DryRun: f.dryRun, Keystore: f.keystore, Nodes: f.nodes,
		OldKey: f.oldKey, NewKey: f.newKey, Versions: vs, Now: g.now().UTC(), Redact: byuri.Redact,
	})
	if err != nil {
		return exitFor(err)
	}
	out := &rotateOut{DryRun: f.dryRun, State: st}
	r := g.rotationRunner(f, out, &rotation.Node{URI: byuri.Redact(f.keystore), Backend: b, Manager: m})

	// Preflight, also what --dry-run shows: the plugin must be healthy and
	// serve the keystore's primary, else this is not the keystore it uses.
	if err := r.CheckPlugin(ctx, primary); err != nil {
		return exitFor(err)
	}
	nodes, closeNodes, err := openNodes(ctx, f.keystore, f.nodes)
	if err != nil {
		return err
	}
	defer closeNodes()
	r.Nodes = nodes
	if err := r.CheckNodes(ctx, primary); err != nil {
		return exitFor(err)
	}

	if f.dryRun {
		return g.rotateDryRun(ctx, f, out, vs, primary, nodes)
	}

	plan := fmt.Sprintf("Will rotate the root key of %s: retire %s for %s.\n"+
		"Steps: add, promote, wait for the plugin (%s), wait for kube-apiserver (%s), migrate, audit.\n",
		byuri.Redact(f.keystore), st.OldKey, orNone(map[bool]string{true: st.NewKey, false: "a new version"}[st.NewKey != ""]), f.pluginTimeout, f.pickupWindow)
	if len(nodes) > 0 {
		plan += fmt.Sprintf("HA, two phases: phase 1 puts the new version in the %d other nodes' keystores (%s) and checks that all have it; phase 2 promotes it in all %d, only then.\n",
			len(nodes), strings.Join(redactAll(f.nodes), ", "), 1+len(nodes))
	}
	if f.resume {
		plan = fmt.Sprintf("Will resume the rotation of %s from %s to %s recorded in %s.\n", byuri.Redact(f.keystore), st.OldKey, st.NewKey, f.stateFile)
	}
	if err := g.confirm(plan, f.yes); err != nil {
		return err
	}
	if err := st.Save(f.stateFile); err != nil {
		return fmt.Errorf("writing rotation state: %w", err)
	}

	defer func() {
		if err == nil {
			return
		}
		_ = g.printRotate(out)
		var s rotation.Surprise
		if errors.As(err, &s) || !isUsage(err) {
			fmt.Fprintf(g.stderr, "\nkmsctl: rotation stopped: %v\nFix the cause, then resume with:\n  %s\n", err, g.resumeHint(f))
		}
		err = exitFor(err)
	}()
	if err := r.Run(ctx); err != nil {
		return err
	}
	out.Next = []string{
		`watch for a while that nothing fails to decrypt (keywarden_grpc_server_handled_total{grpc_method="Decrypt",grpc_code!="OK"})`,
		fmt.Sprintf("kmsctl keys disable --keystore %s --etcd-endpoints ... %s   (audits every value under the prefix; on every node; reversible with keys enable)", byuri.Redact(f.keystore), st.OldKey),
		fmt.Sprintf("later: kmsctl keys destroy --keystore %s --etcd-endpoints ... %s", byuri.Redact(f.keystore), st.OldKey),
	}
	return g.printRotate(out)
}

// exitFor gives rotation's error kinds kmsctl's exit codes: a surprise is a
// problem (3), a refused request a usage error (2).
func exitFor(err error) error {
	var s rotation.Surprise
	if errors.As(err, &s) {
		return problem("%s", s.Msg)
	}
	var u rotation.UsageError
	if errors.As(err, &u) {
		return usageError{err}
	}
	return err
}

// rotationRunner wires the rotation protocol to kmsctl's flags and clients.
// The pickup, migrate and audit steps reach the cluster only when they run,
// and fill out with their reports.
func (g *globals) rotationRunner(f *rotateFlags, out *rotateOut, self *rotation.Node) *rotation.Runner {
	plugin := func(sock string) rotation.Plugin {
		s := &socketFlags{socket: sock, timeout: f.sock.timeout}
		return rotation.Plugin{Socket: sock, Status: s.status}
	}
	r := &rotation.Runner{
		Path: f.stateFile, State: out.State, Resume: f.resume,
		Keystore: self, Plugin: plugin(f.sock.socket), PluginTimeout: f.pluginTimeout,
		FailOnPlaintext: f.failPlain, Log: g.stderr, Now: g.now,
	}
	for _, s := range f.nodeSockets {
		r.NodePlugins = append(r.NodePlugins, plugin(s))
	}
	r.APIServers = func(ctx context.Context) (int, error) {
		k, err := f.mig.kube.connect()
		if err != nil {
			return 0, err
		}
		return rotation.CountAPIServers(ctx, k.dyn)
	}
	r.Pickup = func(ctx context.Context, keyID string) (string, error) {
		k, err := f.mig.kube.connect()
		if err != nil {
			return "", err
		}
		return g.waitPickup(ctx, k, &f.etcd, canaryOpts{f.canaryNS, f.pickupWindow, f.pickupPoll}, keyID)
	}
	r.Migrate = func(ctx context.Context, stateFile, svmPrefix string) (*migrate.Summary, []migrate.SVMResult, error) {
		mf := f.mig
		mf.stateFile = stateFile
		mo, err := g.runMigrate(ctx, &mf, svmPrefix)
		out.Migrate = mo
		if err != nil {
			return nil, nil, err
		}
		return mo.Summary, mo.SVM, nil
	}
	r.Audit = func(ctx context.Context) (*audit.Report, error) {
		a, err := f.etcd.run(ctx, g.stderr)
		if err != nil {
			return nil, err
		}
		out.Audit = a
		return a.Report, nil
	}
	return r
}

func orNone(s string) string {
	if s == "" {
		return "(none yet)"
	}
	return s
}

// rotateDryRun checks everything rotate needs and shows the plan.
func (g *globals) rotateDryRun(ctx context.Context, f *rotateFlags, out *rotateOut, vs []keystore.KeyVersion, primary string, nodes []*rotation.Node) error {
	st := out.State
	plan := func(name, detail string) {
		st.Record(rotation.StepResult{Name: name, Status: rotation.StatusPlanned, Detail: detail})
	}
	if st.NewKey != "" {
		plan(rotation.StepAdd, "use existing version "+st.NewKey)
		if st.NewKey == primary {
			plan(rotation.StepPromote, st.NewKey+" is already primary")
		} else {
			plan(rotation.StepPromote, "promote "+st.NewKey)
		}
	} else {
		plan(rotation.StepAdd, fmt.Sprintf("add a version to %s (%d now)", byuri.Redact(f.keystore), len(vs)))
		plan(rotation.StepPromote, "promote it (primary now: "+primary+")")
	}
	if len(nodes) > 0 {
		// The two phases, and what each node has now.
		have, err := rotation.PlanNodes(ctx, nodes, st.NewKey)
		if err != nil {
			return err
		}
		add := out.State.Steps[0]
		plan(rotation.StepAdd, add.Detail+"; phase 1: put it on every other node ("+strings.Join(have, "; ")+") and check all have it enabled")
		plan(rotation.StepPromote, fmt.Sprintf("phase 2, only once every node has it: promote it in all %d keystores", 1+len(nodes)))
	}
	plan(rotation.StepPlugin, fmt.Sprintf("wait up to %s for Status key_id to change on %s (now %s, healthy)", f.pluginTimeout, strings.Join(append([]string{f.sock.socket}, f.nodeSockets...), ", "), primary))
	plan(rotation.StepPickup, fmt.Sprintf("write Secret %s/%s every %s until etcd shows it under the new key, up to %s", f.canaryNS, rotation.CanaryName, f.pickupPoll, f.pickupWindow))
	k, err := f.mig.kube.connect()
	if err != nil {
		return err
	}
	names, err := f.mig.res.names()
	if err != nil {
		return err
	}
	ts, warnings, err := migrate.Resolve(k.disc, names)
	for _, w := range warnings {
		fmt.Fprintln(g.stderr, "warning:", w)
	}
	if err != nil {
		return usageError{err}
	}
	var targets []string
	for _, t := range ts {
		targets = append(targets, t.Name)
	}
	plan(rotation.StepMigrate, fmt.Sprintf("via %s on %s: %s (qps %g, concurrency %d)", f.mig.via, k.cfg.Host, strings.Join(targets, ", "), f.mig.kube.qps, f.mig.concurrency))
	a, err := f.etcd.run(ctx, g.stderr)
	if err != nil {
		return err
	}
	out.Audit = a
	plan(rotation.StepAudit, fmt.Sprintf("require 0 objects under %s (now %d of %d)", st.OldKey, a.InUse(st.OldKey), a.Objects))
	return g.printRotate(out)
}

func (g *globals) printRotate(out *rotateOut) error {
	return g.print(out, func(w *tabwriter.Writer) {
		st := out.State
		title := "ROTATION"
		if out.DryRun {
			title = "ROTATION PLAN (dry run: nothing changed)"
		}
		fmt.Fprintf(w, "%s: %s -> %s in %s\n\n", title, st.OldKey, orNone(st.NewKey), byuri.Redact(st.Keystore))
		fmt.Fprintln(w, "STEP\tSTATUS\tSECONDS\tDETAIL")
		for _, s := range st.Steps {
			fmt.Fprintf(w, "%s\t%s\t%.1f\t%s\n", s.Name, s.Status, s.Seconds, s.Detail)
		}
		if out.Migrate != nil && out.Migrate.Summary != nil {
			s := out.Migrate.Summary
			fmt.Fprintf(w, "\nmigrate: rewritten %d, skipped %d, failed %d in %s\n", s.Rewritten, s.Skipped, s.Failed, s.Duration)
			for _, fl := range s.Failures {
				fmt.Fprintf(w, "failed: %s %s/%s: %s\n", fl.Resource, fl.Namespace, fl.Name, fl.Error)
			}
		}
		if a := out.Audit; a != nil {
			fmt.Fprintf(w, "\naudit: etcd revision %d, %d objects, plaintext %d, other providers %d, malformed %d\n", a.Revision, a.Objects, a.Plaintext, a.OtherProviders, a.Malformed)
			fmt.Fprintln(w, "KEY ID\tOBJECTS")
			for _, k := range sortedKeys(a.KeyIDs) {
				fmt.Fprintf(w, "%s\t%d\n", k, a.KeyIDs[k])
			}
		}
		if len(out.Next) > 0 {
			fmt.Fprintln(w, "\nNEXT")
			for _, n := range out.Next {
				fmt.Fprintf(w, "  %s\n", n)
			}
		}
	})
}

// redactAll is byuri.Redact of every URI in uris.
func redactAll(uris []string) []string {
	if uris == nil {
		return nil
	}
	out := make([]string, len(uris))
	for i, u := range uris {
		out[i] = byuri.Redact(u)
	}
	return out
}

// canaryOpts are the pickup step's flags, shared by rotate and follow.
type canaryOpts struct {
	namespace    string
	window, poll time.Duration
}

// waitPickup is the pickup step of rotate and follow: rotation.WaitPickup
// writing the canary through k and reading it back from etcd.
func (g *globals) waitPickup(ctx context.Context, k *kube, e *etcdFlags, o canaryOpts, keyID string) (string, error) {
	c, err := e.client()
	if err != nil {
		return "", err
	}
	defer c.Close()
	return rotation.WaitPickup(ctx, rotation.Canary{
		Client: k.dyn, Readyz: k.disc.RESTClient(), Get: func(ctx context.Context, key string) ([]byte, bool, error) {
			ctx, cancel := context.WithTimeout(ctx, e.timeout)
			defer cancel()
			resp, err := c.Get(ctx, key, clientv3.WithLimit(1))
			if err != nil || len(resp.Kvs) != 1 {
				return nil, false, err
			}
			return resp.Kvs[0].Value, true, nil
		},
		Prefix: e.prefix, Namespace: o.namespace, Window: o.window, Poll: o.poll, Now: g.now,
	}, keyID)
}

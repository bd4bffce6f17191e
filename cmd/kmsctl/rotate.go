package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/keywarden/keywarden/internal/atomicfile"
	"github.com/keywarden/keywarden/internal/migrate"
	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/byuri"
	"github.com/keywarden/keywarden/keystore/file"
)

// The steps of a rotation, in order.
const (
	stepAdd     = "add"
	stepPromote = "promote"
	stepPlugin  = "plugin"
	stepPickup  = "pickup"
	stepMigrate = "migrate"
	stepAudit   = "audit"
)

// rotateState is the rotation's state file: which steps are done, so that
// --resume goes on after the first surprise. It records keystore URIs as
// byuri.Redact prints them, and --resume compares them so.
type rotateState struct {
	Version  int          `json:"version"`
	Keystore string       `json:"keystore"`
	Nodes    []string     `json:"nodes,omitempty"`
	OldKey   string       `json:"oldKeyID"`
	NewKey   string       `json:"newKeyID,omitempty"`
	Started  time.Time    `json:"started"`
	Steps    []stepResult `json:"steps"`
	Complete bool         `json:"complete"`
}

type stepResult struct {
	Name    string  `json:"step"`
	Status  string  `json:"status"` // done, failed, planned, checked
	Detail  string  `json:"detail"`
	Seconds float64 `json:"seconds"`
}

func (s *rotateState) done(step string) bool {
	return slices.ContainsFunc(s.Steps, func(r stepResult) bool { return r.Name == step && r.Status == "done" })
}

func (s *rotateState) record(r stepResult) {
	s.Steps = slices.DeleteFunc(s.Steps, func(o stepResult) bool { return o.Name == r.Name })
	s.Steps = append(s.Steps, r)
}

func loadRotateState(p string) (*rotateState, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s rotateState
	if err := json.Unmarshal(b, &s); err != nil || s.Version != 1 {
		return nil, fmt.Errorf("rotation state file %s is not one kmsctl wrote (%v)", p, err)
	}
	return &s, nil
}

func (s *rotateState) save(p string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(p, append(b, '\n'), 0o600)
}

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
	DryRun  bool         `json:"dryRun"`
	State   *rotateState `json:"rotation"`
	Migrate *migrateOut  `json:"migrate,omitempty"`
	Audit   *auditOut    `json:"audit,omitempty"`
	Next    []string     `json:"next,omitempty"`
}

// surprise is a rotation stop: exit 3 with a resume hint.
type surprise struct{ msg string }

func (s surprise) Error() string { return s.msg }

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
	primary := ""
	for _, v := range vs {
		if v.Primary {
			primary = v.KeyID
		}
	}

	st, err := loadRotateState(f.stateFile)
	if err != nil {
		return err
	}
	switch {
	case f.resume && st == nil:
		return usageError{fmt.Errorf("--resume: no rotation recorded in %s", f.stateFile)}
	case f.resume && st.Complete:
		return usageError{fmt.Errorf("--resume: the rotation in %s is complete", f.stateFile)}
	case f.resume && byuri.Redact(st.Keystore) != byuri.Redact(f.keystore):
		return usageError{fmt.Errorf("--resume: %s records keystore %s, not %s", f.stateFile, byuri.Redact(st.Keystore), byuri.Redact(f.keystore))}
	case f.resume && !slices.Equal(redactAll(st.Nodes), redactAll(f.nodes)):
		return usageError{fmt.Errorf("--resume: %s records --nodes %s, not %s", f.stateFile, strings.Join(redactAll(st.Nodes), ","), strings.Join(redactAll(f.nodes), ","))}
	case !f.resume && !f.dryRun && st != nil && !st.Complete:
		return usageError{fmt.Errorf("a rotation from %s to %s is in progress in %s: add --resume, or remove the file to start over",
			st.OldKey, orNone(st.NewKey), f.stateFile)}
	case !f.resume:
		st = &rotateState{Version: 1, Keystore: byuri.Redact(f.keystore), Nodes: redactAll(f.nodes), OldKey: f.oldKey, NewKey: f.newKey, Started: g.now().UTC()}
		if st.OldKey == "" {
			st.OldKey = primary
		}
	}
	if st.OldKey == st.NewKey && st.NewKey != "" {
		return usageError{fmt.Errorf("--old-key and --new-key are both %s", st.NewKey)}
	}
	if f.newKey != "" && !slices.ContainsFunc(vs, func(v keystore.KeyVersion) bool { return v.KeyID == f.newKey }) {
		return usageError{fmt.Errorf("--new-key %s is not in %s: add it (and distribute it) first", f.newKey, byuri.Redact(f.keystore))}
	}
	if !slices.ContainsFunc(vs, func(v keystore.KeyVersion) bool { return v.KeyID == st.OldKey }) {
		return usageError{fmt.Errorf("old key %s is not in %s", st.OldKey, byuri.Redact(f.keystore))}
	}
	out := &rotateOut{DryRun: f.dryRun, State: st}

	// Preflight, also what --dry-run shows: the plugin must be healthy and
	// serve the keystore's primary, else this is not the keystore it uses.
	pst, err := f.sock.status(ctx)
	if err != nil {
		return err
	}
	if pst.Healthz != "ok" {
		return problem("plugin is not healthy (%s): fix that before rotating", pst.Healthz)
	}
	if !f.resume && pst.KeyId != primary {
		return problem("plugin's Status key_id %s is not %s's primary %s: is --keystore the keystore this plugin uses, and has it reloaded?",
			pst.KeyId, byuri.Redact(f.keystore), primary)
	}
	nodes, closeNodes, err := openNodes(ctx, f.keystore, f.nodes)
	if err != nil {
		return err
	}
	defer closeNodes()
	if err := g.preflightNodes(ctx, f, st, nodes, primary); err != nil {
		return err
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
	if err := st.save(f.stateFile); err != nil {
		return fmt.Errorf("writing rotation state: %w", err)
	}

	defer func() {
		if err == nil {
			return
		}
		_ = st.save(f.stateFile)
		_ = g.printRotate(out)
		var s surprise
		if errors.As(err, &s) || !isUsage(err) {
			fmt.Fprintf(g.stderr, "\nkmsctl: rotation stopped: %v\nFix the cause, then resume with:\n  %s\n", err, g.resumeHint(f))
		}
		if errors.As(err, &s) {
			err = problem("%s", s.msg)
		}
	}()

	run := func(name string, fn func() (string, error)) error {
		if st.done(name) {
			return nil
		}
		t0 := g.now()
		detail, err := fn()
		r := stepResult{Name: name, Status: "done", Detail: detail, Seconds: g.now().Sub(t0).Seconds()}
		if err != nil {
			r.Status, r.Detail = "failed", err.Error()
		}
		st.record(r)
		if serr := st.save(f.stateFile); serr != nil && err == nil {
			err = fmt.Errorf("writing rotation state: %w", serr)
		}
		fmt.Fprintf(g.stderr, "rotate: %s: %s (%s)\n", name, r.Status, strings.TrimSpace(r.Detail))
		return err
	}

	steps := []struct {
		name string
		fn   func() (string, error)
	}{
		{stepAdd, func() (string, error) {
			detail := "using existing version " + st.NewKey
			if st.NewKey == "" {
				v, err := m.Add(ctx)
				if err != nil {
					return "", err
				}
				st.NewKey = v.KeyID
				detail = "added " + v.KeyID
			}
			if len(nodes) == 0 {
				return detail, nil
			}
			// Phase 1 of the HA rotation: NEW on every node, or no promote.
			d, err := distribute(ctx, b, nodes, st.NewKey)
			return detail + d, err
		}},
		{stepPromote, func() (string, error) {
			if len(nodes) > 0 {
				return promoteEverywhere(ctx, m, nodes, st.NewKey)
			}
			vs, err := m.List(ctx)
			if err != nil {
				return "", err
			}
			for _, v := range vs {
				if v.KeyID == st.NewKey && v.Primary {
					return st.NewKey + " was already primary", nil
				}
			}
			if err := m.Promote(ctx, st.NewKey); err != nil {
				return "", err
			}
			return "promoted " + st.NewKey, nil
		}},
		{stepPlugin, func() (string, error) {
			var details []string
			for _, sock := range append([]string{f.sock.socket}, f.nodeSockets...) {
				d, err := g.waitPlugin(ctx, &socketFlags{socket: sock, timeout: f.sock.timeout}, f.pluginTimeout, st.NewKey)
				if err != nil {
					return "", err
				}
				details = append(details, d)
			}
			return strings.Join(details, "; "), nil
		}},
		{stepPickup, func() (string, error) { return g.waitPickup(ctx, f, st.NewKey) }},
		{stepMigrate, func() (string, error) {
			mf := f.mig
			mf.stateFile = f.stateFile + ".migrate.json"
			mo, err := g.runMigrate(ctx, &mf, "kmsctl-rotate-"+stored.Digest([]byte(st.NewKey))[:8])
			out.Migrate = mo
			if err != nil {
				return "", err
			}
			if mo.Summary != nil {
				if mo.Summary.Failed > 0 {
					return "", surprise{fmt.Sprintf("%d objects failed to migrate (listed in the report)", mo.Summary.Failed)}
				}
				return fmt.Sprintf("rewritten %d, skipped %d", mo.Summary.Rewritten, mo.Summary.Skipped), nil
			}
			return fmt.Sprintf("%d StorageVersionMigrations succeeded", len(mo.SVM)), nil
		}},
		{stepAudit, func() (string, error) {
			a, err := f.etcd.run(ctx, g.stderr)
			if err != nil {
				return "", err
			}
			out.Audit = a
			if n := a.InUse(st.OldKey); n > 0 {
				return "", surprise{fmt.Sprintf("the audit still counts %d objects under %s (written meanwhile by an apiserver that had not picked up the new key, or missed by the migration); --resume migrates and audits again", n, st.OldKey)}
			}
			if f.failPlain && a.Plaintext+a.Unrecognized > 0 {
				return "", surprise{fmt.Sprintf("the audit counts %d plaintext objects (--fail-on-plaintext)", a.Plaintext+a.Unrecognized)}
			}
			if a.Malformed+a.BadAnnotation > 0 {
				fmt.Fprintf(g.stderr, "warning: the audit counts %d malformed values and %d with a bad keywarden annotation: see the report\n", a.Malformed, a.BadAnnotation)
			}
			return fmt.Sprintf("0 objects under %s; %d under %s; %d plaintext", st.OldKey, a.InUse(st.NewKey), st.NewKey, a.Plaintext), nil
		}},
	}
	for _, s := range steps {
		if err := run(s.name, s.fn); err != nil {
			if s.name == stepAudit {
				// A resume must migrate again before it audits again.
				st.Steps = slices.DeleteFunc(st.Steps, func(r stepResult) bool { return r.Name == stepMigrate })
				_ = os.Remove(f.stateFile + ".migrate.json")
			}
			return err
		}
	}
	st.Complete = true
	if err := st.save(f.stateFile); err != nil {
		return err
	}
	out.Next = []string{
		`watch for a while that nothing fails to decrypt (keywarden_grpc_server_handled_total{grpc_method="Decrypt",grpc_code!="OK"})`,
		fmt.Sprintf("kmsctl keys disable --keystore %s --etcd-endpoints ... %s   (audits every value under the prefix; on every node; reversible with keys enable)", byuri.Redact(f.keystore), st.OldKey),
		fmt.Sprintf("later: kmsctl keys destroy --keystore %s --etcd-endpoints ... %s", byuri.Redact(f.keystore), st.OldKey),
	}
	return g.printRotate(out)
}

func orNone(s string) string {
	if s == "" {
		return "(none yet)"
	}
	return s
}

// waitPlugin polls the plugin's Status on sock until it reports keyID.
func (g *globals) waitPlugin(ctx context.Context, sock *socketFlags, timeout time.Duration, keyID string) (string, error) {
	t0 := g.now()
	var last string
	for {
		r, err := sock.status(ctx)
		if err == nil && r.KeyId == keyID && r.Healthz == "ok" {
			return fmt.Sprintf("%s: Status key_id %s after %s", sock.socket, keyID, g.now().Sub(t0).Round(time.Second)), nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("key_id %s, healthz %s", r.KeyId, r.Healthz)
		}
		if g.now().Sub(t0) > timeout {
			return "", surprise{fmt.Sprintf("keywarden on %s did not report key_id %s within --plugin-timeout %s (last: %s): is it running on this keystore?", sock.socket, keyID, timeout, last)}
		}
		if err := sleep(ctx, time.Second); err != nil {
			return "", err
		}
	}
}

var secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

const canaryName = "kmsctl-rotation-canary"

// waitPickup writes a canary Secret through the apiserver and reads its
// stored value from etcd until it is under keyID.
func (g *globals) waitPickup(ctx context.Context, f *rotateFlags, keyID string) (string, error) {
	k, err := f.mig.kube.connect()
	if err != nil {
		return "", err
	}
	c, err := f.etcd.client()
	if err != nil {
		return "", err
	}
	defer c.Close()
	secrets := k.dyn.Resource(secretsGVR).Namespace(f.canaryNS)
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = secrets.Delete(dctx, canaryName, metav1.DeleteOptions{})
	}()
	etcdKey := strings.TrimSuffix(path.Clean(f.etcd.prefix), "/") + "/secrets/" + f.canaryNS + "/" + canaryName
	t0 := g.now()
	var last string
	for i := 0; ; i++ {
		if i > 0 {
			// kube-apiserver calls Status once a minute, and also for
			// /readyz/kms-providers when its last answer is over 20 s old
			// (as a load balancer's probe would): ask, to learn sooner.
			_ = k.disc.RESTClient().Get().AbsPath("/readyz/kms-providers").Do(ctx).Error()
		}
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "Secret",
			"metadata":   map[string]any{"name": canaryName, "namespace": f.canaryNS, "labels": map[string]any{"app.kubernetes.io/managed-by": "kmsctl"}},
			"stringData": map[string]any{"probe": fmt.Sprintf("%d-%d", g.now().UnixNano(), i)},
		}}
		_, err := secrets.Update(ctx, obj, metav1.UpdateOptions{FieldManager: "kmsctl-rotate"})
		if apierrors.IsNotFound(err) {
			_, err = secrets.Create(ctx, obj, metav1.CreateOptions{FieldManager: "kmsctl-rotate"})
		}
		if err != nil {
			return "", fmt.Errorf("writing the canary Secret %s/%s: %w", f.canaryNS, canaryName, err)
		}
		gctx, cancel := context.WithTimeout(ctx, f.etcd.timeout)
		resp, err := c.Get(gctx, etcdKey, clientv3.WithLimit(1))
		cancel()
		if err != nil {
			return "", fmt.Errorf("reading the canary from etcd: %w", err)
		}
		if len(resp.Kvs) == 1 {
			v := stored.Parse(resp.Kvs[0].Value)
			switch {
			case v.Class == stored.KMSv2 && v.Object.KeyID == keyID:
				return fmt.Sprintf("kube-apiserver wrote the canary under %s after %s", keyID, g.now().Sub(t0).Round(time.Second)), nil
			case v.Class == stored.KMSv2:
				last = "canary stored under " + v.Object.KeyID
			default:
				return "", surprise{fmt.Sprintf("the canary Secret is stored as %s, not KMS v2: are Secrets encrypted by keywarden, and is --prefix (%s) kube-apiserver's --etcd-prefix?", v.Label(), f.etcd.prefix)}
			}
		} else {
			last = "canary not found in etcd at " + etcdKey
		}
		if g.now().Sub(t0) > f.pickupWindow {
			return "", surprise{fmt.Sprintf("kube-apiserver did not start using %s within --pickup-window %s (%s)", keyID, f.pickupWindow, last)}
		}
		if err := sleep(ctx, f.pickupPoll); err != nil {
			return "", err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// rotateDryRun checks everything rotate needs and shows the plan.
func (g *globals) rotateDryRun(ctx context.Context, f *rotateFlags, out *rotateOut, vs []keystore.KeyVersion, primary string, nodes []*node) error {
	st := out.State
	plan := func(name, detail string) { st.record(stepResult{Name: name, Status: "planned", Detail: detail}) }
	if st.NewKey != "" {
		plan(stepAdd, "use existing version "+st.NewKey)
		if st.NewKey == primary {
			plan(stepPromote, st.NewKey+" is already primary")
		} else {
			plan(stepPromote, "promote "+st.NewKey)
		}
	} else {
		plan(stepAdd, fmt.Sprintf("add a version to %s (%d now)", byuri.Redact(f.keystore), len(vs)))
		plan(stepPromote, "promote it (primary now: "+primary+")")
	}
	if len(nodes) > 0 {
		// The two phases, and what each node has now.
		var have []string
		for _, n := range nodes {
			_, ok, err := versionOn(ctx, n.m, st.NewKey)
			if err != nil {
				return fmt.Errorf("node %s: %w", n.uri, err)
			}
			how := "will be copied"
			switch {
			case st.NewKey != "" && ok:
				how = "has it"
			case n.b.Name() != file.Name:
				how = "must get it from its token's replication; rotate only checks"
			}
			have = append(have, n.uri+": "+how)
		}
		add := out.State.Steps[0]
		plan(stepAdd, add.Detail+"; phase 1: put it on every other node ("+strings.Join(have, "; ")+") and check all have it enabled")
		plan(stepPromote, fmt.Sprintf("phase 2, only once every node has it: promote it in all %d keystores", 1+len(nodes)))
	}
	plan(stepPlugin, fmt.Sprintf("wait up to %s for Status key_id to change on %s (now %s, healthy)", f.pluginTimeout, strings.Join(append([]string{f.sock.socket}, f.nodeSockets...), ", "), primary))
	plan(stepPickup, fmt.Sprintf("write Secret %s/%s every %s until etcd shows it under the new key, up to %s", f.canaryNS, canaryName, f.pickupPoll, f.pickupWindow))
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
	plan(stepMigrate, fmt.Sprintf("via %s on %s: %s (qps %g, concurrency %d)", f.mig.via, k.cfg.Host, strings.Join(targets, ", "), f.mig.kube.qps, f.mig.concurrency))
	a, err := f.etcd.run(ctx, g.stderr)
	if err != nil {
		return err
	}
	out.Audit = a
	plan(stepAudit, fmt.Sprintf("require 0 objects under %s (now %d of %d)", st.OldKey, a.InUse(st.OldKey), a.Objects))
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

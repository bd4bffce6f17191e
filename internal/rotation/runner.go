package rotation

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/migrate"
	"github.com/keywarden/keywarden/internal/stored"
)

// Runner runs one control plane's rotation, step by step, keeping State in
// the file at Path. The steps it cannot do alone (reach the cluster to
// watch the pickup, migrate, audit) are the caller's functions; each is
// called only when its step runs, so that a cluster the caller cannot
// reach fails that step, recorded, rather than the rotation's start.
// Pickup, Migrate, Audit and APIServers must be set.
type Runner struct {
	// Path is the state file: State is saved there after every step.
	Path  string
	State *State
	// Resume says State was recorded by an earlier run: the preflight
	// skips the checks that hold only before anything changed.
	Resume bool
	// Keystore is this node's keystore; Nodes the other control-plane
	// nodes' (HA: the two-phase add-everywhere, then promote-everywhere).
	Keystore *Node
	Nodes    []*Node
	// Plugin is this node's keywarden; NodePlugins the other nodes'. The
	// plugin step waits up to PluginTimeout for each to report the new
	// key, asking every PluginPoll (zero: one second).
	Plugin                    Plugin
	NodePlugins               []Plugin
	PluginTimeout, PluginPoll time.Duration
	// Pickup runs the pickup step for keyID: WaitPickup, with the caller's
	// clients.
	Pickup func(ctx context.Context, keyID string) (string, error)
	// Migrate rewrites every encrypted object, keeping its progress in
	// stateFile and naming any StorageVersionMigrations with svmPrefix. It
	// returns the summary of a migration by updates, or the results of
	// one by StorageVersionMigrations.
	Migrate func(ctx context.Context, stateFile, svmPrefix string) (*migrate.Summary, []migrate.SVMResult, error)
	// Audit reads etcd for the migrated resources.
	Audit func(ctx context.Context) (*audit.Report, error)
	// FailOnPlaintext makes plaintext objects in the final audit a
	// Surprise.
	FailOnPlaintext bool
	// APIServers counts the kube-apiservers, for the preflight's guard
	// against leaving one out (CountAPIServers).
	APIServers func(ctx context.Context) (int, error)
	// Log gets a line per step run, and warnings; nil discards them.
	Log io.Writer
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

func (r *Runner) now() time.Time {
	if r.Now == nil {
		return time.Now()
	}
	return r.Now()
}

func (r *Runner) log() io.Writer {
	if r.Log == nil {
		return io.Discard
	}
	return r.Log
}

// CheckPlugin is the preflight of this node's keywarden: it must be
// healthy and, unless resuming, serve the keystore's primary, else it is
// not the keystore this keywarden uses.
func (r *Runner) CheckPlugin(ctx context.Context, primary string) error {
	st, err := r.Plugin.Status(ctx)
	if err != nil {
		return err
	}
	if st.Healthz != "ok" {
		return surprisef("plugin is not healthy (%s): fix that before rotating", st.Healthz)
	}
	if !r.Resume && st.KeyId != primary {
		return surprisef("plugin's Status key_id %s is not %s's primary %s: is --keystore the keystore this plugin uses, and has it reloaded?",
			st.KeyId, r.Keystore.URI, primary)
	}
	return nil
}

// CheckNodes checks, before the rotation changes anything, that the other
// nodes' keystores and plugins agree with this node's, and that no
// kube-apiserver is left out of a rotation that will add or promote: more
// apiservers than keystores is a UsageError. If they cannot be counted it
// warns and goes on.
func (r *Runner) CheckNodes(ctx context.Context, primary string) error {
	st := r.State
	if !r.Resume {
		for _, n := range r.Nodes {
			p, err := PrimaryOn(ctx, n.Manager)
			if err != nil {
				return fmt.Errorf("node %s: %w", n.URI, err)
			}
			if p != primary {
				return surprisef("node %s's primary is %s, not %s as in %s: the nodes' keystores differ; make them agree before rotating", n.URI, orNone(p), primary, r.Keystore.URI)
			}
		}
		for _, p := range r.NodePlugins {
			s, err := p.Status(ctx)
			if err != nil {
				return fmt.Errorf("--node-sockets %s: %w", p.Socket, err)
			}
			if s.Healthz != "ok" || s.KeyId != primary {
				return surprisef("keywarden on %s is not healthy on %s (healthz %s, key_id %s): fix that before rotating", p.Socket, primary, s.Healthz, s.KeyId)
			}
		}
	}
	changes := !st.Done(StepAdd) || !st.Done(StepPromote)
	if !r.Resume {
		changes = st.NewKey == "" || st.NewKey != primary
	}
	if !changes {
		return nil
	}
	n, err := r.APIServers(ctx)
	if err != nil {
		fmt.Fprintf(r.log(), "warning: could not count the kube-apiservers (%v): on an HA control plane, --nodes must list every other node's keystore\n", err)
		return nil
	}
	if n > 1+len(r.Nodes) {
		return usagef("kube-apiserver lists %d apiservers (EndpointSlice default/kubernetes) but rotate would add and promote in %d keystore(s): "+
			"list every other control-plane node's keystore in --nodes, or add and promote on every node yourself and pass --new-key (docs/rotation.md)", n, 1+len(r.Nodes))
	}
	return nil
}

// Run runs every step not yet done, in order, saving State after each,
// and marks the rotation complete. It stops at the first step that fails,
// with that step's error: a Surprise where a check found the cluster not
// ready for the next step. A failed audit also forgets the migrate step
// (and its progress file), so that a resumed run migrates again before it
// audits again.
func (r *Runner) Run(ctx context.Context) error {
	steps := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{StepAdd, r.add},
		{StepPromote, r.promote},
		{StepPlugin, r.plugin},
		{StepPickup, func(ctx context.Context) (string, error) { return r.Pickup(ctx, r.State.NewKey) }},
		{StepMigrate, r.migrate},
		{StepAudit, r.audit},
	}
	for _, s := range steps {
		if err := r.step(ctx, s.name, s.fn); err != nil {
			if s.name == StepAudit {
				r.State.Steps = slices.DeleteFunc(r.State.Steps, func(o StepResult) bool { return o.Name == StepMigrate })
				_ = os.Remove(MigrateStatePath(r.Path))
			}
			_ = r.State.Save(r.Path)
			return err
		}
	}
	r.State.Complete = true
	return r.State.Save(r.Path)
}

// step runs one step unless it is done, records its result and logs it.
func (r *Runner) step(ctx context.Context, name string, fn func(context.Context) (string, error)) error {
	if r.State.Done(name) {
		return nil
	}
	t0 := r.now()
	detail, err := fn(ctx)
	res := StepResult{Name: name, Status: StatusDone, Detail: detail, Seconds: r.now().Sub(t0).Seconds()}
	if err != nil {
		res.Status, res.Detail = StatusFailed, err.Error()
	}
	r.State.Record(res)
	if serr := r.State.Save(r.Path); serr != nil && err == nil {
		err = fmt.Errorf("writing rotation state: %w", serr)
	}
	fmt.Fprintf(r.log(), "rotate: %s: %s (%s)\n", name, res.Status, strings.TrimSpace(res.Detail))
	return err
}

func (r *Runner) add(ctx context.Context) (string, error) {
	st := r.State
	detail := "using existing version " + st.NewKey
	if st.NewKey == "" {
		v, err := r.Keystore.Manager.Add(ctx)
		if err != nil {
			return "", err
		}
		st.NewKey = v.KeyID
		detail = "added " + v.KeyID
	}
	if len(r.Nodes) == 0 {
		return detail, nil
	}
	// Phase 1 of the HA rotation: NEW on every node, or no promote.
	d, err := Distribute(ctx, r.Keystore.Backend, r.Nodes, st.NewKey)
	return detail + d, err
}

func (r *Runner) promote(ctx context.Context) (string, error) {
	keyID := r.State.NewKey
	if len(r.Nodes) > 0 {
		return PromoteEverywhere(ctx, r.Keystore.Manager, r.Nodes, keyID)
	}
	v, ok, err := VersionOn(ctx, r.Keystore.Manager, keyID)
	if err != nil {
		return "", err
	}
	if ok && v.Primary {
		return keyID + " was already primary", nil
	}
	if err := r.Keystore.Manager.Promote(ctx, keyID); err != nil {
		return "", err
	}
	return "promoted " + keyID, nil
}

func (r *Runner) plugin(ctx context.Context) (string, error) {
	poll := r.PluginPoll
	if poll == 0 {
		poll = time.Second
	}
	var details []string
	for _, p := range append([]Plugin{r.Plugin}, r.NodePlugins...) {
		d, err := waitPlugin(ctx, p, r.State.NewKey, r.PluginTimeout, poll, r.now)
		if err != nil {
			return "", err
		}
		details = append(details, d)
	}
	return strings.Join(details, "; "), nil
}

func (r *Runner) migrate(ctx context.Context) (string, error) {
	sum, svms, err := r.Migrate(ctx, MigrateStatePath(r.Path), "kmsctl-rotate-"+stored.Digest([]byte(r.State.NewKey))[:8])
	if err != nil {
		return "", err
	}
	if sum != nil {
		if sum.Failed > 0 {
			return "", surprisef("%d objects failed to migrate (listed in the report)", sum.Failed)
		}
		return fmt.Sprintf("rewritten %d, skipped %d", sum.Rewritten, sum.Skipped), nil
	}
	return fmt.Sprintf("%d StorageVersionMigrations succeeded", len(svms)), nil
}

func (r *Runner) audit(ctx context.Context) (string, error) {
	st := r.State
	a, err := r.Audit(ctx)
	if err != nil {
		return "", err
	}
	if n := a.InUse(st.OldKey); n > 0 {
		return "", surprisef("the audit still counts %d objects under %s (written meanwhile by an apiserver that had not picked up the new key, or missed by the migration); --resume migrates and audits again", n, st.OldKey)
	}
	if r.FailOnPlaintext && a.Plaintext+a.Unrecognized > 0 {
		return "", surprisef("the audit counts %d plaintext objects (--fail-on-plaintext)", a.Plaintext+a.Unrecognized)
	}
	if a.Malformed+a.BadAnnotation > 0 {
		fmt.Fprintf(r.log(), "warning: the audit counts %d malformed values and %d with a bad keywarden annotation: see the report\n", a.Malformed, a.BadAnnotation)
	}
	return fmt.Sprintf("0 objects under %s; %d under %s; %d plaintext", st.OldKey, a.InUse(st.NewKey), st.NewKey, a.Plaintext), nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keywarden/keywarden/internal/buildinfo"
	"github.com/keywarden/keywarden/internal/migrate"
)

// kubeFlags reach kube-apiserver.
type kubeFlags struct {
	kubeconfig string
	context    string
	qps        float32
	burst      int
}

func (k *kubeFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	cmd.Flags().StringVar(&k.context, "context", "", "kubeconfig context (default: the current one)")
	cmd.Flags().Float32Var(&k.qps, "qps", 50, "requests per second to kube-apiserver (negative: unlimited)")
	cmd.Flags().IntVar(&k.burst, "burst", 100, "request burst above --qps")
}

type kube struct {
	cfg  *rest.Config
	dyn  dynamic.Interface
	disc discovery.DiscoveryInterface
}

func (k *kubeFlags) connect() (*kube, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if k.kubeconfig != "" {
		rules.ExplicitPath = k.kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context}).ClientConfig()
	if err != nil {
		return nil, usageError{fmt.Errorf("kubeconfig: %w", err)}
	}
	cfg.QPS, cfg.Burst = k.qps, k.burst
	cfg.UserAgent = "kmsctl/" + buildinfo.Version()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &kube{cfg: cfg, dyn: dyn, disc: disc}, nil
}

// migrateFlags configure a migration; rotate shares them.
type migrateFlags struct {
	kube        kubeFlags
	res         resourceFlags
	via         string
	concurrency int
	pageSize    int64
	stateFile   string
	logInterval time.Duration
	svmTimeout  time.Duration
}

// add registers the flags; rotate (own false) keeps the state file itself.
func (m *migrateFlags) add(cmd *cobra.Command, own bool) {
	m.kube.add(cmd)
	m.res.add(cmd, []string{"secrets"})
	cmd.Flags().StringVar(&m.via, "via", "update", `how to rewrite: "update" (no-op updates from kmsctl) or "svm" (StorageVersionMigration objects, run by kube-controller-manager)`)
	cmd.Flags().IntVar(&m.concurrency, "concurrency", migrate.DefaultConcurrency, "updates in flight at once")
	cmd.Flags().Int64Var(&m.pageSize, "page-size", migrate.DefaultPageSize, "objects per list page")
	if own {
		cmd.Flags().StringVar(&m.stateFile, "state-file", "", "keep progress here (0600) and resume from it when it exists")
	}
	cmd.Flags().DurationVar(&m.logInterval, "log-interval", 10*time.Second, "progress log period when stderr is not a terminal")
	cmd.Flags().DurationVar(&m.svmTimeout, "svm-start-timeout", 2*time.Minute, "with --via=svm: fail if a StorageVersionMigration gets no status this long")
}

// migrateOut is what migrate prints.
type migrateOut struct {
	Via      string              `json:"via"`
	Server   string              `json:"server"`
	Warnings []string            `json:"warnings,omitempty"`
	Summary  *migrate.Summary    `json:"summary,omitempty"`
	SVM      []migrate.SVMResult `json:"storageVersionMigrations,omitempty"`
}

// run migrates; the summary is returned even on error.
func (g *globals) runMigrate(ctx context.Context, m *migrateFlags, svmPrefix string) (*migrateOut, error) {
	if m.via != "update" && m.via != "svm" {
		return nil, usageError{fmt.Errorf("--via must be update or svm, not %q", m.via)}
	}
	if m.concurrency < 1 || m.pageSize < 1 {
		return nil, usageError{errors.New("--concurrency and --page-size must be positive")}
	}
	names, err := m.res.names()
	if err != nil {
		return nil, err
	}
	k, err := m.kube.connect()
	if err != nil {
		return nil, err
	}
	targets, warnings, err := migrate.Resolve(k.disc, names)
	for _, w := range warnings {
		fmt.Fprintln(g.stderr, "warning:", w)
	}
	if err != nil {
		if errors.Is(err, migrate.ErrResource) {
			return nil, usageError{err}
		}
		return nil, err
	}
	out := &migrateOut{Via: m.via, Server: k.cfg.Host, Warnings: warnings}
	log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if m.via == "svm" {
		gvr, err := migrate.SVMVersion(k.disc)
		if err != nil {
			return out, err
		}
		out.SVM, err = migrate.RunSVM(ctx, k.dyn, migrate.SVMOptions{GVR: gvr, Targets: targets, Prefix: svmPrefix, StartTimeout: m.svmTimeout, Log: log})
		return out, err
	}
	p := g.newProgress(m.logInterval)
	defer p.close()
	if g.stderrTTY {
		log = slog.New(slog.DiscardHandler) // the bar says it all
	}
	out.Summary, err = migrate.Run(ctx, migrate.Dynamic(k.dyn), migrate.Options{
		Server: k.cfg.Host, Targets: targets, PageSize: m.pageSize, Concurrency: m.concurrency,
		StateFile: m.stateFile, Progress: p.event, Log: log,
	})
	return out, err
}

func (g *globals) printMigrate(out *migrateOut) error {
	return g.print(out, func(w *tabwriter.Writer) {
		if s := out.Summary; s != nil {
			fmt.Fprintln(w, "RESOURCE\tDONE\tREWRITTEN\tSKIPPED\tFAILED")
			for _, r := range s.Resources {
				fmt.Fprintf(w, "%s\t%v\t%d\t%d\t%d\n", r.Name, r.Done, r.Rewritten, r.Skipped, r.Failed)
			}
			fmt.Fprintf(w, "total\t\t%d\t%d\t%d\n", s.Rewritten, s.Skipped, s.Failed)
			resumed := ""
			if s.Resumed {
				resumed = ", resumed from the state file"
			}
			fmt.Fprintf(w, "\n%s in %s%s\n", out.Server, s.Duration, resumed)
			for _, f := range s.Failures {
				fmt.Fprintf(w, "failed: %s %s/%s: %s\n", f.Resource, f.Namespace, f.Name, f.Error)
			}
		}
		if out.SVM != nil {
			fmt.Fprintln(w, "RESOURCE\tSTORAGEVERSIONMIGRATION\tCONDITION\tMESSAGE")
			for _, r := range out.SVM {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Resource, r.Object, r.Condition, r.Message)
			}
		}
	})
}

func newMigrateCmd(g *globals) *cobra.Command {
	var m migrateFlags
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Rewrite every object of the encrypted resources so they are stored under the current key",
		Long: `migrate makes kube-apiserver store every object of the encrypted resources
again, so that each is encrypted under the current write provider and key.
It lists each resource page by page and sends each object back unchanged (a
no-op update). kube-apiserver skips the write of an object already stored
under its current key and rewrites one that is not; the summary counts them
as skipped and rewritten.

Run it after kube-apiserver has picked up a new key (kmsctl status shows the
new key_id, then about a minute for the apiserver's Status poll), then check
with kmsctl audit.

Bounded concurrency and a client-side QPS limit keep the load on the
apiserver predictable; conflicts are retried with a fresh read. With
--state-file, progress is saved after every page and an interrupted run
resumes there (remove the file to start over). A progress bar is shown when
stderr is a terminal, log lines every --log-interval otherwise.

--via=svm instead creates one StorageVersionMigration per resource
(storagemigration.k8s.io, served by Kubernetes 1.37 by default) and waits for
kube-controller-manager's migrator to finish each.

Exit codes: 0 all rewritten or skipped; 3 some objects failed (listed);
1 the migration stopped.`,
		Example: `  kmsctl migrate --kubeconfig /etc/kubernetes/admin.conf --resources secrets,configmaps --state-file /var/tmp/migrate.json
  kmsctl migrate --encryption-config /etc/kubernetes/encryption/encryption-config.yaml --qps 200 --concurrency 16
  kmsctl migrate --via=svm --resources secrets`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out, err := g.runMigrate(cmd.Context(), &m, "kmsctl-migrate")
			if out != nil && (out.Summary != nil || out.SVM != nil) {
				if perr := g.printMigrate(out); perr != nil && err == nil {
					err = perr
				}
			}
			if err != nil {
				if m.stateFile != "" && out != nil && out.Summary != nil {
					fmt.Fprintf(g.stderr, "kmsctl: migration stopped; run the same command again to resume from %s\n", m.stateFile)
				}
				return err
			}
			if out.Summary != nil && out.Summary.Failed > 0 {
				return problem("%d objects failed to migrate; fix the cause and run again", out.Summary.Failed)
			}
			return nil
		},
	}
	m.add(cmd, true)
	return cmd
}

// progress shows migration progress: a bar per resource on a terminal, a
// log line every interval otherwise.
type progress struct {
	mu       sync.Mutex
	g        *globals
	bar      *progressbar.ProgressBar
	resource string
	last     migrate.Event
	lastLog  time.Time
	interval time.Duration
	start    time.Time
}

func (g *globals) newProgress(interval time.Duration) *progress {
	return &progress{g: g, interval: interval, start: g.now(), lastLog: g.now()}
}

func (p *progress) event(e migrate.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = e
	if !p.g.stderrTTY {
		if now := p.g.now(); now.Sub(p.lastLog) >= p.interval {
			p.lastLog = now
			p.logLine(e)
		}
		return
	}
	if e.Resource != p.resource {
		if p.bar != nil {
			_ = p.bar.Finish()
			fmt.Fprintln(p.g.stderr)
		}
		p.resource = e.Resource
		total := e.Total
		if total <= 0 {
			total = -1
		}
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(p.g.stderr),
			progressbar.OptionSetDescription(e.Resource),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("obj"),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionFullWidth(),
		)
	}
	if e.Total > p.bar.GetMax64() {
		p.bar.ChangeMax64(e.Total)
	}
	p.bar.Describe(fmt.Sprintf("%s (rewritten %d, skipped %d, failed %d)", e.Resource, e.Rewritten, e.Skipped, e.Failed))
	_ = p.bar.Set64(e.Processed)
}

func (p *progress) logLine(e migrate.Event) {
	rate := float64(e.Processed) / max(p.g.now().Sub(p.start).Seconds(), 0.001)
	total := "?"
	if e.Total > 0 {
		total = fmt.Sprint(e.Total)
	}
	fmt.Fprintf(p.g.stderr, "migrate: %s %d/%s objects, rewritten %d, skipped %d, failed %d, %.0f obj/s\n",
		e.Resource, e.Processed, total, e.Rewritten, e.Skipped, e.Failed, rate)
}

func (p *progress) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
		fmt.Fprintln(p.g.stderr)
	}
	if !p.g.stderrTTY && p.last.Resource != "" {
		p.logLine(p.last)
	}
}

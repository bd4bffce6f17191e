package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	coordinationv1 "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/keywarden/keywarden/internal/follow"
)

type followFlags struct {
	sock          socketFlags
	nodeSockets   []string
	mig           migrateFlags
	etcd          etcdFlags
	stateFile     string
	poll          time.Duration
	auditEvery    time.Duration
	pickupWindow  time.Duration
	pickupPoll    time.Duration
	canaryNS      string
	metricsAddr   string
	logFormat     string
	leaderElect   bool
	leaseNS       string
	leaseName     string
	identity      string
	leaseDuration time.Duration
	renewDeadline time.Duration
	retryPeriod   time.Duration
}

func newFollowCmd(g *globals) *cobra.Command {
	var f followFlags
	f.etcd.res = &f.mig.res
	cmd := &cobra.Command{
		Use:   "follow",
		Short: "Run until stopped: when keywarden's key_id changes, wait for pick-up, migrate, audit",
		Long: `follow is kmsctl's follow mode, a long-running process (a Deployment or a
systemd unit on a control-plane node) that makes the data follow the root
key. Every --poll it asks keywarden's Status (--socket, and --node-sockets on
an HA control plane: all must report the same key_id). When the key_id is
not the one of the last rotation it followed to the end (an operator's
kmsctl keys promote, or the keystore's own automatic rotation), it runs the
last three steps of kmsctl rotate for it:

  pickup   a canary Secret written through kube-apiserver and read back from
           etcd until it is stored under the new key_id (--pickup-window)
  migrate  rewrite every encrypted object (see kmsctl migrate)
  audit    count the objects in etcd per resource and key_id: none may be
           left under another key_id, or the next poll migrates again

It never adds, promotes, disables or destroys a key version. Each step is
logged and recorded in --state-file (the rotation record kmsctl rotate
writes), so a restarted replica goes on where the last one stopped. Between
rotations it audits every --audit-interval, to keep the object metrics
fresh; objects found under another key then are migrated again.

With --leader-elect (the default) replicas share the Lease --lease-name in
--lease-namespace (client-go leader election): only the holder acts; the
others stand by and take over within --lease-duration. A replica that loses
the lease exits (status 1), to be restarted by its supervisor.

Metrics on --metrics-addr /metrics (kmsctl_follow_*): objects per resource
and per key_id hash, objects not under the current key_id, the time of the
last successful pickup, migrate and audit, failures per step, whether this
replica leads. Alerts: deploy/monitoring/alerts.yaml.`,
		Example: `  kmsctl follow --socket unix:///run/keywarden/kms.sock --kubeconfig /etc/kubernetes/admin.conf \
    --etcd-endpoints https://127.0.0.1:2379 --cacert /etc/kubernetes/pki/etcd/ca.crt \
    --cert /etc/kubernetes/pki/apiserver-etcd-client.crt --key /etc/kubernetes/pki/apiserver-etcd-client.key \
    --encryption-config /etc/kubernetes/encryption/encryption-config.yaml \
    --state-file /var/lib/kmsctl-follow/follow.json --metrics-addr :8097`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.follow(cmd.Context(), &f)
		},
	}
	fl := cmd.Flags()
	f.sock.add(cmd)
	fl.StringSliceVar(&f.nodeSockets, "node-sockets", nil, "HA: the other nodes' keywarden sockets (unix:///…); all must report the same key_id")
	f.mig.add(cmd, false)
	f.etcd.add(cmd, false)
	_ = cmd.MarkFlagRequired("etcd-endpoints")
	fl.StringVar(&f.stateFile, "state-file", "", "record of the rotation followed last or now (0600), and the migration's progress next to it; empty keeps it in memory")
	fl.DurationVar(&f.poll, "poll", 10*time.Second, "how often keywarden's Status is asked")
	fl.DurationVar(&f.auditEvery, "audit-interval", 10*time.Minute, "how often etcd is audited between rotations")
	fl.DurationVar(&f.pickupWindow, "pickup-window", 3*time.Minute, "how long kube-apiserver may take to start using a new key (it polls Status about once a minute)")
	fl.DurationVar(&f.pickupPoll, "pickup-poll", 3*time.Second, "how often the canary Secret is written and read back")
	fl.StringVar(&f.canaryNS, "canary-namespace", "default", "namespace of the canary Secret kmsctl-rotation-canary (deleted after each pickup)")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "127.0.0.1:8097", "serve /metrics and /healthz here (empty: not at all)")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format on stderr: text or json")
	fl.BoolVar(&f.leaderElect, "leader-elect", true, "act only while holding the Lease --lease-namespace/--lease-name")
	fl.StringVar(&f.leaseNS, "lease-namespace", "kube-system", "namespace of the leader election Lease")
	fl.StringVar(&f.leaseName, "lease-name", "kmsctl-follow", "name of the leader election Lease")
	fl.StringVar(&f.identity, "identity", "", "this replica's name in the Lease (default: hostname and a random suffix)")
	fl.DurationVar(&f.leaseDuration, "lease-duration", 15*time.Second, "how long standby replicas wait before taking over a lease not renewed")
	fl.DurationVar(&f.renewDeadline, "renew-deadline", 10*time.Second, "how long the leader tries to renew before giving up (and exiting)")
	fl.DurationVar(&f.retryPeriod, "retry-period", 2*time.Second, "time between lease attempts")
	return cmd
}

func (g *globals) follow(ctx context.Context, f *followFlags) error {
	var h slog.Handler
	switch f.logFormat {
	case "text":
		h = slog.NewTextHandler(g.stderr, nil)
	case "json":
		h = slog.NewJSONHandler(g.stderr, nil)
	default:
		return usageError{fmt.Errorf("--log-format must be text or json, not %q", f.logFormat)}
	}
	log := slog.New(h)
	if f.mig.via != "update" && f.mig.via != "svm" {
		return usageError{fmt.Errorf("--via must be update or svm, not %q", f.mig.via)}
	}
	names, err := f.mig.res.names()
	if err != nil {
		return err
	}
	k, err := f.mig.kube.connect()
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := follow.NewMetrics(reg)
	if f.metricsAddr != "" {
		ln, err := net.Listen("tcp", f.metricsAddr)
		if err != nil {
			return usageError{fmt.Errorf("--metrics-addr: %w", err)}
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("serving metrics", "addr", ln.Addr().String())
	}

	fo := &follow.Follower{
		Status:     g.followStatus(f),
		StatePath:  f.stateFile,
		Poll:       f.poll,
		AuditEvery: f.auditEvery,
		Metrics:    m,
		Log:        log,
		Now:        g.now,
	}
	fo.Pickup = func(ctx context.Context, keyID string) (string, error) {
		return g.waitPickup(ctx, k, &f.etcd, canaryOpts{f.canaryNS, f.pickupWindow, f.pickupPoll}, keyID)
	}
	fo.Migrate = func(ctx context.Context, stateFile, svmPrefix string) (string, error) {
		mf := f.mig
		mf.stateFile = stateFile
		mo, err := g.runMigrate(ctx, &mf, svmPrefix)
		if err != nil {
			return "", err
		}
		if s := mo.Summary; s != nil {
			if s.Failed > 0 {
				return "", fmt.Errorf("%d objects failed to migrate (first: %s %s/%s: %s)", s.Failed, s.Failures[0].Resource, s.Failures[0].Namespace, s.Failures[0].Name, s.Failures[0].Error)
			}
			return fmt.Sprintf("rewritten %d, skipped %d", s.Rewritten, s.Skipped), nil
		}
		return fmt.Sprintf("%d StorageVersionMigrations succeeded", len(mo.SVM)), nil
	}
	fo.Audit = func(ctx context.Context) (follow.Counts, error) {
		// One scan per resource, so that the counts are per resource.
		out := follow.Counts{}
		for _, n := range names {
			a, err := f.etcd.runScopes(ctx, nil, []string{n})
			if err != nil {
				return nil, err
			}
			out[n] = a.KeyIDs
		}
		return out, nil
	}

	if !f.leaderElect {
		m.SetLeader(true)
		return fo.Run(ctx)
	}
	id := f.identity
	if id == "" {
		host, _ := os.Hostname()
		id = host + "_" + rand.String(8)
	}
	coord, err := coordinationv1.NewForConfig(k.cfg)
	if err != nil {
		return err
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: f.leaseNS, Name: f.leaseName},
		Client:     coord,
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	runErr := make(chan error, 1)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, Name: f.leaseName, ReleaseOnCancel: true,
		LeaseDuration: f.leaseDuration, RenewDeadline: f.renewDeadline, RetryPeriod: f.retryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				m.SetLeader(true)
				log.Info("follow: leading", "identity", id, "lease", f.leaseNS+"/"+f.leaseName)
				runErr <- fo.Run(ctx)
			},
			OnStoppedLeading: func() {
				m.SetLeader(false)
				log.Info("follow: not leading", "identity", id)
			},
			OnNewLeader: func(leader string) {
				if leader != id {
					log.Info("follow: standing by", "identity", id, "leader", leader)
				}
			},
		},
	})
	if err != nil {
		return usageError{err}
	}
	log.Info("follow: waiting for the lease", "identity", id, "lease", f.leaseNS+"/"+f.leaseName)
	le.Run(ctx)
	if ctx.Err() != nil {
		return nil // stopped by a signal; the lease is released
	}
	select {
	case err := <-runErr:
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	default:
	}
	return errors.New("follow: lost the lease " + strings.Join([]string{f.leaseNS, f.leaseName}, "/") + ": exiting so that a standby takes over")
}

// followStatus asks every keywarden's Status: all must be healthy and report
// the same key_id.
func (g *globals) followStatus(f *followFlags) func(context.Context) (string, error) {
	socks := append([]string{f.sock.socket}, f.nodeSockets...)
	return func(ctx context.Context) (string, error) {
		var keys []string
		for _, s := range socks {
			sf := &socketFlags{socket: s, timeout: f.sock.timeout}
			r, err := sf.status(ctx)
			if err != nil {
				return "", fmt.Errorf("%s: %w", s, err)
			}
			if r.Healthz != "ok" {
				return "", fmt.Errorf("%s: keywarden is not healthy (%s)", s, r.Healthz)
			}
			keys = append(keys, r.KeyId)
		}
		for i, k := range keys[1:] {
			if k != keys[0] {
				return "", fmt.Errorf("%w: %s on %s, %s on %s (a promote under way?)", follow.ErrNodesDisagree, keys[0], socks[0], k, socks[i+1])
			}
		}
		return keys[0], nil
	}
}

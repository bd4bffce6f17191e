package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EtcdOptions configures StartEtcd.
type EtcdOptions struct {
	// Members is the cluster size: 1 (default) or 3.
	Members int
	// Fsync keeps etcd's fsync on. Off by default: the tests are about
	// encryption, not durability, and fsync on a shared disk is slow.
	Fsync bool
}

// Etcd is a running etcd cluster on loopback.
type Etcd struct {
	// Endpoints are the client URLs, one per member.
	Endpoints []string
	tools     Tools
	members   []*proc
}

// StartEtcd starts an etcd cluster of opts.Members members on free loopback
// ports, each with a temporary data directory, waits until every member
// reports healthy, and stops them all at cleanup.
func StartEtcd(t testing.TB, tools Tools, opts EtcdOptions) *Etcd {
	t.Helper()
	n := opts.Members
	if n == 0 {
		n = 1
	}
	dir := workDir(t, "etcd")
	type member struct {
		name             string
		client, peer     string
		dataDir, logPath string
	}
	ms := make([]member, n)
	var initial []string
	for i := range ms {
		ms[i] = member{
			name:    fmt.Sprintf("m%d", i),
			client:  "http://" + hostPort(mustPort(t)),
			peer:    "http://" + hostPort(mustPort(t)),
			dataDir: filepath.Join(dir, fmt.Sprintf("m%d", i)),
			logPath: filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
		}
		initial = append(initial, ms[i].name+"="+ms[i].peer)
	}
	e := &Etcd{tools: tools}
	t.Cleanup(func() {
		for _, p := range e.members {
			p.stop(10 * time.Second)
		}
	})
	for _, m := range ms {
		logOnFailure(t, "etcd "+m.name, m.logPath)
		p, err := startProc("etcd "+m.name, m.logPath, tools.Etcd,
			"--name", m.name,
			"--data-dir", m.dataDir,
			"--listen-client-urls", m.client,
			"--advertise-client-urls", m.client,
			"--listen-peer-urls", m.peer,
			"--initial-advertise-peer-urls", m.peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(dir),
			fmt.Sprintf("--unsafe-no-fsync=%t", !opts.Fsync),
			"--log-level", "warn",
		)
		if err != nil {
			t.Fatal(err)
		}
		e.members = append(e.members, p)
		e.Endpoints = append(e.Endpoints, m.client)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, ep := range e.Endpoints {
		if err := waitFor(ctx, e.members[i], func() error { return etcdHealthy(ctx, ep) }); err != nil {
			t.Fatalf("etcd %s at %s not healthy: %v", ms[i].name, ep, err)
		}
	}
	t.Logf("etcd: %d member(s) at %s", n, strings.Join(e.Endpoints, ","))
	return e
}

func etcdHealthy(ctx context.Context, ep string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct{ Health string }
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || h.Health != "true" {
		return fmt.Errorf("health %q (HTTP %d)", h.Health, resp.StatusCode)
	}
	return nil
}

// KV is one etcd key and its raw value.
type KV struct {
	Key   string
	Value []byte
}

// Etcdctl runs etcdctl against the cluster and returns its stdout.
func (e *Etcd) Etcdctl(ctx context.Context, args ...string) ([]byte, error) {
	args = append([]string{"--endpoints", strings.Join(e.Endpoints, ","), "--command-timeout", "30s"}, args...)
	cmd := exec.CommandContext(ctx, e.tools.Etcdctl, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("etcdctl %s: %w: %s", strings.Join(args[4:], " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// List returns every key under prefix with its raw value, read with
// `etcdctl get --prefix -w json` (values arrive base64-encoded, so binary
// data survives).
func (e *Etcd) List(ctx context.Context, prefix string) ([]KV, error) {
	return e.get(ctx, prefix, "--prefix")
}

// Get returns the raw value of key, or found=false.
func (e *Etcd) Get(ctx context.Context, key string) (value []byte, found bool, err error) {
	kvs, err := e.get(ctx, key)
	if err != nil || len(kvs) == 0 {
		return nil, false, err
	}
	return kvs[0].Value, true, nil
}

func (e *Etcd) get(ctx context.Context, key string, flags ...string) ([]KV, error) {
	out, err := e.Etcdctl(ctx, append([]string{"get", key, "-w", "json"}, flags...)...)
	if err != nil {
		return nil, err
	}
	var r struct {
		Kvs []struct {
			Key   []byte `json:"key"`
			Value []byte `json:"value"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("etcdctl get %s: %w", key, err)
	}
	kvs := make([]KV, len(r.Kvs))
	for i, kv := range r.Kvs {
		kvs[i] = KV{Key: string(kv.Key), Value: kv.Value}
	}
	return kvs, nil
}

// waitFor polls check every 100 ms until it succeeds, p exits, or ctx ends.
func waitFor(ctx context.Context, p *proc, check func() error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (%v); last check: %w", p.name, p.err, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last check: %w", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

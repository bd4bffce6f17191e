package snapshot

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

// A snapshot taken from a real etcd answers range reads as that etcd did.
func TestSnapshotMatchesEtcd(t *testing.T) {
	_, cli := etcdtest.Start(t)
	ctx := context.Background()
	for i := range 7 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/registry/secrets/ns/s%d", i), fmt.Sprintf("v%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	ops := []func() error{
		func() error { _, err := cli.Put(ctx, "/registry/secrets/ns/s1", "v1-new"); return err },
		func() error { _, err := cli.Delete(ctx, "/registry/secrets/ns/s2"); return err },
		func() error { _, err := cli.Put(ctx, "/registry/configmaps/ns/c", "c"); return err },
		func() error { _, err := cli.Put(ctx, "/registry/secrets/ns/s2", "back"); return err },
		func() error { _, err := cli.Delete(ctx, "/registry/secrets/ns/s3"); return err },
	}
	for _, op := range ops {
		if err := op(); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "snap.db")
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	live, err := cli.Get(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	if s.Revision() != live.Header.Revision {
		t.Fatalf("revision %d, etcd %d", s.Revision(), live.Header.Revision)
	}
	prefix := "/registry/secrets/"
	for _, tt := range []struct {
		name string
		key  string
		opts []clientv3.OpOption
	}{
		{"one key", "/registry/secrets/ns/s1", nil},
		{"deleted key", "/registry/secrets/ns/s3", nil},
		{"prefix", prefix, []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix))}},
		{"prefix, paged", prefix, []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(2)}},
		{"from key", "/registry/secrets/ns/s4\x00", []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(2)}},
		{"everything", "\x00", []clientv3.OpOption{clientv3.WithFromKey()}},
		{"at the revision", prefix, []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithRev(s.Revision())}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			want, err := cli.Get(ctx, tt.key, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(ctx, tt.key, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if got.More != want.More || len(got.Kvs) != len(want.Kvs) {
				t.Fatalf("%d kvs (more %v), etcd %d (more %v)", len(got.Kvs), got.More, len(want.Kvs), want.More)
			}
			for i := range want.Kvs {
				if string(got.Kvs[i].Key) != string(want.Kvs[i].Key) || string(got.Kvs[i].Value) != string(want.Kvs[i].Value) {
					t.Fatalf("kv %d: %q=%q, etcd %q=%q", i, got.Kvs[i].Key, got.Kvs[i].Value, want.Kvs[i].Key, want.Kvs[i].Value)
				}
			}
		})
	}
	if _, err := s.Get(ctx, prefix, clientv3.WithRev(s.Revision()-1)); err == nil {
		t.Fatal("an older revision answered")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing file opened")
	}
	junk := filepath.Join(t.TempDir(), "junk")
	if err := os.WriteFile(junk, make([]byte, 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(junk); err == nil {
		t.Fatal("junk opened")
	}
}

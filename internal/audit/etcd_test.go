package audit

import (
	"context"
	"errors"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

// TestRealEtcd runs the audit against a real etcd 3.7 holding the golden
// values, and checks that a compacted snapshot surfaces as ErrCompacted.
func TestRealEtcd(t *testing.T) {
	_, c := etcdtest.Start(t)
	ctx := context.Background()
	for k, v := range etcdtest.GoldenValues(t) {
		if _, err := c.Put(ctx, k, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	scopes, _ := Scopes("/registry", []string{"secrets", "configmaps"})
	r, err := Run(ctx, c, Options{Scopes: scopes, PageSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Objects != 14 || r.KeyIDs[key1] != 4 || r.KeyIDs[key2] != 2 || r.Plaintext != 2 || r.OtherProviders != 6 || !r.Consistent {
		t.Fatalf("%+v", r)
	}
	old := r.Revision
	put, err := c.Put(ctx, "/registry/secrets/x/new", "k8s\x00")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, put.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "/registry/secrets/", clientv3.WithPrefix(), clientv3.WithRev(old)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("Get at a compacted revision: %v, want ErrCompacted", err)
	}
}

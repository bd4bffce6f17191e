package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

const (
	key1 = "tink:3473997605:81291f5360ee4023"
	key2 = "tink:1387148517:e270a5f50269b3e4"
)

// fakeEtcd serves range requests from a map, in key order, at one revision;
// compactAt makes the request number compactAt fail with ErrCompacted.
type fakeEtcd struct {
	kvs       map[string][]byte
	rev       int64
	calls     int
	compactAt int
	revs      []int64
}

func (f *fakeEtcd) Get(_ context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	f.calls++
	op := clientv3.OpGet(key, opts...)
	f.revs = append(f.revs, op.Rev())
	if f.calls == f.compactAt {
		return nil, rpctypes.ErrCompacted
	}
	if op.Rev() != 0 && op.Rev() != f.rev {
		return nil, errors.New("fake: unexpected revision")
	}
	var keys []string
	for k := range f.kvs {
		if k >= key && (len(op.RangeBytes()) == 0 || k < string(op.RangeBytes())) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	resp := &clientv3.GetResponse{Header: &pb.ResponseHeader{Revision: f.rev}}
	if l := int(op.Limit()); l > 0 && len(keys) > l {
		keys, resp.More = keys[:l], true
	}
	for _, k := range keys {
		resp.Kvs = append(resp.Kvs, &mvccpb.KeyValue{Key: []byte(k), Value: f.kvs[k]})
	}
	return resp, nil
}

func TestRunGolden(t *testing.T) {
	kvs := etcdtest.GoldenValues(t)
	kvs["/registry/secretsx/not-a-secret"] = []byte("k8s\x00")   // outside the prefix
	kvs["/registry/pods/default/p"] = []byte("k8s\x00plain pod") // not in scope
	kvs["/registry/secrets/default/broken"] = []byte("k8s:enc:kms:v2:keywarden:\xff")
	kvs["/registry/secrets/kube-system/junk"] = []byte("\x01junk")
	scopes, err := Scopes("/registry", []string{"secrets", "configmaps"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEtcd{kvs: kvs, rev: 42}
	var progress []int
	r, err := Run(context.Background(), f, Options{Scopes: scopes, PageSize: 3, Progress: func(n int) { progress = append(progress, n) }})
	if err != nil {
		t.Fatal(err)
	}
	if r.Revision != 42 || !r.Consistent {
		t.Fatalf("revision %d consistent %v", r.Revision, r.Consistent)
	}
	if r.Objects != 16 {
		t.Fatalf("objects %d, want 16 (14 golden + 2 hostile)", r.Objects)
	}
	want := map[string]int{
		"kms:v2:keywarden": 6, "aescbc:v1:cbc1": 2, "aesgcm:v1:gcm1": 2, "secretbox:v1:box1": 2,
		"identity": 2, "malformed": 1, "unrecognized": 1,
	}
	if !mapsEqual(r.Providers, want) {
		t.Fatalf("providers %v, want %v", r.Providers, want)
	}
	if !mapsEqual(r.KeyIDs, map[string]int{key1: 4, key2: 2}) {
		t.Fatalf("keyIDs %v", r.KeyIDs)
	}
	if r.InUse(key1) != 4 || r.InUse(key2) != 2 || r.InUse("nope") != 0 {
		t.Fatal("InUse")
	}
	if len(r.LocalKEKs) != 2 || r.LocalKEKs[0].Objects+r.LocalKEKs[1].Objects != 6 {
		t.Fatalf("local KEKs %+v", r.LocalKEKs)
	}
	for _, k := range r.LocalKEKs {
		if want := map[string]int{key1: 4, key2: 2}[k.RootKeyID]; k.Objects != want {
			t.Fatalf("local KEK %+v, want %d objects", k, want)
		}
	}
	if r.Plaintext != 2 || r.OtherProviders != 6 || r.Malformed != 1 || r.Unrecognized != 1 || r.BadAnnotation != 0 {
		t.Fatalf("counts %+v", r)
	}
	if !slices.Contains(r.Samples["malformed"], "/registry/secrets/default/broken") {
		t.Fatalf("samples %v", r.Samples)
	}
	if len(r.Resources) != 2 || r.Resources[0].Objects != 10 || r.Resources[1].Objects != 6 {
		t.Fatalf("resources %+v", r.Resources)
	}
	// Pages of 3: the first request sets the revision, every later one pins it.
	if f.revs[0] != 0 || slices.ContainsFunc(f.revs[1:], func(r int64) bool { return r != 42 }) {
		t.Fatalf("revisions requested: %v", f.revs)
	}
	if len(progress) == 0 || progress[len(progress)-1] != 16 {
		t.Fatalf("progress %v", progress)
	}
	// Nothing of any value reaches the report.
	out, _ := json.Marshal(r)
	for k, v := range kvs {
		if strings.HasPrefix(string(v), "k8s:enc:") && len(v) > 60 && bytes.Contains(out, v[len(v)-10:]) {
			t.Fatalf("report holds bytes of the value of %s", k)
		}
	}
}

func TestRunCompaction(t *testing.T) {
	scopes, _ := Scopes("/registry", []string{"secrets"})
	f := &fakeEtcd{kvs: etcdtest.GoldenValues(t), rev: 7, compactAt: 2}
	r, err := Run(context.Background(), f, Options{Scopes: scopes, PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if r.Consistent || r.Objects != 8 {
		t.Fatalf("consistent %v objects %d; want false, 8", r.Consistent, r.Objects)
	}
}

func TestRunBadAnnotation(t *testing.T) {
	kvs := etcdtest.GoldenValues(t)
	// Swap the annotations of a key1 object into a key2 object: the key_id
	// and the annotation's root version disagree.
	g1 := kvs["/registry/secrets/default/g1"]
	g4 := kvs["/registry/secrets/default/g4"]
	i := bytes.Index(g4, []byte(key2))
	j := bytes.Index(g1, []byte(key1))
	if i < 0 || j < 0 {
		t.Fatal("golden values lack their key_ids")
	}
	mixed := bytes.Clone(g4)
	copy(mixed[i:], key1) // key_id now key1, annotation still key2
	f := &fakeEtcd{kvs: map[string][]byte{"/registry/secrets/x/y": mixed}, rev: 1}
	scopes, _ := Scopes("/registry", []string{"secrets"})
	r, err := Run(context.Background(), f, Options{Scopes: scopes})
	if err != nil {
		t.Fatal(err)
	}
	if r.BadAnnotation != 1 || len(r.LocalKEKs) != 0 || r.KeyIDs[key1] != 1 {
		t.Fatalf("%+v", r)
	}
}

func TestRunError(t *testing.T) {
	scopes, _ := Scopes("/registry", []string{"secrets"})
	_, err := Run(context.Background(), errGetter{}, Options{Scopes: scopes})
	if !errors.Is(err, errBoom) {
		t.Fatalf("err = %v", err)
	}
}

var errBoom = errors.New("boom")

type errGetter struct{}

func (errGetter) Get(context.Context, string, ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return nil, errBoom
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestScopes(t *testing.T) {
	tests := []struct {
		name    string
		prefix  string
		in      []string
		want    []string
		wantErr bool
	}{
		{"core", "/registry", []string{"secrets", "configmaps."}, []string{"/registry/secrets/", "/registry/configmaps/"}, false},
		{"special", "/registry/", []string{"services", "nodes", "endpoints", "replicationcontrollers", "ingresses.networking.k8s.io"},
			[]string{"/registry/services/specs/", "/registry/minions/", "/registry/services/endpoints/", "/registry/controllers/", "/registry/ingress/"}, false},
		{"built-in groups", "/registry", []string{"deployments.apps", "leases.coordination.k8s.io"}, []string{"/registry/deployments/", "/registry/leases/"}, false},
		{"group-prefixed", "/registry", []string{"widgets.example.com", "customresourcedefinitions.apiextensions.k8s.io"},
			[]string{"/registry/example.com/widgets/", "/registry/apiextensions.k8s.io/customresourcedefinitions/"}, false},
		{"custom etcd prefix", "/kube", []string{"Secrets"}, []string{"/kube/secrets/"}, false},
		{"raw prefix", "/registry", []string{"/registry/secrets/kube-system"}, []string{"/registry/secrets/kube-system/"}, false},
		{"duplicates", "/registry", []string{"secrets", "secrets", " secrets "}, []string{"/registry/secrets/"}, false},
		{"everything", "/registry", []string{"secrets", "*.*"}, []string{"/registry/"}, false},
		{"group wildcard", "/registry", []string{"*.apps"}, nil, true},
		{"junk", "/registry", []string{"sec/rets"}, nil, true},
		{"empty", "/registry", []string{""}, nil, true},
		{"relative prefix", "registry", []string{"secrets"}, nil, true},
		{"root raw prefix", "/registry", []string{"/"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Scopes(tt.prefix, tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrScope) {
					t.Fatalf("err = %v, want ErrScope", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var prefixes []string
			for _, s := range got {
				prefixes = append(prefixes, s.Prefix)
			}
			if !slices.Equal(prefixes, tt.want) {
				t.Fatalf("prefixes %q, want %q", prefixes, tt.want)
			}
		})
	}
}

// TestRunKMSValue: values etcdtest.KMSValue makes for a key_id of any
// length count under that key_id, with a coherent keywarden annotation.
func TestRunKMSValue(t *testing.T) {
	ids := []string{"tink:1:0123456789abcdef", key1, "tink:4294967295:fedcba9876543210"}
	kvs := map[string][]byte{}
	for i, id := range ids {
		kvs[fmt.Sprintf("/registry/configmaps/default/c%d", i)] = etcdtest.KMSValue(t, id)
	}
	scopes, _ := Scopes("/registry", []string{"*.*"})
	r, err := Run(context.Background(), &fakeEtcd{kvs: kvs, rev: 1}, Options{Scopes: scopes})
	if err != nil {
		t.Fatal(err)
	}
	if r.Malformed != 0 || r.BadAnnotation != 0 || len(r.LocalKEKs) != len(ids) {
		t.Fatalf("%+v", r)
	}
	for _, id := range ids {
		if r.InUse(id) != 1 {
			t.Fatalf("InUse(%s) = %d, want 1: %v", id, r.InUse(id), r.KeyIDs)
		}
	}
}

// An object whose local KEK is wrapped under several roots is in use for
// the version of each root that holds a copy, and for none other.
func TestRunKMSValueRoots(t *testing.T) {
	const other = "tink:4294967295:fedcba9876543210"
	kvs := map[string][]byte{
		"/registry/secrets/default/two":   etcdtest.KMSValueRoots(t, key1, key2),
		"/registry/secrets/default/two-b": etcdtest.KMSValueRoots(t, key1, key2),
		"/registry/secrets/default/one":   etcdtest.KMSValue(t, key1),
	}
	scopes, _ := Scopes("/registry", []string{"*.*"})
	r, err := Run(context.Background(), &fakeEtcd{kvs: kvs, rev: 1}, Options{Scopes: scopes})
	if err != nil {
		t.Fatal(err)
	}
	if r.Malformed != 0 || r.BadAnnotation != 0 || len(r.LocalKEKs) != 2 {
		t.Fatalf("%+v", r)
	}
	for id, want := range map[string]int{key1: 3, key2: 2, other: 0} {
		if got := r.InUse(id); got != want {
			t.Fatalf("InUse(%s) = %d, want %d (%+v)", id, got, want, r.LocalKEKs)
		}
	}
	// The report round-trips through JSON (kmsctl --audit-report).
	b, _ := json.Marshal(r)
	var again Report
	if err := json.Unmarshal(b, &again); err != nil || again.InUse(key2) != 2 {
		t.Fatalf("report through JSON: InUse %d, %v", again.InUse(key2), err)
	}
}

// A KMS v2 value another plugin wrote (no kek.keywarden.io annotation) is
// counted as OtherKMSv2, under its own provider label and key_id, and is
// not taken for a keywarden value.
func TestRunForeignKMSValue(t *testing.T) {
	kvs := map[string][]byte{
		"/registry/secrets/default/theirs": etcdtest.ForeignKMSValue(t, "other-plugin", "their-key-1"),
		"/registry/secrets/default/ours":   etcdtest.KMSValue(t, key1),
	}
	scopes, _ := Scopes("/registry", []string{"secrets"})
	r, err := Run(context.Background(), &fakeEtcd{kvs: kvs, rev: 1}, Options{Scopes: scopes})
	if err != nil {
		t.Fatal(err)
	}
	if r.OtherKMSv2 != 1 || r.OtherProviders != 0 || r.Malformed != 0 || r.BadAnnotation != 0 || len(r.LocalKEKs) != 1 {
		t.Fatalf("%+v", r)
	}
	if r.Providers["kms:v2:other-plugin"] != 1 || r.Providers["kms:v2:keywarden"] != 1 || r.KeyIDs["their-key-1"] != 1 {
		t.Fatalf("providers %v, key_ids %v", r.Providers, r.KeyIDs)
	}
}

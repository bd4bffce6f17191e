// Package snapshot reads an etcd snapshot file (`etcdctl snapshot save`,
// or a member's member/snap/db) without an etcd: the bbolt database etcd
// keeps, read as etcd's mvcc store lays it out, so kmsctl recover can run
// on an offline machine with only the file.
//
// Layout (go.etcd.io/etcd/server/v3/storage/mvcc): bucket "key" maps a
// revision, 8-byte big-endian main ‖ '_' ‖ 8-byte big-endian sub, with a
// trailing 't' when it deletes the key (a tombstone), to an
// mvccpb.KeyValue. Iterating it in order and keeping each key's last
// revision gives the store at the newest revision in the file.
package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

const (
	revBytesLen       = 8 + 1 + 8
	markedRevBytesLen = revBytesLen + 1
	markTombstone     = 't'
)

var keyBucket = []byte("key")

// Snapshot is the store at the newest revision of a snapshot file, in
// memory: one etcd's worth of live keys (etcd's own quota is 2 GiB by
// default, 8 GiB at most).
type Snapshot struct {
	rev  int64
	keys []string // sorted
	kvs  map[string]*mvccpb.KeyValue
}

// Open reads the snapshot file at path, read-only.
func Open(path string) (*Snapshot, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: time.Second}) // a live member holds its db locked
	if err != nil {
		return nil, fmt.Errorf("open etcd snapshot %s: %w", path, err)
	}
	defer db.Close()
	s := &Snapshot{kvs: map[string]*mvccpb.KeyValue{}}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(keyBucket)
		if b == nil {
			return errors.New("no \"key\" bucket: not an etcd v3 database")
		}
		return b.ForEach(func(k, v []byte) error {
			valid := len(k) == revBytesLen || len(k) == markedRevBytesLen && k[revBytesLen] == markTombstone
			if !valid || k[8] != '_' {
				return fmt.Errorf("malformed revision key of %d bytes", len(k))
			}
			main := int64(binary.BigEndian.Uint64(k[:8])) //nolint:gosec // etcd revisions are positive int64
			s.rev = max(s.rev, main)
			var kv mvccpb.KeyValue
			if err := proto.Unmarshal(v, &kv); err != nil {
				return fmt.Errorf("malformed value at revision %d: %w", main, err)
			}
			if len(k) == markedRevBytesLen {
				delete(s.kvs, string(kv.Key))
				return nil
			}
			s.kvs[string(kv.Key)] = &kv
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read etcd snapshot %s: %w", path, err)
	}
	s.keys = make([]string, 0, len(s.kvs))
	for k := range s.kvs {
		s.keys = append(s.keys, k)
	}
	sort.Strings(s.keys)
	return s, nil
}

// Revision is the newest revision in the file.
func (s *Snapshot) Revision() int64 { return s.rev }

// Get answers a range read as etcd would at Revision: key (or the range
// [key, WithRange end) ), WithLimit, WithRev of Revision or 0. It is the
// one call internal/audit and internal/offline make.
func (s *Snapshot) Get(_ context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	op := clientv3.OpGet(key, opts...)
	if r := op.Rev(); r != 0 && r != s.rev {
		return nil, fmt.Errorf("snapshot holds revision %d only, not %d", s.rev, r)
	}
	end := op.RangeBytes()
	resp := &clientv3.GetResponse{Header: &pb.ResponseHeader{Revision: s.rev}}
	i := sort.SearchStrings(s.keys, key)
	for ; i < len(s.keys); i++ {
		k := s.keys[i]
		switch {
		case len(end) == 0 && k != key:
			return resp, nil
		case len(end) > 0 && (len(end) != 1 || end[0] != 0) && bytes.Compare([]byte(k), end) >= 0:
			return resp, nil
		}
		if l := op.Limit(); l > 0 && int64(len(resp.Kvs)) == l {
			resp.More = true
			return resp, nil
		}
		resp.Kvs = append(resp.Kvs, s.kvs[k])
		resp.Count++
	}
	return resp, nil
}

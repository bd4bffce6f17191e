// Package audit reads the values kube-apiserver stored in etcd and counts
// them by provider, by KMS v2 key_id, and by keywarden local KEK, so that an
// operator can prove no object still needs a root key version before
// retiring it. It reads keys and values but reports only counts, key_ids,
// digests, and (for problems) a few etcd keys: never a value.
package audit

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/recovery"
)

// Getter is the one etcd call audit makes (clientv3.KV narrowed), so that
// tests can stand in for etcd.
type Getter interface {
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
}

// DefaultPageSize is how many keys one etcd range request returns.
const DefaultPageSize = 500

// maxSamples bounds the etcd keys kept per problem class.
const maxSamples = 10

// Options configures Run.
type Options struct {
	Scopes   []Scope
	PageSize int64
	// Progress, if set, is called after each page with the objects read so far.
	Progress func(objects int)
}

// Report is what an audit found. Maps are keyed by public names only.
type Report struct {
	// Revision is the etcd revision every page was read at.
	Revision int64 `json:"revision"`
	// Consistent is false if etcd compacted that revision mid-scan and the
	// rest was read at a later one (run again for a single snapshot).
	Consistent bool `json:"consistent"`
	// Objects is the number of values read.
	Objects   int              `json:"objects"`
	Resources []ResourceReport `json:"resources"`
	// Providers counts values by provider label ("kms:v2:keywarden",
	// "aescbc:v1:key1", "identity", "malformed", ...).
	Providers map[string]int `json:"providers"`
	// KeyIDs counts KMS v2 values by the key_id stored in them.
	KeyIDs map[string]int `json:"keyIDs"`
	// LocalKEKs counts KMS v2 values that keywarden wrote by local KEK.
	LocalKEKs []KEKReport `json:"localKEKs"`
	// Plaintext counts values stored by the identity provider.
	Plaintext int `json:"plaintext"`
	// OtherProviders counts values under aescbc, aesgcm, secretbox, KMS v1,
	// or a provider this version does not know.
	OtherProviders int `json:"otherProviders"`
	// OtherKMSv2 counts KMS v2 values that another plugin wrote: they
	// lack keywarden's kek.keywarden.io annotation, which every value
	// keywarden writes carries and keywarden needs to decrypt.
	OtherKMSv2 int `json:"otherKMSv2"`
	// Unrecognized counts values that are neither encrypted nor known
	// plaintext encodings.
	Unrecognized int `json:"unrecognized"`
	// Malformed counts encrypted values whose envelope does not decode:
	// kube-apiserver cannot read them either.
	Malformed int `json:"malformed"`
	// BadAnnotation counts keywarden objects whose KEK annotation does not
	// decode or names another root version than the key_id: keywarden
	// refuses to decrypt them.
	BadAnnotation int `json:"badAnnotation"`
	// Samples holds up to a few etcd keys (never values) per problem:
	// "plaintext", "unrecognized", "malformed", "badAnnotation".
	Samples map[string][]string `json:"samples,omitempty"`
}

// ResourceReport counts one scope.
type ResourceReport struct {
	Scope
	Objects   int `json:"objects"`
	KMSv2     int `json:"kmsV2"`
	Plaintext int `json:"plaintext"`
	Other     int `json:"other"`
}

// KEKReport counts the objects sealed under one keywarden local KEK.
type KEKReport struct {
	// ID is a digest of the wrapped local KEK (see stored.Digest).
	ID string `json:"id"`
	// RootKeyID is the root key version that wraps it; for a KEK wrapped
	// under several roots, the key_id naming them all.
	RootKeyID string `json:"rootKeyID"`
	// Roots are the root key versions of each copy, for a KEK wrapped
	// under several roots.
	Roots   []string `json:"roots,omitempty"`
	Objects int      `json:"objects"`
}

// InUse counts the objects that need root key version keyID to be read:
// those whose key_id names that version (keystore.SameVersion: a Vault
// key_id written before key_ids named the key counts for the tagged one).
// (keywarden's local KEK annotation must name the same version, or the
// object counts as BadAnnotation and is unreadable whatever happens to
// keyID.) It also counts the objects whose local KEK, wrapped under
// several roots, has a copy under keyID. They may still be read through
// another root, but retiring every root's version one at a time would lose
// them: they count, so that retiring a version waits for kmsctl migrate as
// with one root. (Their own key_id, "roots:...", never names a single
// version, so nothing counts twice.)
func (r *Report) InUse(keyID string) int {
	n := 0
	for k, c := range r.KeyIDs {
		if keystore.SameVersion(k, keyID) {
			n += c
		}
	}
	for _, k := range r.LocalKEKs {
		if len(k.Roots) > 1 && slices.ContainsFunc(k.Roots, func(id string) bool { return keystore.SameVersion(id, keyID) }) {
			n += k.Objects
		}
	}
	return n
}

// SoleUse counts the objects that only root key version keyID can read:
// those keywarden could no longer read if keyID's keystore were dropped
// from --keystore. They are the objects whose key_id names that version
// (keystore.SameVersion), sealed under a local KEK wrapped under that one
// root, plus those whose local KEK, wrapped under several roots, has no
// copy under a root other than keyID. A copy sealed to the recovery key
// does not count as another root: keywarden cannot unwrap it, only
// `kmsctl recover` offline can. An object counted by SoleUse is counted by
// InUse too; InUse also counts the objects that another root can read.
func (r *Report) SoleUse(keyID string) int {
	n := 0
	for k, c := range r.KeyIDs {
		if keystore.SameVersion(k, keyID) {
			n += c
		}
	}
	for _, k := range r.LocalKEKs {
		if len(k.Roots) < 2 {
			continue
		}
		hasIt := slices.ContainsFunc(k.Roots, func(id string) bool { return keystore.SameVersion(id, keyID) })
		other := slices.ContainsFunc(k.Roots, func(id string) bool {
			return !keystore.SameVersion(id, keyID) && !recovery.IsKeyID(id)
		})
		if hasIt && !other {
			n += k.Objects
		}
	}
	return n
}

// Run reads every key under the scopes, page by page, at one etcd revision.
func Run(ctx context.Context, etcd Getter, opts Options) (*Report, error) {
	if len(opts.Scopes) == 0 {
		return nil, errors.New("audit: no scopes")
	}
	page := opts.PageSize
	if page <= 0 {
		page = DefaultPageSize
	}
	r := &Report{
		Consistent: true,
		Providers:  map[string]int{},
		KeyIDs:     map[string]int{},
		Samples:    map[string][]string{},
	}
	keks := map[string]*KEKReport{}
	for _, sc := range opts.Scopes {
		rr := ResourceReport{Scope: sc}
		end := clientv3.GetPrefixRangeEnd(sc.Prefix)
		key := sc.Prefix
		for {
			o := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
			if r.Revision > 0 {
				o = append(o, clientv3.WithRev(r.Revision))
			}
			resp, err := etcd.Get(ctx, key, o...)
			if errors.Is(err, rpctypes.ErrCompacted) {
				// The snapshot is gone; go on from here at the newest revision.
				r.Revision, r.Consistent = 0, false
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("reading etcd under %s: %w", sc.Prefix, err)
			}
			if r.Revision == 0 {
				r.Revision = resp.Header.GetRevision()
			}
			for _, kv := range resp.Kvs {
				r.count(&rr, keks, string(kv.Key), stored.Parse(kv.Value))
			}
			if opts.Progress != nil {
				opts.Progress(r.Objects)
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		r.Resources = append(r.Resources, rr)
	}
	for _, id := range slices.Sorted(maps.Keys(keks)) {
		r.LocalKEKs = append(r.LocalKEKs, *keks[id])
	}
	sort.SliceStable(r.LocalKEKs, func(i, j int) bool { return r.LocalKEKs[i].RootKeyID < r.LocalKEKs[j].RootKeyID })
	return r, nil
}

func (r *Report) sample(class, key string) {
	if len(r.Samples[class]) < maxSamples {
		r.Samples[class] = append(r.Samples[class], key)
	}
}

func (r *Report) count(rr *ResourceReport, keks map[string]*KEKReport, key string, v stored.Value) {
	r.Objects++
	rr.Objects++
	r.Providers[v.Label()]++
	switch v.Class {
	case stored.KMSv2:
		rr.KMSv2++
		o := v.Object
		r.KeyIDs[o.KeyID]++
		k, ok, err := o.KeywardenKEK()
		switch {
		case !ok:
			r.OtherKMSv2++
		case err != nil || k.RootKeyID != o.KeyID:
			r.BadAnnotation++
			r.sample("badAnnotation", key)
		default:
			e := keks[k.ID]
			if e == nil {
				e = &KEKReport{ID: k.ID, RootKeyID: k.RootKeyID}
				if len(k.Roots) > 1 {
					e.Roots = k.Roots
				}
				keks[k.ID] = e
			}
			e.Objects++
		}
	case stored.Plaintext:
		r.Plaintext++
		rr.Plaintext++
		r.sample("plaintext", key)
	case stored.Unrecognized:
		r.Unrecognized++
		rr.Other++
		r.sample("unrecognized", key)
	case stored.Malformed:
		r.Malformed++
		rr.Other++
		r.sample("malformed", key)
	default:
		r.OtherProviders++
		rr.Other++
	}
}

package offline

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/keystore/recovery"
)

// Options configures Run.
type Options struct {
	Scopes   []audit.Scope
	PageSize int64
	// Write, if set, is given every value decrypted, with its etcd key.
	// Without it Run only counts (kmsctl recover --verify).
	Write func(key string, plaintext []byte) error
}

// maxSamples bounds the etcd keys kept per failure class.
const maxSamples = 10

// Report counts what Run found. It holds etcd keys, never plaintext.
type Report struct {
	// Revision is the etcd revision every page was read at.
	Revision int64 `json:"revision"`
	Objects  int   `json:"objects"`
	// Decrypted KMS v2 values, opened with the recovery key.
	Decrypted int `json:"decrypted"`
	// NoRecoveryCopy: KMS v2 values whose local KEK was made before the
	// recovery key (or by another plugin); they cannot be recovered with it.
	NoRecoveryCopy int `json:"noRecoveryCopy"`
	// Failed: KMS v2 values that have a recovery copy but did not open
	// (tampered, or a bug): a recovery that does not verify.
	Failed int `json:"failed"`
	// NotKMSv2: values of any other provider, identity included, left alone.
	NotKMSv2 int `json:"notKMSv2"`
	// KEKs is the distinct local KEKs unwrapped.
	KEKs int `json:"localKEKs"`
	// Written is the values handed to Options.Write.
	Written int                 `json:"written"`
	Samples map[string][]string `json:"samples,omitempty"`
}

// OK says every KMS v2 value read was decrypted.
func (r *Report) OK() bool { return r.NoRecoveryCopy == 0 && r.Failed == 0 }

func (r *Report) sample(class, key string) {
	if r.Samples == nil {
		r.Samples = map[string][]string{}
	}
	if len(r.Samples[class]) < maxSamples {
		r.Samples[class] = append(r.Samples[class], key)
	}
}

// Run reads every value under the scopes at one etcd revision and
// decrypts every KMS v2 value with key. An etcd failure ends it; a value
// that does not decrypt is counted, and the walk goes on.
func Run(ctx context.Context, etcd audit.Getter, key *recovery.PrivateKey, opts Options) (*Report, error) {
	if len(opts.Scopes) == 0 {
		return nil, errors.New("offline: no scopes")
	}
	page := opts.PageSize
	if page <= 0 {
		page = audit.DefaultPageSize
	}
	rd := NewReader(key)
	r := &Report{}
	for _, sc := range opts.Scopes {
		end := clientv3.GetPrefixRangeEnd(sc.Prefix)
		from := sc.Prefix
		for {
			o := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
			if r.Revision > 0 {
				o = append(o, clientv3.WithRev(r.Revision))
			}
			resp, err := etcd.Get(ctx, from, o...)
			if errors.Is(err, rpctypes.ErrCompacted) {
				return nil, fmt.Errorf("etcd compacted revision %d mid-read: run again", r.Revision)
			}
			if err != nil {
				return nil, fmt.Errorf("reading etcd under %s: %w", sc.Prefix, err)
			}
			if r.Revision == 0 {
				r.Revision = resp.Header.GetRevision()
			}
			for _, kv := range resp.Kvs {
				if err := r.one(ctx, rd, string(kv.Key), kv.Value, opts.Write); err != nil {
					return nil, err
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	r.KEKs = rd.Decrypter().KEKs()
	return r, nil
}

// one decrypts one value; only a Write failure is returned.
func (r *Report) one(ctx context.Context, rd *Reader, key string, raw []byte, write func(string, []byte) error) error {
	r.Objects++
	v := stored.Parse(raw)
	if v.Class != stored.KMSv2 {
		r.NotKMSv2++
		return nil
	}
	pt, err := rd.Open(ctx, key, raw, v)
	switch {
	case errors.Is(err, ErrNoRecoveryCopy):
		r.NoRecoveryCopy++
		r.sample("noRecoveryCopy", key)
		return nil
	case err != nil:
		// Counted and sampled, not fatal: the walk goes on to the next value.
		r.Failed++
		r.sample("failed", key)
		return nil //nolint:nilerr // a value that does not decrypt is reported in the counts
	}
	r.Decrypted++
	if write == nil {
		return nil
	}
	if err := write(key, pt); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	r.Written++
	return nil
}

package awskms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/keystoretest"
)

var fixtures atomic.Int64

func TestConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystoretest.Fixture {
		alias := newAlias(t)
		// Each fixture is its own keystore: a keystore name of its own, as
		// two clusters sharing an AWS account should have.
		b := openURI(t, uri(alias, fmt.Sprintf("context-name=fixture-%d", fixtures.Add(1))))
		return keystoretest.Fixture{
			Backend: b,
			Rotate: func(ctx context.Context) error {
				if err := retarget(ctx, t, alias); err != nil {
					return err
				}
				// What the health check's TTL does in production, now.
				b.cur.Invalidate()
				return nil
			},
		}
	})
}

// The same suite with the URI naming a key ARN (no rotation possible).
func TestConformanceKeyARN(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystoretest.Fixture {
		return keystoretest.Fixture{Backend: openURI(t, uri(newKey(t), fmt.Sprintf("context-name=fixture-%d", fixtures.Add(1))))}
	})
}

func TestParseURI(t *testing.T) {
	tests := []struct {
		name    string
		uri     string
		wantErr bool
		check   func(t *testing.T, c config)
	}{
		{name: "alias", uri: "aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/keywarden", check: func(t *testing.T, c config) {
			if !c.isAlias || c.ref.Region != "eu-west-1" || c.context != DefaultContextName || c.Timeout != 5*time.Second {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "key", uri: "aws-kms://arn:aws-cn:kms:cn-north-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", check: func(t *testing.T, c config) {
			if c.isAlias || c.ref.Partition != "aws-cn" {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "options", uri: "aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?endpoint=https://vpce-1.kms.eu-west-1.vpce.amazonaws.com&profile=kms&context-name=prod-a&timeout=2s&key-id-ttl=30s", check: func(t *testing.T, c config) {
			if c.endpoint == "" || c.profile != "kms" || c.context != "prod-a" || c.Timeout != 2*time.Second || c.KeyIDTTL != 30*time.Second {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "loopback http", uri: "aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?endpoint=http://127.0.0.1:4566"},
		{name: "remote http", uri: "aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?endpoint=http://kms.example.com", wantErr: true},
		{name: "not an arn", uri: "aws-kms://alias/keywarden", wantErr: true},
		{name: "other service", uri: "aws-kms://arn:aws:s3:eu-west-1:111122223333:key/x", wantErr: true},
		{name: "no region", uri: "aws-kms://arn:aws:kms::111122223333:key/x", wantErr: true},
		{name: "bare key", uri: "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/", wantErr: true},
		{name: "other resource", uri: "aws-kms://arn:aws:kms:eu-west-1:111122223333:grant/x", wantErr: true},
		{name: "unknown param", uri: "aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?region=us-east-1", wantErr: true},
		{name: "wrong scheme", uri: "awskms://arn:aws:kms:eu-west-1:111122223333:alias/kw", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseURI(tc.uri)
			if tc.wantErr {
				if !errors.Is(err, keystore.ErrConfig) {
					t.Fatalf("got %v, want ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

// An alias moved to a new key outside keywarden reaches KeyID at the next
// refresh (key-id-ttl), never before; Wrap follows KeyID.
func TestAliasRetargetNoticedOnTTL(t *testing.T) {
	ctx := context.Background()
	alias := newAlias(t)
	now := time.Unix(1_700_000_000, 0)
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	cfg, err := parseURI(uri(alias, "key-id-ttl=1m"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBackend(ctx, cfg, openClient(cfg), func() time.Time { return *clock.Load() })
	if err != nil {
		t.Fatal(err)
	}
	k1, err := b.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := retarget(ctx, t, alias); err != nil {
		t.Fatal(err)
	}
	if k, _ := b.KeyID(ctx); k != k1 {
		t.Fatalf("KeyID changed before the TTL: %s", k)
	}
	if w, _ := b.Wrap(ctx, []byte("x"), nil); w.KeyID != k1 {
		t.Fatalf("Wrap used %s before the TTL, KeyID says %s", w.KeyID, k1)
	}
	later := now.Add(61 * time.Second)
	clock.Store(&later)
	k2, err := b.KeyID(ctx)
	if err != nil || k2 == k1 {
		t.Fatalf("KeyID after the TTL: %q (%v), was %q", k2, err, k1)
	}
	if w, _ := b.Wrap(ctx, []byte("x"), nil); w.KeyID != k2 {
		t.Fatalf("Wrap used %s after the TTL, KeyID says %s", w.KeyID, k2)
	}
}

func openClient(cfg config) *kms.Client {
	ac := testAWSConfig()
	ac.Retryer = func() aws.Retryer { return aws.NopRetryer{} }
	return kms.NewFromConfig(ac, func(o *kms.Options) { o.BaseEndpoint = aws.String(cfg.endpoint) })
}

func TestKeyStates(t *testing.T) {
	ctx := context.Background()
	key := newKey(t)
	b := openURI(t, uri(key, "key-id-ttl=0s"))
	pt := bytes.Repeat([]byte{1}, 32)
	w, err := b.Wrap(ctx, pt, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lk.admin.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(key)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w, []byte("a")); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap with the key disabled: %v, want ErrKeyDisabled", err)
	}
	if _, err := b.KeyID(ctx); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("KeyID with the key disabled: %v, want ErrKeyDisabled", err)
	}
	if _, err := lk.admin.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(key)}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Unwrap(ctx, w, []byte("a")); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Unwrap re-enabled: %v", err)
	}
	if _, err := lk.admin.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(key), PendingWindowInDays: aws.Int32(7)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, w, []byte("a")); !errors.Is(err, keystore.ErrKeyDisabled) {
		t.Fatalf("Unwrap with the key pending deletion: %v, want ErrKeyDisabled", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		ref  string
		want error
	}{
		{"no such alias", "arn:aws:kms:" + testRegion + ":" + testAccount + ":alias/nope", keystore.ErrKeyNotFound},
		{"no such key", "arn:aws:kms:" + testRegion + ":" + testAccount + ":key/00000000-0000-0000-0000-000000000000", keystore.ErrKeyNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseURI(uri(tc.ref))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := open(ctx, cfg, testAWSConfig()); !errors.Is(err, tc.want) {
				t.Fatalf("open: %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		cfg, err := parseURI(Scheme + "://" + newAlias(t) + "?endpoint=http://" + closedPort(t) + "&timeout=300ms")
		if err != nil {
			t.Fatal(err)
		}
		b, err := open(ctx, cfg, testAWSConfig())
		if err != nil {
			t.Fatalf("open: %v (an unreachable KMS must not fail Open)", err)
		}
		if _, err := b.KeyID(ctx); !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("KeyID: %v, want ErrUnavailable", err)
		}
		if _, err := b.Wrap(ctx, []byte("x"), nil); !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("Wrap: %v, want ErrUnavailable", err)
		}
	})
}

func TestKeyIDOutsideAccount(t *testing.T) {
	ctx := context.Background()
	b := openURI(t, uri(newAlias(t)))
	w, err := b.Wrap(ctx, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, kid := range []string{
		strings.Replace(w.KeyID, testAccount, "999999999999", 1),
		strings.Replace(w.KeyID, testRegion, "us-east-1", 1),
		strings.Replace(w.KeyID, ":key/", ":alias/", 1),
	} {
		if _, err := b.Unwrap(ctx, keystore.Wrapped{KeyID: kid, Ciphertext: w.Ciphertext}, nil); !errors.Is(err, keystore.ErrKeyNotFound) {
			t.Errorf("Unwrap under %s: %v, want ErrKeyNotFound", kid, err)
		}
	}
}

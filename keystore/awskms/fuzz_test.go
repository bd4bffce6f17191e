package awskms

import (
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore/internal/remote/remotetest"
)

// FuzzParseURI: no URI panics, every refusal is ErrConfig, and an accepted
// one names a KMS key or alias, with a usable timeout, a bounded context
// name, and an endpoint over HTTPS (plain HTTP only to a loopback IP).
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/keywarden",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
		"aws-kms://arn:aws-cn:kms:cn-north-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?endpoint=https://vpce-1.kms.eu-west-1.vpce.amazonaws.com&profile=kms&context-name=prod-a&timeout=2s&key-id-ttl=30s",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?endpoint=http://127.0.0.1:4566",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?endpoint=http://[::1]:4566",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?endpoint=http://kms.example.com",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?endpoint=https://:443",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?timeout=1ms",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?timeout=1s&timeout=2s",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?context-name=",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?%zz",
		"aws-kms://alias/keywarden",
		"aws-kms://arn:aws:s3:eu-west-1:111122223333:key/x",
		"aws-kms://arn:aws:kms::111122223333:key/x",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:grant/x",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/kw?region=us-east-1",
		"awskms://arn:aws:kms:eu-west-1:111122223333:alias/kw",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseURI(s)
		if !remotetest.ParseResult(t, s, c.Options, err) {
			return
		}
		if c.ref.Service != "kms" || c.ref.Region == "" || c.ref.AccountID == "" {
			t.Fatalf("%q: ARN %+v", s, c.ref)
		}
		prefix := "key/"
		if c.isAlias {
			prefix = "alias/"
		}
		if !strings.HasPrefix(c.ref.Resource, prefix) || len(c.ref.Resource) == len(prefix) {
			t.Fatalf("%q: resource %q (alias %v)", s, c.ref.Resource, c.isAlias)
		}
		if c.context == "" || len(c.context) > 128 {
			t.Fatalf("%q: context name %q", s, c.context)
		}
		if c.endpoint != "" {
			u, err := url.Parse(c.endpoint)
			if err != nil || u.Hostname() == "" {
				t.Fatalf("%q: endpoint %q (%v)", s, c.endpoint, err)
			}
			ip := net.ParseIP(u.Hostname())
			if u.Scheme != "https" && (u.Scheme != "http" || ip == nil || !ip.IsLoopback()) {
				t.Fatalf("%q: endpoint %q", s, c.endpoint)
			}
		}
	})
}

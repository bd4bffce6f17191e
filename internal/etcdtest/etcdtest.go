// Package etcdtest gives tests a real etcd: the binary the e2e suite
// downloads (make e2e-tools), run as a throwaway single member, and the
// values a real kube-apiserver wrote to put in it. For tests only; no
// production package imports it.
package etcdtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/keywarden/keywarden/kms/envelope"
)

// root is the module's root directory: the nearest directory, from the
// test's working directory (its package's) up, whose go.mod is keywarden's.
// Not from this file's compiled-in path, which -trimpath (make fips) turns
// into the import path.
func root(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.HasPrefix(b, []byte("module github.com/keywarden/keywarden\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("etcdtest: no keywarden go.mod above the working directory")
		}
		dir = parent
	}
}

// Start runs the e2e suite's etcd ($KEYWARDEN_E2E_TOOLS_DIR, else
// test/e2e/tools/bin) on free loopback ports with its data in a temporary
// directory, and returns its client URL and a client; both end with the
// test. It skips the test when there is no etcd binary, or fails it when
// $KEYWARDEN_REQUIRE_ETCD is set (CI sets it).
func Start(t testing.TB) (string, *clientv3.Client) {
	t.Helper()
	dir := os.Getenv("KEYWARDEN_E2E_TOOLS_DIR")
	if dir == "" {
		dir = filepath.Join(root(t), "test", "e2e", "tools", "bin")
	}
	bin := filepath.Join(dir, "etcd")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("KEYWARDEN_REQUIRE_ETCD") != "" {
			t.Fatalf("no etcd binary at %s (make e2e-tools), and KEYWARDEN_REQUIRE_ETCD is set", bin)
		}
		t.Skipf("no etcd binary at %s (make e2e-tools)", bin)
	}
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", port()), fmt.Sprintf("http://127.0.0.1:%d", port())
	cmd := exec.Command(bin, "--data-dir", t.TempDir(), "--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "default="+peer, "--log-level", "error")
	// etcd is the test's infrastructure, not what is tested: it runs without
	// the test's GODEBUG (make fips sets fips140=only, which etcd, built
	// without Go's FIPS module in mind, does not start under).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Get(ctx, "health")
		cancel()
		if err == nil {
			return client, c
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not start: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// GoldenValues returns the values kube-apiserver 1.37.2 wrote to etcd, by
// key (internal/stored/testdata/golden-apiserver-v1.37.2.json): KMS v2
// values under two root keys, aescbc and identity ones.
func GoldenValues(t testing.TB) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), "internal", "stored", "testdata", "golden-apiserver-v1.37.2.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Values []struct {
			Key   string
			Value []byte
		}
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, v := range doc.Values {
		m[v.Key] = v.Value
	}
	return m
}

// KMSValue returns a KMS v2 value as kube-apiserver stores it, written by
// keywarden under root key version keyID: the golden value
// /registry/secrets/default/g1 with its key_id and the root version in its
// kek.keywarden.io annotation both replaced by keyID, re-encoded field by
// field. Tests use it to put objects under the key versions they create,
// whatever the length of their IDs.
func KMSValue(t testing.TB, keyID string) []byte {
	t.Helper()
	return kmsValue(t, keyID, func(rootCT []byte) ([]byte, error) { return envelope.EncodeKEK(keyID, rootCT) })
}

// KMSValueRoots is KMSValue for a local KEK wrapped under several roots:
// a version-2 annotation with one copy per root key_id (backend "file"),
// under the key_id naming them all.
func KMSValueRoots(t testing.TB, rootKeyIDs ...string) []byte {
	t.Helper()
	keyID, err := envelope.RootsKeyID(rootKeyIDs)
	if err != nil {
		t.Fatal(err)
	}
	return kmsValue(t, keyID, func(rootCT []byte) ([]byte, error) {
		copies := make([]envelope.Copy, len(rootKeyIDs))
		for i, id := range rootKeyIDs {
			copies[i] = envelope.Copy{Backend: "file", KeyID: id, RootCT: rootCT}
		}
		return envelope.EncodeKEK2(copies)
	})
}

// ForeignKMSValue is a KMS v2 value as another KMS v2 plugin, named
// provider in the EncryptionConfiguration, leaves it: the golden value's
// fields under keyID, without keywarden's kek.keywarden.io annotation
// (every value keywarden writes has one; keywarden refuses to decrypt a
// value without it).
func ForeignKMSValue(t testing.TB, provider, keyID string) []byte {
	t.Helper()
	return kmsValueAs(t, provider, keyID, nil)
}

// KMSValueAs is KMSValue stored under another provider name: keywarden
// configured in the EncryptionConfiguration as provider.
func KMSValueAs(t testing.TB, provider, keyID string) []byte {
	t.Helper()
	return kmsValueAs(t, provider, keyID, func(rootCT []byte) ([]byte, error) { return envelope.EncodeKEK(keyID, rootCT) })
}

func kmsValue(t testing.TB, keyID string, annotation func(rootCT []byte) ([]byte, error)) []byte {
	t.Helper()
	return kmsValueAs(t, "keywarden", keyID, annotation)
}

// kmsValueAs re-encodes the golden g1 value under provider and keyID, with
// keywarden's annotation made by annotation, or dropped if it is nil.
func kmsValueAs(t testing.TB, provider, keyID string, annotation func(rootCT []byte) ([]byte, error)) []byte {
	t.Helper()
	const prefix = "k8s:enc:kms:v2:keywarden:"
	v := GoldenValues(t)["/registry/secrets/default/g1"]
	if !bytes.HasPrefix(v, []byte(prefix)) {
		t.Fatal("etcdtest: golden g1 is not a keywarden KMS v2 value")
	}
	b := v[len(prefix):]
	out := []byte("k8s:enc:kms:v2:" + provider + ":")
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("etcdtest: golden g1: %v", protowire.ParseError(n))
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			t.Fatalf("etcdtest: golden g1 field %d: %v", num, protowire.ParseError(m))
		}
		field := b[:m]
		b = b[m:]
		switch num {
		case 2: // keyID
			out = protowire.AppendTag(out, num, protowire.BytesType)
			out = protowire.AppendString(out, keyID)
		case 4: // an annotation: map entry {1: key, 2: value}
			entry, _ := protowire.ConsumeBytes(field)
			k, val := annotationEntry(t, entry)
			if k == envelope.AnnotationKey && annotation == nil {
				continue
			}
			if k == envelope.AnnotationKey {
				_, rootCT, err := envelope.DecodeKEK(val)
				if err != nil {
					t.Fatalf("etcdtest: golden g1 annotation: %v", err)
				}
				if val, err = annotation(rootCT); err != nil {
					t.Fatal(err)
				}
			}
			var e []byte
			e = protowire.AppendTag(e, 1, protowire.BytesType)
			e = protowire.AppendString(e, k)
			e = protowire.AppendTag(e, 2, protowire.BytesType)
			e = protowire.AppendBytes(e, val)
			out = protowire.AppendTag(out, num, protowire.BytesType)
			out = protowire.AppendBytes(out, e)
		default:
			out = protowire.AppendTag(out, num, typ)
			out = append(out, field...)
		}
	}
	return out
}

func annotationEntry(t testing.TB, b []byte) (string, []byte) {
	t.Helper()
	var key string
	var val []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			t.Fatal("etcdtest: golden g1 annotation entry is not two byte fields")
		}
		v, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			t.Fatal("etcdtest: golden g1 annotation entry is truncated")
		}
		if num == 1 {
			key = string(v)
		} else {
			val = v
		}
		b = b[n+m:]
	}
	return key, val
}

//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/keywarden/keywarden/internal/rotation"
	"github.com/keywarden/keywarden/internal/stored"
	"github.com/keywarden/keywarden/kms/envelope"
	"github.com/keywarden/keywarden/test/e2e/cluster"
)

// testCtx is a context bounded by the test's deadline (less a margin for
// cleanup) and by max.
func testCtx(t *testing.T, max time.Duration) context.Context {
	t.Helper()
	deadline := time.Now().Add(max)
	if d, ok := t.Deadline(); ok && d.Add(-30*time.Second).Before(deadline) {
		deadline = d.Add(-30 * time.Second)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

// unique returns a random printable token: plaintext that cannot appear in
// a stored value by chance.
func unique(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func secretKey(ns, name string) string { return "/registry/secrets/" + ns + "/" + name }

func configMapKey(ns, name string) string { return "/registry/configmaps/" + ns + "/" + name }

// kubectl runs the real kubectl and fails the test on a non-zero exit.
func kubectl(t *testing.T, ctx context.Context, a *cluster.APIServer, stdin string, args ...string) string {
	t.Helper()
	out, err := a.Kubectl(ctx, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// jsonpathKey escapes a data key for a kubectl jsonpath expression.
func jsonpathKey(k string) string { return strings.ReplaceAll(k, ".", `\.`) }

// kubectlSecretValue is `kubectl get secret -o jsonpath='{.data.KEY}' |
// base64 -d`.
func kubectlSecretValue(t *testing.T, ctx context.Context, a *cluster.APIServer, ns, name, key string) []byte {
	t.Helper()
	out := kubectl(t, ctx, a, "", "get", "secret", name, "-n", ns, "-o", "jsonpath={.data."+jsonpathKey(key)+"}")
	v, err := base64.StdEncoding.DecodeString(out)
	if err != nil {
		t.Fatalf("secret %s/%s key %s: %q is not base64: %v", ns, name, key, out, err)
	}
	return v
}

// rawValue reads key's raw value from etcd and fails if it is missing.
func rawValue(t *testing.T, ctx context.Context, e *cluster.Etcd, key string) []byte {
	t.Helper()
	v, found, err := e.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("etcd has no %s", key)
	}
	return v
}

// assertSealed reads key from etcd and checks that it is a KMS v2 value of
// provider, that none of plaintexts (nor their base64) appears in it, and
// returns the decoded EncryptedObject.
func assertSealed(t *testing.T, ctx context.Context, e *cluster.Etcd, provider, key string, plaintexts ...[]byte) *stored.EncryptedObject {
	t.Helper()
	raw := rawValue(t, ctx, e, key)
	obj, err := cluster.ParseKMSv2(raw, provider)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	for _, p := range plaintexts {
		if len(p) < 6 {
			t.Fatalf("test bug: plaintext %q is too short to search for", p)
		}
		if bytes.Contains(raw, p) {
			t.Errorf("%s: stored value contains the plaintext %q", key, p)
		}
		if b64 := []byte(base64.StdEncoding.EncodeToString(p)); bytes.Contains(raw, b64) {
			t.Errorf("%s: stored value contains the base64 of the plaintext %q", key, p)
		}
	}
	if obj.DEKSourceType != stored.HKDFSHA256XNonce {
		t.Errorf("%s: encryptedDEKSourceType = %d, want %d (HKDF-SHA256 seed)", key, obj.DEKSourceType, stored.HKDFSHA256XNonce)
	}
	kek, ok, err := obj.KeywardenKEK()
	if !ok || err != nil || len(obj.Annotations) != 1 {
		t.Errorf("%s: annotations %v (%v), want only %s", key, keys(obj.Annotations), err, envelope.AnnotationKey)
	} else if kek.RootKeyID != obj.KeyID {
		t.Errorf("%s: local KEK wrapped under %q but keyID is %q", key, kek.RootKeyID, obj.KeyID)
	}
	return obj
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// eventually retries f every interval until it returns nil or timeout
// passes, then fails with f's last error. It returns the time it took.
func eventually(t *testing.T, timeout, interval time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for {
		if err = f(); err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
	}
}

// ensureNamespace creates ns through the API.
func ensureNamespace(t *testing.T, ctx context.Context, a *cluster.APIServer, ns string) {
	t.Helper()
	_, err := a.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// putSecret creates or updates an Opaque secret through the API.
func putSecret(ctx context.Context, a *cluster.APIServer, ns, name string, data map[string][]byte) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: data}
	_, err := a.Client.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *corev1.Secret
		if cur, err = a.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			cur.Data = data
			_, err = a.Client.CoreV1().Secrets(ns).Update(ctx, cur, metav1.UpdateOptions{})
		}
	}
	return err
}

// getSecretValue reads one key of a secret through the API.
func getSecretValue(ctx context.Context, a *cluster.APIServer, ns, name, key string) ([]byte, error) {
	s, err := a.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	v, ok := s.Data[key]
	if !ok {
		return nil, fmt.Errorf("secret %s/%s has no key %q", ns, name, key)
	}
	return v, nil
}

// waitForWriteKeyID waits, as kmsctl rotate's pickup step does
// (rotation.WaitPickup), until a's writes are stored under keyID, and
// returns how long that took: it rewrites a canary secret of its own in ns
// and reads it back from etcd, asking /readyz/kms-providers between writes
// so that kube-apiserver calls Status sooner than its once a minute. The
// canary stays: tests count it.
func waitForWriteKeyID(t *testing.T, ctx context.Context, c *cluster.Etcd, a *cluster.APIServer, provider, ns, keyID string) time.Duration {
	t.Helper()
	dyn, err := dynamic.NewForConfig(a.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = rotation.WaitPickup(ctx, rotation.Canary{
		Client: dyn, Readyz: a.Client.Discovery().RESTClient(), Get: c.Get,
		Prefix: "/registry", Namespace: ns, Name: "canary-" + strings.ToLower(unique("k")[:10]),
		Provider: provider, Window: 150 * time.Second, Poll: 2 * time.Second, Keep: true,
	}, keyID)
	if err != nil {
		t.Fatalf("apiserver writes under key %s: %v", keyID, err)
	}
	return time.Since(start)
}

// repoFile returns the text of a file of this repository, by its path
// from the repository root ("docs", "rotation.md").
func repoFile(t *testing.T, elem ...string) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(append([]string{root}, elem...)...))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

package rotation

import (
	"context"
	"fmt"
	"path"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/internal/stored"
)

// A Plugin is one keywarden, reached on its KMS socket.
type Plugin struct {
	// Socket names it in messages.
	Socket string
	// Status calls its Status once.
	Status func(ctx context.Context) (*kmsapi.StatusResponse, error)
}

// waitPlugin polls p's Status until it reports keyID, healthy, for at most
// timeout.
func waitPlugin(ctx context.Context, p Plugin, keyID string, timeout, poll time.Duration, now func() time.Time) (string, error) {
	t0 := now()
	var last string
	for {
		r, err := p.Status(ctx)
		if err == nil && r.KeyId == keyID && r.Healthz == "ok" {
			return fmt.Sprintf("%s: Status key_id %s after %s", p.Socket, keyID, now().Sub(t0).Round(time.Second)), nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("key_id %s, healthz %s", r.KeyId, r.Healthz)
		}
		if now().Sub(t0) > timeout {
			return "", surprisef("keywarden on %s did not report key_id %s within --plugin-timeout %s (last: %s): is it running on this keystore?", p.Socket, keyID, timeout, last)
		}
		if err := Sleep(ctx, poll); err != nil {
			return "", err
		}
	}
}

// CanaryName is the canary Secret's name unless Canary.Name says otherwise.
const CanaryName = "kmsctl-rotation-canary"

var secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// Canary is the Secret WaitPickup writes through kube-apiserver and reads
// back from etcd, and the clients it does so with.
type Canary struct {
	// Client writes the Secret through kube-apiserver.
	Client dynamic.Interface
	// Readyz, if not nil, is asked for /readyz/kms-providers before every
	// write but the first: kube-apiserver calls Status once a minute, and
	// also for that check when its last answer is over 20 s old (as a load
	// balancer's probe would), so asking makes it learn the key sooner.
	Readyz rest.Interface
	// Get reads a raw value from etcd: found is false if key is absent.
	Get func(ctx context.Context, key string) (value []byte, found bool, err error)
	// Prefix is kube-apiserver's --etcd-prefix.
	Prefix string
	// Namespace and Name place the Secret; Name defaults to CanaryName.
	Namespace, Name string
	// Provider, if not empty, is the KMS v2 provider name the Secret must
	// be stored under; a value under another one counts as not yet picked
	// up. Empty takes any KMS v2 provider.
	Provider string
	// Window bounds the wait; Poll is the time between writes.
	Window, Poll time.Duration
	// Keep leaves the Secret in place at the end; by default it is deleted.
	Keep bool
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// WaitPickup is the pickup step: it writes the canary Secret through
// kube-apiserver every c.Poll and reads its stored value from etcd until
// it is under keyID, which shows that kube-apiserver encrypts new writes
// with it. It gives up with a Surprise after c.Window, or at once if the
// Secret is not stored as KMS v2 at all.
func WaitPickup(ctx context.Context, c Canary, keyID string) (string, error) {
	now := c.Now
	if now == nil {
		now = time.Now
	}
	name := c.Name
	if name == "" {
		name = CanaryName
	}
	secrets := c.Client.Resource(secretsGVR).Namespace(c.Namespace)
	if !c.Keep {
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = secrets.Delete(dctx, name, metav1.DeleteOptions{})
		}()
	}
	etcdKey := strings.TrimSuffix(path.Clean(c.Prefix), "/") + "/secrets/" + c.Namespace + "/" + name
	t0 := now()
	var last string
	for i := 0; ; i++ {
		if i > 0 && c.Readyz != nil {
			_ = c.Readyz.Get().AbsPath("/readyz/kms-providers").Do(ctx).Error()
		}
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "Secret",
			"metadata":   map[string]any{"name": name, "namespace": c.Namespace, "labels": map[string]any{"app.kubernetes.io/managed-by": "kmsctl"}},
			"stringData": map[string]any{"probe": fmt.Sprintf("%d-%d", now().UnixNano(), i)},
		}}
		_, err := secrets.Update(ctx, obj, metav1.UpdateOptions{FieldManager: "kmsctl-rotate"})
		if apierrors.IsNotFound(err) {
			_, err = secrets.Create(ctx, obj, metav1.CreateOptions{FieldManager: "kmsctl-rotate"})
		}
		if err != nil {
			return "", fmt.Errorf("writing the canary Secret %s/%s: %w", c.Namespace, name, err)
		}
		raw, found, err := c.Get(ctx, etcdKey)
		if err != nil {
			return "", fmt.Errorf("reading the canary from etcd: %w", err)
		}
		if found {
			v := stored.Parse(raw)
			switch {
			case v.Class == stored.KMSv2 && c.Provider != "" && v.Provider != c.Provider:
				last = "canary stored by provider " + v.Provider
			case v.Class == stored.KMSv2 && v.Object.KeyID == keyID:
				return fmt.Sprintf("kube-apiserver wrote the canary under %s after %s", keyID, now().Sub(t0).Round(time.Second)), nil
			case v.Class == stored.KMSv2:
				last = "canary stored under " + v.Object.KeyID
			default:
				return "", surprisef("the canary Secret is stored as %s, not KMS v2: are Secrets encrypted by keywarden, and is --prefix (%s) kube-apiserver's --etcd-prefix?", v.Label(), c.Prefix)
			}
		} else {
			last = "canary not found in etcd at " + etcdKey
		}
		if now().Sub(t0) > c.Window {
			return "", surprisef("kube-apiserver did not start using %s within --pickup-window %s (%s)", keyID, c.Window, last)
		}
		if err := Sleep(ctx, c.Poll); err != nil {
			return "", err
		}
	}
}

// Sleep waits d or until ctx ends (then it returns ctx.Err()).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

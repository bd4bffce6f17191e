package rotation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

// fakeAPIServer serves what WaitPickup asks of kube-apiserver: Secrets in
// the namespaces it has (update, create, delete) and /readyz/kms-providers.
type fakeAPIServer struct {
	mu                               sync.Mutex
	namespaces, secrets              map[string]bool
	creates, updates, deletes, ready int
	fieldManagers                    []string
	lastBody                         map[string]any
	cfg                              *rest.Config
}

func newFakeAPIServer(t *testing.T, namespaces ...string) *fakeAPIServer {
	t.Helper()
	f := &fakeAPIServer{namespaces: map[string]bool{}, secrets: map[string]bool{}}
	for _, ns := range namespaces {
		f.namespaces[ns] = true
	}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	f.cfg = &rest.Config{Host: srv.URL}
	return f
}

func status(w http.ResponseWriter, code int, reason string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":%q,"code":%d}`, reason, code)
}

func (f *fakeAPIServer) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path == "/readyz/kms-providers" {
		f.ready++
		_, _ = io.WriteString(w, "ok")
		return
	}
	p, ok := strings.CutPrefix(r.URL.Path, "/api/v1/namespaces/")
	ns, p, _ := strings.Cut(p, "/")
	p, isSecrets := strings.CutPrefix(p, "secrets")
	if !ok || !isSecrets {
		http.NotFound(w, r)
		return
	}
	name := strings.TrimPrefix(p, "/")
	body, _ := io.ReadAll(r.Body)
	if r.Method != http.MethodDelete {
		f.lastBody = nil
		_ = json.Unmarshal(body, &f.lastBody)
		f.fieldManagers = append(f.fieldManagers, r.URL.Query().Get("fieldManager"))
	}
	echo := func(code int) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = w.Write(body)
	}
	switch {
	case !f.namespaces[ns]:
		status(w, http.StatusNotFound, "NotFound")
	case r.Method == http.MethodPut && f.secrets[ns+"/"+name]:
		f.updates++
		echo(http.StatusOK)
	case r.Method == http.MethodPost && name == "":
		meta, _ := f.lastBody["metadata"].(map[string]any)
		f.secrets[ns+"/"+meta["name"].(string)] = true
		f.creates++
		echo(http.StatusCreated)
	case r.Method == http.MethodDelete && f.secrets[ns+"/"+name]:
		delete(f.secrets, ns+"/"+name)
		f.deletes++
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"}`)
	default:
		status(w, http.StatusNotFound, "NotFound")
	}
}

func (f *fakeAPIServer) canary(t *testing.T, c Canary) Canary {
	t.Helper()
	dyn, err := dynamic.NewForConfig(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Client, c.Readyz = dyn, cs.Discovery().RESTClient()
	if c.Prefix == "" {
		c.Prefix = "/registry/"
	}
	if c.Namespace == "" {
		c.Namespace = "default"
	}
	if c.Poll == 0 {
		c.Poll = time.Millisecond
	}
	if c.Window == 0 {
		c.Window = 10 * time.Second
	}
	return c
}

// etcdValues answers the canary's key with vals in turn, the last one from
// then on, and records the keys asked for.
func etcdValues(vals ...[]byte) (func(context.Context, string) ([]byte, bool, error), *[]string) {
	var keys []string
	i := 0
	return func(_ context.Context, key string) ([]byte, bool, error) {
		keys = append(keys, key)
		v := vals[min(i, len(vals)-1)]
		i++
		return v, v != nil, nil
	}, &keys
}

// clock starts at 0 and moves one second at every reading.
func clock() func() time.Time {
	t := time.Unix(0, 0)
	return func() time.Time { t = t.Add(time.Second); return t }
}

// TestWaitPickup: the canary is written (created, then updated) until etcd
// shows it under the new key; readyz is asked between writes; the canary
// is deleted at the end.
func TestWaitPickup(t *testing.T) {
	old, neu := "tink:1:0123456789abcdef", "tink:2:fedcba9876543210"
	api := newFakeAPIServer(t, "default")
	get, keys := etcdValues(nil, etcdtest.KMSValue(t, old), etcdtest.KMSValue(t, neu))
	d, err := WaitPickup(context.Background(), api.canary(t, Canary{Get: get}), neu)
	if err != nil || !strings.HasPrefix(d, "kube-apiserver wrote the canary under "+neu+" after ") {
		t.Fatalf("%q %v", d, err)
	}
	if api.creates != 1 || api.updates != 2 || api.ready != 2 || api.deletes != 1 || len(api.secrets) != 0 {
		t.Fatalf("creates %d updates %d readyz %d deletes %d left %v", api.creates, api.updates, api.ready, api.deletes, api.secrets)
	}
	if len(*keys) != 3 || (*keys)[0] != "/registry/secrets/default/"+CanaryName {
		t.Fatalf("etcd keys read: %q", *keys)
	}
	meta, _ := api.lastBody["metadata"].(map[string]any)
	labels, _ := meta["labels"].(map[string]any)
	if labels["app.kubernetes.io/managed-by"] != "kmsctl" || api.fieldManagers[0] != "kmsctl-rotate" {
		t.Fatalf("canary %v, field managers %v", api.lastBody, api.fieldManagers)
	}
}

// TestWaitPickupKeep is how the e2e tests wait: their own canary name and
// namespace, their provider, and the canary left in place.
func TestWaitPickupKeep(t *testing.T) {
	neu := "tink:2:fedcba9876543210"
	api := newFakeAPIServer(t, "ns1")
	get, keys := etcdValues(etcdtest.KMSValue(t, neu))
	c := api.canary(t, Canary{Get: get, Prefix: "/custom", Namespace: "ns1", Name: "canary-1", Provider: "keywarden", Keep: true})
	if _, err := WaitPickup(context.Background(), c, neu); err != nil {
		t.Fatal(err)
	}
	if api.deletes != 0 || !api.secrets["ns1/canary-1"] || (*keys)[0] != "/custom/secrets/ns1/canary-1" || api.ready != 0 {
		t.Fatalf("deletes %d secrets %v keys %q readyz %d", api.deletes, api.secrets, *keys, api.ready)
	}
}

func TestWaitPickupStops(t *testing.T) {
	neu := "tink:2:fedcba9876543210"
	tests := []struct {
		name     string
		ns       string
		provider string
		vals     func(t *testing.T) [][]byte
		getErr   error
		surprise bool
		want     string
	}{
		{name: "plaintext", vals: func(*testing.T) [][]byte { return [][]byte{[]byte(`{"kind":"Secret","apiVersion":"v1"}`)} },
			surprise: true, want: "the canary Secret is stored as"},
		{name: "window passes", vals: func(t *testing.T) [][]byte { return [][]byte{etcdtest.KMSValue(t, "tink:1:0123456789abcdef")} },
			surprise: true, want: "did not start using " + neu + " within --pickup-window 3s (canary stored under tink:1:0123456789abcdef)"},
		{name: "never in etcd", vals: func(*testing.T) [][]byte { return [][]byte{nil} },
			surprise: true, want: "(canary not found in etcd at /registry/secrets/default/" + CanaryName + ")"},
		{name: "another provider", provider: "other", vals: func(t *testing.T) [][]byte { return [][]byte{etcdtest.KMSValue(t, neu)} },
			surprise: true, want: "(canary stored by provider keywarden)"},
		{name: "namespace missing", ns: "nope", vals: func(*testing.T) [][]byte { return [][]byte{nil} },
			want: "writing the canary Secret nope/" + CanaryName},
		{name: "etcd fails", getErr: errors.New("etcd down"), vals: func(*testing.T) [][]byte { return [][]byte{nil} },
			want: "reading the canary from etcd: etcd down"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			api := newFakeAPIServer(t, "default")
			get, _ := etcdValues(tc.vals(t)...)
			if tc.getErr != nil {
				get = func(context.Context, string) ([]byte, bool, error) { return nil, false, tc.getErr }
			}
			c := api.canary(t, Canary{Get: get, Namespace: tc.ns, Provider: tc.provider, Window: 3 * time.Second, Now: clock()})
			_, err := WaitPickup(context.Background(), c, neu)
			var s Surprise
			if err == nil || errors.As(err, &s) != tc.surprise || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q (surprise %v), got %v", tc.want, tc.surprise, err)
			}
			if tc.ns == "" && api.deletes != 1 {
				t.Fatalf("the canary was not deleted: %d", api.deletes)
			}
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		api := newFakeAPIServer(t, "default")
		get, _ := etcdValues(nil)
		ctx, cancel := context.WithCancel(context.Background())
		c := api.canary(t, Canary{Get: get, Poll: time.Hour})
		time.AfterFunc(50*time.Millisecond, cancel)
		if _, err := WaitPickup(ctx, c, neu); !errors.Is(err, context.Canceled) {
			t.Fatalf("%v", err)
		}
		if api.deletes != 1 {
			t.Fatal("a cancelled wait left its canary")
		}
	})
}

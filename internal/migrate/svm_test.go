package migrate

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
)

var svmGVR = schema.GroupVersionResource{Group: SVMGroup, Version: "v1", Resource: "storageversionmigrations"}

func TestSVMVersion(t *testing.T) {
	if _, err := SVMVersion(fakeDiscovery{lists: discoveryLists}); !errors.Is(err, ErrNoSVM) {
		t.Fatalf("err = %v", err)
	}
	lists := append(discoveryLists, &metav1.APIResourceList{GroupVersion: "storagemigration.k8s.io/v1", APIResources: []metav1.APIResource{{Name: "storageversionmigrations", Verbs: rw}}})
	if gvr, err := SVMVersion(fakeDiscovery{lists: lists}); err != nil || gvr != svmGVR {
		t.Fatalf("%v %v", gvr, err)
	}
}

// svmController plays kube-controller-manager: each get of an object moves
// it one step through conditions (none, Running, then final).
func svmController(c *dynamicfake.FakeDynamicClient, final string) (gets map[string]int, mu *sync.Mutex) {
	gets, mu = map[string]int{}, &sync.Mutex{}
	c.PrependReactor("get", "storageversionmigrations", func(a k8stesting.Action) (bool, runtime.Object, error) {
		name := a.(k8stesting.GetAction).GetName()
		o, err := c.Tracker().Get(svmGVR, "", name)
		if err != nil {
			return true, nil, err
		}
		u := o.(*unstructured.Unstructured).DeepCopy()
		mu.Lock()
		gets[name]++
		n := gets[name]
		mu.Unlock()
		var conds []any
		if n >= 2 {
			conds = append(conds, map[string]any{"type": "Running", "status": "True"})
		}
		if n >= 3 && final != "" {
			conds = append(conds, map[string]any{"type": final, "status": "True", "message": "done"})
		}
		if conds != nil {
			_ = unstructured.SetNestedSlice(u.Object, conds, "status", "conditions")
		}
		return true, u, nil
	})
	return gets, mu
}

func newSVMClient(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{svmGVR: "StorageVersionMigrationList"}, objs...)
}

func TestRunSVM(t *testing.T) {
	c := newSVMClient()
	svmController(c, "Succeeded")
	targets := []Target{{Name: "secrets", GVR: secretsGVR}, {Name: "widgets.example.com", GVR: schema.GroupVersionResource{Group: "example.com", Version: "v2", Resource: "widgets"}}}
	res, err := RunSVM(context.Background(), c, SVMOptions{GVR: svmGVR, Targets: targets, Prefix: "kmsctl", Poll: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Condition != "Succeeded" || res[1].Object != "kmsctl-widgets-example-com" {
		t.Fatalf("%+v", res)
	}
	o, err := c.Tracker().Get(svmGVR, "", "kmsctl-widgets-example-com")
	if err != nil {
		t.Fatal(err)
	}
	g, _, _ := unstructured.NestedString(o.(*unstructured.Unstructured).Object, "spec", "resource", "group")
	if g != "example.com" {
		t.Fatalf("spec.resource.group %q", g)
	}
}

func TestRunSVMFailed(t *testing.T) {
	c := newSVMClient()
	svmController(c, "Failed")
	_, err := RunSVM(context.Background(), c, SVMOptions{GVR: svmGVR, Targets: secretsTarget(), Prefix: "k", Poll: time.Millisecond})
	if !errors.Is(err, ErrSVMFailed) {
		t.Fatalf("err = %v", err)
	}
}

func TestRunSVMNoController(t *testing.T) {
	c := newSVMClient()
	_, err := RunSVM(context.Background(), c, SVMOptions{GVR: svmGVR, Targets: secretsTarget(), Prefix: "k", Poll: time.Millisecond, StartTimeout: 20 * time.Millisecond})
	if !errors.Is(err, ErrSVMFailed) {
		t.Fatalf("err = %v", err)
	}
}

// TestRunSVMReplacesFinished: an object left Succeeded by an earlier
// migration is deleted and created again, since the controller will not run
// it twice.
func TestRunSVMReplacesFinished(t *testing.T) {
	old := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "storagemigration.k8s.io/v1", "kind": "StorageVersionMigration",
		"metadata": map[string]any{"name": "k-secrets", "uid": "old"},
		"status":   map[string]any{"conditions": []any{map[string]any{"type": "Succeeded", "status": "True"}}},
	}}
	c := newSVMClient(old)
	var deleted bool
	c.PrependReactor("delete", "storageversionmigrations", func(k8stesting.Action) (bool, runtime.Object, error) {
		deleted = true
		return false, nil, nil
	})
	svmController(c, "Succeeded")
	if _, err := RunSVM(context.Background(), c, SVMOptions{GVR: svmGVR, Targets: secretsTarget(), Prefix: "k", Poll: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if !deleted {
		t.Fatal("finished object reused")
	}
}

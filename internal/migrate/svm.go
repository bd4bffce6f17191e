package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// SVMGroup is the API group of StorageVersionMigration (GA in Kubernetes
// 1.37; the controller that acts on it runs in kube-controller-manager).
const SVMGroup = "storagemigration.k8s.io"

// ErrNoSVM is returned when the cluster does not serve StorageVersionMigration.
var ErrNoSVM = errors.New("cluster does not serve storagemigration.k8s.io StorageVersionMigration")

// ErrSVMFailed is returned when a StorageVersionMigration ends Failed or
// does not end in time.
var ErrSVMFailed = errors.New("storage version migration did not succeed")

// SVMVersion returns the served version of storagemigration.k8s.io
// (preferred first), or ErrNoSVM.
func SVMVersion(d Resolver) (schema.GroupVersionResource, error) {
	lists, _ := d.ServerPreferredResources() // partial results are fine here
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil || gv.Group != SVMGroup {
			continue
		}
		for _, r := range l.APIResources {
			if r.Name == "storageversionmigrations" {
				return gv.WithResource(r.Name), nil
			}
		}
	}
	return schema.GroupVersionResource{}, ErrNoSVM
}

// SVMOptions configures RunSVM.
type SVMOptions struct {
	GVR     schema.GroupVersionResource // from SVMVersion
	Targets []Target
	// Prefix names the objects: <prefix>-<resource>-<group>, truncated.
	Prefix string
	// Poll is how often status is read (default 2s).
	Poll time.Duration
	// StartTimeout fails a migration that shows no condition at all after
	// this long: nothing is acting on StorageVersionMigrations (default 2m).
	StartTimeout time.Duration
	Log          *slog.Logger
}

// SVMResult is the outcome of one StorageVersionMigration.
type SVMResult struct {
	Resource string `json:"resource"`
	Object   string `json:"object"`
	// Condition is the last condition type seen: Running, Succeeded, Failed,
	// or "" if none.
	Condition string `json:"condition"`
	Message   string `json:"message,omitempty"`
}

// RunSVM creates one StorageVersionMigration per target and waits for each
// to succeed, in order. An object of the same name left by an earlier run is
// reused (so a rerun resumes the wait), unless it Failed, in which case it
// is deleted and created again.
func RunSVM(ctx context.Context, dyn dynamic.Interface, opts SVMOptions) ([]SVMResult, error) {
	if opts.Poll <= 0 {
		opts.Poll = 2 * time.Second
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	ri := dyn.Resource(opts.GVR)
	var results []SVMResult
	for _, t := range opts.Targets {
		name := svmName(opts.Prefix, t)
		res := SVMResult{Resource: t.Name, Object: name}
		if err := ensureSVM(ctx, ri, opts.GVR.GroupVersion(), name, t, opts.Log); err != nil {
			return append(results, res), err
		}
		created := time.Now()
		for {
			obj, err := ri.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return append(results, res), fmt.Errorf("reading StorageVersionMigration %s: %w", name, err)
			}
			res.Condition, res.Message = svmCondition(obj)
			switch res.Condition {
			case "Succeeded":
				opts.Log.Info("storage version migration succeeded", "resource", t.Name, "object", name)
			case "Failed":
				return append(results, res), fmt.Errorf("%w: %s (%s): %s", ErrSVMFailed, name, t.Name, res.Message)
			case "":
				if time.Since(created) > opts.StartTimeout {
					return append(results, res), fmt.Errorf("%w: %s has no status after %s: is kube-controller-manager running its storage-version-migrator controller?", ErrSVMFailed, name, opts.StartTimeout)
				}
			}
			if res.Condition == "Succeeded" {
				break
			}
			select {
			case <-ctx.Done():
				return append(results, res), ctx.Err()
			case <-time.After(opts.Poll):
			}
		}
		results = append(results, res)
	}
	return results, nil
}

// ensureSVM makes sure a StorageVersionMigration name exists that has not
// finished: one still pending or running (an interrupted kmsctl run) is
// waited for again; a finished one (Succeeded or Failed, from an earlier
// migration) is deleted and created anew, since the controller never runs
// a finished object twice.
func ensureSVM(ctx context.Context, ri dynamic.NamespaceableResourceInterface, gv schema.GroupVersion, name string, t Target, log *slog.Logger) error {
	old, err := ri.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("reading StorageVersionMigration %s: %w", name, err)
	default:
		if c, _ := svmCondition(old); c == "" || c == "Running" {
			log.Info("waiting for an existing storage version migration", "object", name, "condition", c)
			return nil
		}
		uid := old.GetUID()
		if err := ri.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting finished StorageVersionMigration %s: %w", name, err)
		}
		for {
			if _, err := ri.Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": gv.String(),
		"kind":       "StorageVersionMigration",
		"metadata":   map[string]any{"name": name, "labels": map[string]any{"app.kubernetes.io/managed-by": "kmsctl"}},
		"spec": map[string]any{
			"resource": map[string]any{"group": t.GVR.Group, "resource": t.GVR.Resource},
		},
	}}
	if _, err := ri.Create(ctx, obj, metav1.CreateOptions{FieldManager: FieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating StorageVersionMigration %s: %w", name, err)
	}
	log.Info("created storage version migration", "object", name, "resource", t.Name)
	return nil
}

// svmCondition returns the newest true condition among Succeeded, Failed
// and Running, and its message.
func svmCondition(obj *unstructured.Unstructured) (string, string) {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	var running bool
	var runningMsg string
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["status"] != "True" {
			continue
		}
		typ, _ := m["type"].(string)
		msg, _ := m["message"].(string)
		switch typ {
		case "Succeeded", "Failed":
			return typ, msg
		case "Running":
			running, runningMsg = true, msg
		}
	}
	if running {
		return "Running", runningMsg
	}
	return "", ""
}

func svmName(prefix string, t Target) string {
	n := strings.ReplaceAll(prefix+"-"+t.Name, ".", "-")
	if len(n) > 253 {
		n = n[:253]
	}
	return strings.Trim(n, "-")
}

package offline

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// serverFields are the metadata a new cluster assigns itself: kubectl
// apply of a manifest that holds them would fail or mislead.
var serverFields = []string{"resourceVersion", "uid", "creationTimestamp", "managedFields", "selfLink", "generation", "deletionTimestamp", "deletionGracePeriodSeconds"}

// Manifest turns a stored object (protobuf, as the apiserver stores
// built-in types, or JSON, as it stores custom resources) into a YAML
// manifest for kubectl apply into a new cluster: apiVersion and kind set,
// server-assigned metadata removed.
func Manifest(pt []byte) ([]byte, error) {
	var u map[string]any
	obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(pt, nil, nil)
	switch {
	case err == nil:
		if u, err = runtime.DefaultUnstructuredConverter.ToUnstructured(obj); err != nil {
			return nil, err
		}
		u["apiVersion"], u["kind"] = gvk.GroupVersion().String(), gvk.Kind
	case len(pt) > 0 && pt[0] == '{':
		var o unstructured.Unstructured
		if err := o.UnmarshalJSON(pt); err != nil {
			return nil, err
		}
		u = o.Object
	default:
		return nil, fmt.Errorf("decode stored object: %w", err)
	}
	if md, ok := u["metadata"].(map[string]any); ok {
		for _, f := range serverFields {
			delete(md, f)
		}
	}
	return yaml.Marshal(u)
}

// Dir writes manifests under a directory it creates 0700, one file 0600
// per object at <dir>/<etcd key under the prefix>.yaml, never replacing a
// file.
type Dir struct {
	root, prefix string
}

// NewDir creates dir, which must not exist, 0700. prefix is the
// apiserver's --etcd-prefix, cut from each key.
func NewDir(dir, prefix string) (*Dir, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	return &Dir{root: dir, prefix: strings.TrimSuffix(prefix, "/") + "/"}, nil
}

var errBadKey = errors.New("etcd key does not map to a safe file name")

// Write is an Options.Write: the manifest of pt at key's file.
func (d *Dir) Write(key string, pt []byte) error {
	rel, ok := strings.CutPrefix(key, d.prefix)
	if !ok {
		return fmt.Errorf("%w: %q", errBadKey, key)
	}
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." || strings.ContainsAny(p, "\x00\\") {
			return fmt.Errorf("%w: %q", errBadKey, key)
		}
	}
	m, err := Manifest(pt)
	if err != nil {
		return err
	}
	path := filepath.Join(append([]string{d.root}, parts...)...) + ".yaml"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(m); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

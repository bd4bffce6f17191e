package offline

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// storedSecret is a Secret as kube-apiserver stores it: protobuf, "k8s\0".
func storedSecret(t *testing.T) []byte {
	t.Helper()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "s1", Namespace: "ns", UID: "u-1", ResourceVersion: "42", Labels: map[string]string{"a": "b"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Data: map[string][]byte{"password": []byte("hunter2")},
		Type: corev1.SecretTypeOpaque,
	}
	enc := scheme.Codecs.EncoderForVersion(protobuf.NewSerializer(scheme.Scheme, scheme.Scheme), corev1.SchemeGroupVersion)
	var buf bytes.Buffer
	if err := enc.Encode(s, &buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(buf.Bytes(), []byte("k8s\x00")) {
		t.Fatal("not the protobuf storage form")
	}
	return buf.Bytes()
}

func TestManifest(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
		kind string
	}{
		{"protobuf", storedSecret(t), "Secret"},
		{"json custom resource", []byte(`{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w","uid":"x","resourceVersion":"3"},"spec":{"size":2}}`), "Widget"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Manifest(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			var u map[string]any
			if err := yaml.Unmarshal(m, &u); err != nil {
				t.Fatal(err)
			}
			md, _ := u["metadata"].(map[string]any)
			if u["kind"] != tt.kind || u["apiVersion"] == nil || md["name"] == nil {
				t.Fatalf("manifest:\n%s", m)
			}
			for _, f := range serverFields {
				if _, ok := md[f]; ok {
					t.Fatalf("manifest keeps metadata.%s:\n%s", f, m)
				}
			}
		})
	}
	if _, err := Manifest([]byte("k8s\x00garbage")); err == nil {
		t.Fatal("garbage decoded")
	}
	// The Secret round-trips through YAML into the same data.
	m, _ := Manifest(storedSecret(t))
	var s corev1.Secret
	if err := yaml.Unmarshal(m, &s); err != nil || string(s.Data["password"]) != "hunter2" || s.Labels["a"] != "b" {
		t.Fatalf("secret %+v (%v)", s, err)
	}
}

func TestDir(t *testing.T) {
	root := filepath.Join(t.TempDir(), "out")
	d, err := NewDir(root, "/registry")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewDir(root, "/registry"); err == nil {
		t.Fatal("an existing directory reused")
	}
	if err := d.Write("/registry/secrets/ns/s1", storedSecret(t)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "secrets", "ns", "s1.yaml")
	for path, want := range map[string]os.FileMode{root: 0o700, filepath.Join(root, "secrets"): 0o700, filepath.Join(root, "secrets", "ns"): 0o700, p: 0o600} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want %04o", path, st, err, want)
		}
	}
	if err := d.Write("/registry/secrets/ns/s1", storedSecret(t)); err == nil {
		t.Fatal("a manifest overwritten")
	}
	for _, key := range []string{"/other/secrets/ns/s", "/registry/secrets/../../x", "/registry/secrets//s", "/registry/a/./b"} {
		if err := d.Write(key, storedSecret(t)); !errors.Is(err, errBadKey) {
			t.Fatalf("%q: %v", key, err)
		}
	}
	b, _ := os.ReadFile(p)
	if !strings.Contains(string(b), "kind: Secret") {
		t.Fatalf("file:\n%s", b)
	}
}

package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Tools holds absolute paths of the binaries a cluster runs.
type Tools struct {
	Keywarden     string
	Kmsctl        string
	Etcd          string
	Etcdctl       string
	KubeAPIServer string
	Kubectl       string
	// KubeControllerManager runs only in the tests that need a controller
	// (the StorageVersionMigration one).
	KubeControllerManager string
}

const modulePath = "github.com/keywarden/keywarden"

// FindTools locates the binaries: keywarden and kmsctl in $KEYWARDEN_BIN_DIR
// (default <repo>/bin, from `make build`), the control plane in
// $KEYWARDEN_E2E_TOOLS_DIR (default <repo>/test/e2e/tools/bin, from
// `make e2e-tools`). The repository root is found by walking up from the
// working directory to keywarden's go.mod.
func FindTools() (Tools, error) {
	binDir := os.Getenv("KEYWARDEN_BIN_DIR")
	toolsDir := os.Getenv("KEYWARDEN_E2E_TOOLS_DIR")
	if binDir == "" || toolsDir == "" {
		root, err := RepoRoot()
		if err != nil {
			return Tools{}, fmt.Errorf("%w (or set KEYWARDEN_BIN_DIR and KEYWARDEN_E2E_TOOLS_DIR)", err)
		}
		if binDir == "" {
			binDir = filepath.Join(root, "bin")
		}
		if toolsDir == "" {
			toolsDir = filepath.Join(root, "test", "e2e", "tools", "bin")
		}
	}
	t := Tools{
		Keywarden:     filepath.Join(binDir, "keywarden"),
		Kmsctl:        filepath.Join(binDir, "kmsctl"),
		Etcd:          filepath.Join(toolsDir, "etcd"),
		Etcdctl:       filepath.Join(toolsDir, "etcdctl"),
		KubeAPIServer: filepath.Join(toolsDir, "kube-apiserver"),
		Kubectl:       filepath.Join(toolsDir, "kubectl"),

		KubeControllerManager: filepath.Join(toolsDir, "kube-controller-manager"),
	}
	// Every path is checked and made absolute, so a relative
	// KEYWARDEN_BIN_DIR or KEYWARDEN_E2E_TOOLS_DIR holds wherever a process
	// runs.
	all := []*string{&t.Keywarden, &t.Kmsctl, &t.Etcd, &t.Etcdctl, &t.KubeAPIServer, &t.Kubectl, &t.KubeControllerManager}
	var errs []error
	for _, p := range all {
		abs, err := filepath.Abs(*p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if fi, err := os.Stat(abs); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			errs = append(errs, fmt.Errorf("%s: not an executable file (run `make build e2e-tools`)", abs))
		}
		*p = abs
	}
	if err := errors.Join(errs...); err != nil {
		return Tools{}, err
	}
	return t, nil
}

// RepoRoot walks up from the working directory to the directory whose
// go.mod declares keywarden's module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		first, _, _ := bytes.Cut(b, []byte("\n"))
		if err == nil && string(bytes.TrimSpace(first)) == "module "+modulePath {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find keywarden's go.mod above the working directory")
		}
		dir = parent
	}
}

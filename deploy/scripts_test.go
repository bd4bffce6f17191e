package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestShellcheck keeps the kind scripts, which cannot run here (no Docker
// engine), and the release scripts clean under shellcheck, following their
// `source`s.
func TestShellcheck(t *testing.T) {
	sc := needTool(t, "shellcheck", "shellcheck")
	scripts, err := filepath.Glob("kind/*.sh")
	if err != nil || len(scripts) < 3 {
		t.Fatalf("kind scripts: %v %v", scripts, err)
	}
	args := []string{"-x"}
	for _, s := range scripts {
		args = append(args, filepath.Join("deploy", s))
	}
	release, err := filepath.Glob(filepath.Join(repoRoot, "hack", "release", "*.sh"))
	if err != nil || len(release) < 3 {
		t.Fatalf("release scripts: %v %v", release, err)
	}
	for _, s := range append(release, filepath.Join(repoRoot, "hack", "release", "tools", "build.sh")) {
		rel, err := filepath.Rel(repoRoot, s)
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, rel)
	}
	run(t, repoRoot, sc, args...)
}

// bashLib runs a function from kind/lib.sh with stdin.
func bashLib(t *testing.T, stdin, call string) string {
	t.Helper()
	cmd := exec.Command("bash", "-c", "set -euo pipefail; source kind/lib.sh; "+call)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", call, err, out)
	}
	return string(out)
}

// TestKindManifest checks the static pod kind-up.sh installs: the loaded
// image, never pulled, an image-ID annotation, and otherwise the manifest
// of deploy/static-pod unchanged.
func TestKindManifest(t *testing.T) {
	in := readFile(t, staticPod)
	out := bashLib(t, in, `kind_manifest keywarden:v9 sha256:0123abcd`)
	docs, err := decodeAll([]byte(out))
	if err != nil || len(docs) != 1 {
		t.Fatalf("kind_manifest output does not parse: %v\n%s", err, out)
	}
	pod := obj{m: docs[0].(map[string]any), where: "kind manifest"}
	for p, want := range map[string]string{
		"spec.containers.0.image":                                "keywarden:v9",
		"spec.containers.0.imagePullPolicy":                      "Never",
		"metadata.annotations.kind-up\\.keywarden\\.io/image-id": "",
	} {
		if strings.Contains(p, "annotations") {
			ann := pod.sub(t, "metadata.annotations").m
			if ann["kind-up.keywarden.io/image-id"] != "sha256:0123abcd" {
				t.Errorf("annotations = %v", ann)
			}
			continue
		}
		if got := pod.str(t, p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	orig := readDoc(t, staticPod)
	if got, want := len(strings.Split(out, "\n")), len(strings.Split(in, "\n"))+2; got != want {
		t.Errorf("kind_manifest changed more than image, pull policy and annotation: %d lines, want %d", got, want)
	}
	if a, b := pod.str(t, "spec.containers.0.args.0"), orig.str(t, "spec.containers.0.args.0"); a != b {
		t.Errorf("args changed: %q vs %q", a, b)
	}
}

func TestEncryptionReloads(t *testing.T) {
	metrics := `# HELP apiserver_encryption_config_controller_automatic_reloads_total [ALPHA] Total number of reload successes and failures of encryption configuration split by apiserver identity.
# TYPE apiserver_encryption_config_controller_automatic_reloads_total counter
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:ab",status="failure"} 4
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:ab",status="success"} 2
apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds{apiserver_id_hash="sha256:ab",status="success"} 1.7e+09
`
	if got := strings.TrimSpace(bashLib(t, metrics, "encryption_reloads")); got != "2" {
		t.Errorf("encryption_reloads = %q, want 2", got)
	}
	if got := strings.TrimSpace(bashLib(t, "", "encryption_reloads")); got != "0" {
		t.Errorf("encryption_reloads of nothing = %q, want 0", got)
	}
	if got := bashLib(t, "", "kms_v2_prefix keywarden"); got != "k8s:enc:kms:v2:keywarden:" {
		t.Errorf("kms_v2_prefix = %q", got)
	}
}

// TestNeedToolRequired re-runs TestShellcheck in a child test binary with an
// empty PATH: without KEYWARDEN_REQUIRE_TOOLS it skips, with it (or CI=true)
// it fails.
func TestNeedToolRequired(t *testing.T) {
	empty := t.TempDir()
	for _, c := range []struct {
		env  []string
		fail bool
	}{
		{nil, false},
		{[]string{requireToolsEnv + "=0"}, false},
		{[]string{requireToolsEnv + "=1"}, true},
		{[]string{"CI=true"}, true},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestShellcheck$", "-test.count=1", "-test.v")
		// The child runs TestShellcheck alone, so this test never re-enters
		// itself; its environment is only what is listed here.
		cmd.Env = append([]string{"PATH=" + empty, "HOME=" + empty}, c.env...)
		out, err := cmd.CombinedOutput()
		failed := err != nil
		if failed != c.fail {
			t.Errorf("env %v: failed=%v, want %v\n%s", c.env, failed, c.fail, out)
		}
		want := "--- SKIP: TestShellcheck"
		if c.fail {
			want = "--- FAIL: TestShellcheck"
		}
		if !strings.Contains(string(out), want) || !strings.Contains(string(out), "shellcheck not found") {
			t.Errorf("env %v: want %q and \"shellcheck not found\" in:\n%s", c.env, want, out)
		}
	}
}

// TestCIRequiresTools checks that .ci/run makes a missing tool fail the
// deploy tests and installs the Debian package of every tool they look up
// with needTool.
func TestCIRequiresTools(t *testing.T) {
	ci := readFile(t, filepath.Join(repoRoot, ".ci", "run"))
	if !regexp.MustCompile(`(?m)^export ` + requireToolsEnv + `=1\b`).MatchString(ci) {
		t.Errorf(".ci/run does not export %s=1", requireToolsEnv)
	}
	m := regexp.MustCompile(`(?m)^pkgs=\(([^)]*)\)`).FindStringSubmatch(ci)
	if m == nil {
		t.Fatal(".ci/run has no pkgs=(…) list")
	}
	installed := map[string]bool{}
	for _, p := range strings.Fields(m[1]) {
		installed[p] = true
	}
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, f := range files {
		for _, c := range regexp.MustCompile(`needTool\(t, "([^"]+)", "([^"]+)"\)`).FindAllStringSubmatch(readFile(t, f), -1) {
			calls++
			if !installed[c[2]] {
				t.Errorf("%s needs %s from Debian's %s package, which .ci/run does not install", f, c[1], c[2])
			}
		}
	}
	if calls < 3 {
		t.Errorf("found only %d needTool calls; the pattern is stale", calls)
	}
}

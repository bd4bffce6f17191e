// Package faults is keywarden's fault matrix: the real keywarden binary,
// on its real unix socket and HTTP endpoints, in front of a real keystore
// (a file keyset, SoftHSM2 over PKCS#11, a Vault dev server, local-kms for
// AWS KMS), with one fault injected at a time. It records what
// kube-apiserver and an operator would see, and keeps the table in
// docs/reliability.md equal to it:
//
//	go test ./test/faults/                  # fails if a cell changed
//	go test ./test/faults/ -args -update    # rewrites the table
//
// (KEYWARDEN_FAULTS_UPDATE=1 does what -update does.)
package faults

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", os.Getenv("KEYWARDEN_FAULTS_UPDATE") != "", "rewrite the fault table in docs/reliability.md")

// keywardenBin is the binary built for this run.
var keywardenBin string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run() // the matrix skips itself
	}
	dir, err := os.MkdirTemp("", "keywarden-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	keywardenBin = filepath.Join(dir, "keywarden")
	// The go on PATH: GOTOOLCHAIN, as the Makefile sets it, reaches it
	// through the environment.
	cmd := exec.Command("go", "build", "-o", keywardenBin, "github.com/keywarden/keywarden/cmd/keywarden")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build keywarden:", err)
		return 1
	}
	// Static credentials for the AWS SDK, in this process (the cold
	// ciphertexts and clock cells open the keystore here) and in every
	// keywarden it starts; nothing from this machine's ~/.aws.
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":           "AKIDKEYWARDENFAULTS",
		"AWS_SECRET_ACCESS_KEY":       "keywarden-faults",
		"AWS_SESSION_TOKEN":           "",
		"AWS_PROFILE":                 "",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "aws-credentials"),
		"AWS_EC2_METADATA_DISABLED":   "true",
	} {
		os.Setenv(k, v)
	}
	// SoftHSM reads SOFTHSM2_CONF once, and a process sees only the tokens
	// that existed when it loaded the module: make them all now.
	if err := setupSoftHSM(dir); err != nil {
		fmt.Fprintln(os.Stderr, "SoftHSM:", err)
		return 1
	}
	stopKMS, err := setupLocalKMS(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "local-kms:", err)
		return 1
	}
	defer stopKMS()
	stopVault := setupVault(dir)
	defer stopVault()
	return m.Run()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// logTo returns where a helper server's log goes: a file under dir.
func logTo(dir, name string) io.WriteCloser {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nopCloser{io.Discard}
	}
	return f
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Package cluster starts a real control plane on loopback for end-to-end
// tests, benchmarks and deploy checks: etcd (one or three members),
// keywarden as its own process on a temporary unix socket, and
// kube-apiserver configured with an EncryptionConfiguration, each a child
// process in its own process group.
//
// Every Start function takes a testing.TB and registers a t.Cleanup that
// stops what it started (SIGTERM to the process group, then SIGKILL) and
// waits for it, pass or fail; a child also gets SIGKILL if the test binary
// dies (Pdeathsig). Working directories live under os.TempDir with short
// names (unix socket paths are limited to 108 bytes) and are removed at
// cleanup, or kept and logged when the test failed or KEYWARDEN_E2E_KEEP=1.
//
// Binaries are found through Tools: keywarden and kmsctl in
// $KEYWARDEN_BIN_DIR or <repo>/bin, kube-apiserver, kubectl, etcd and
// etcdctl in $KEYWARDEN_E2E_TOOLS_DIR or <repo>/test/e2e/tools/bin (built by
// `make e2e-tools`).
//
// Stored values are read from etcd with etcdctl (no etcd client library)
// and decoded with ParseKMSv2, which checks the provider prefix and decodes
// kube-apiserver's KMS v2 EncryptedObject with internal/stored.
package cluster

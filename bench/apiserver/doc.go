// Package apiserver holds keywarden's apiserver-level benchmarks: a real
// kube-apiserver and etcd (started by test/e2e/cluster) writing and reading
// Secrets through each encryption provider, keywarden and the no-op floor
// plugin among them, and the cold start of an apiserver whose etcd holds
// many DEK seeds while keywarden's keystore is slow; and BenchmarkKmsctl,
// kmsctl migrate and audit over 10 000 Secrets.
//
// They are tests behind the e2e build tag, because the harness is made for
// tests, but they assert nothing about time: they measure, report (JSON and
// markdown into $KWBENCH_OUT) and fail only if something does not work.
//
//	make build e2e-tools
//	go test -tags e2e -run . -v -timeout 60m ./bench/apiserver
package apiserver

// Package apiserver holds keywarden's apiserver-level benchmarks: a real
// kube-apiserver and etcd (started by test/e2e/cluster) writing and reading
// Secrets through each encryption provider, keywarden and the no-op floor
// plugin among them, and the cold start of an apiserver whose etcd holds
// many DEK seeds while keywarden's keystore is slow; and BenchmarkKmsctl,
// kmsctl migrate and audit over 10 000 Secrets.
//
// They are tests behind the e2e build tag, because the harness is made for
// tests, but by default they assert nothing about time: they measure,
// report (JSON and markdown into $KWBENCH_OUT, and a PASS, FAIL or INFO
// line per acceptance gate, the gates bench shares with kwbench) and fail
// only if something does not work. KWBENCH_GATES=enforce makes a failed
// gate fail the test too.
//
//	make build e2e-tools
//	go test -tags e2e -run . -v -timeout 60m ./bench/apiserver
package apiserver

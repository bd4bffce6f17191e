// Package bench measures keywarden's hot path over a real KMS v2 unix socket,
// always against a floor measured in the same run.
//
// The floor (package bench/floor, run as kwfloor) is a no-op KMS v2 server
// registered through k8s.io/kms/pkg/service on the same kind of gRPC server
// and socket as keywarden: it copies bytes, so what it costs is the socket,
// gRPC and the protobuf, and anything keywarden costs beyond it is
// keywarden's own. Package bench/lab holds the benchmark-only servers: the
// keywarden service behind a keystore that can be slowed down and counted,
// and the per-call plugin it is compared with.
//
// Shared machines are noisy. Every figure is therefore a ratio to that floor,
// measured round by round with the targets interleaved (A B, B A, A B, …),
// and summarised as the median of the per-round ratios; absolute numbers are
// reported beside them, never instead of them. CPU time per call, read from
// /proc, is reported too: it moves far less with the machine's other load
// than throughput does.
//
// The pieces: Client dials a socket as kube-apiserver does (one connection
// unless told otherwise); Run drives a closed loop of concurrent calls and
// records every latency; Sweep, Recorder and Storm run the scenarios;
// WriteJSON, WriteMarkdown and WritePlots report them. The kwbench command
// (bench/cmd/kwbench) runs it all against separate server processes, and
// bench/apiserver does the same through a real kube-apiserver.
package bench

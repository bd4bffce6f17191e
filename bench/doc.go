// Package bench measures keywarden's hot path over a real KMS v2 unix socket,
// always against a floor measured in the same run.
//
// The floor is a no-op KMS v2 server (Floor) registered through
// k8s.io/kms/pkg/service on the same kind of gRPC server and socket as
// keywarden: it copies bytes, so what it costs is the socket, gRPC and the
// protobuf, and anything keywarden costs beyond it is keywarden's own.
//
// Shared machines are noisy. Every figure is therefore a ratio to that floor,
// measured round by round with the targets interleaved (A B, B A, A B, …),
// and summarised as the median of the per-round ratios; absolute numbers are
// reported beside them, never instead of them.
//
// The pieces: Client dials a socket as kube-apiserver does (one connection
// unless told otherwise); Run drives a closed loop of concurrent calls and
// records every latency; Sweep and Storm run the scenarios; WriteJSON,
// WriteMarkdown and WritePlots report them. PerCall is a benchmark-only
// service that calls its keystore on every request, the design keywarden's
// local KEK exists to avoid; it is here to be compared with, never shipped.
package bench

// Package soak is keywarden's soak benchmark (issue 13): kube-apiserver
// traffic through keywarden for an hour while its keystore, a Vault dev
// server, is frozen and resumed in turn, with keywarden's resident memory,
// goroutines and open file descriptors sampled, judged flat or not, and
// plotted. It is a test behind the e2e build tag, run by `make soak`, not
// by CI:
//
//	make soak                                # one hour
//	KEYWARDEN_SOAK_DURATION=10m make soak    # shorter
//
// See TestSoak for every setting, and docs/benchmarks.md ("Soak") for the
// results.
package soak

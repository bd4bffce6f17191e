// Package lab holds the keywarden-side servers the benchmarks drive, kept
// apart from package bench so that they carry none of the load generator's
// or the plots' weight into their own processes (their memory is
// measured). The floor is in package floor, which is lighter still.
//
//   - Server, keywarden's kms.Service wired as cmd/keywarden wires it, with
//     its keystore behind keystoretest.Spy (injected latency, call counts);
//   - PerCall, a BENCHMARK-ONLY plugin that calls its keystore on every
//     request, to show what keywarden's local KEK saves.
package lab

// Package outage holds the keystore-outage scenario of the e2e suite
// (docs/e2e.md, TestKeystoreOutage). It is a package of its own so that
// `go test ./test/e2e/...` runs it beside test/e2e's scenarios: it spends
// most of its time waiting out the outage.
package outage

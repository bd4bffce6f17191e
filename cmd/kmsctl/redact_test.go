package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestURIsRedacted runs every kmsctl path that prints a keystore URI (keys
// errors and confirmations, rotate's plan, summary, hints, errors and
// state file, --nodes errors) with a secret in the URI's query, and checks
// that the secret never shows while the URI itself does (redacted). The
// file keystore ignores a query, so these URIs open.
func TestURIsRedacted(t *testing.T) {
	const secret = "S3CRET-pin-4711"
	with := func(uri string) string { return uri + "?pin-value=" + secret + "&token=" + secret }
	check := func(t *testing.T, what string, outs ...string) {
		t.Helper()
		all := strings.Join(outs, "\n")
		if strings.Contains(all, secret) {
			t.Fatalf("%s shows the secret:\n%s", what, all)
		}
		if !strings.Contains(all, "pin-value=REDACTED") {
			t.Fatalf("%s printed no (redacted) URI, so it checks nothing:\n%s", what, all)
		}
	}

	t.Run("keys", func(t *testing.T) {
		uri := with(newKeyset(t))
		r := run(t, "", false, "keys", "disable", "--keystore", uri, "--force", "tink:9:nope")
		check(t, "keys disable of an unknown version", r.stdout, r.stderr)
		old := primary(t, uri)
		extra := addKey(t, uri)
		r = run(t, "", false, "keys", "promote", "--keystore", uri, "--yes", extra)
		if r.code != 0 {
			t.Fatalf("keys promote: %+v", r)
		}
		check(t, "keys promote", r.stdout, r.stderr)
		if r := run(t, "", false, "keys", "disable", "--keystore", uri, "--force", old); r.code != 0 {
			t.Fatalf("keys disable: %+v", r)
		}
		r = run(t, "", false, "keys", "destroy", "--keystore", uri, "--force", "--yes", old)
		if r.code != 0 {
			t.Fatalf("keys destroy: %+v", r)
		}
		check(t, "keys destroy", r.stdout, r.stderr)
	})

	t.Run("rotate", func(t *testing.T) {
		nodes := haNodes(t, 2)
		for i := range nodes {
			nodes[i].uri = with(nodes[i].uri)
		}
		dir := t.TempDir()
		r := run(t, "", false, haArgs(dir, nodes)...)
		raw, err := os.ReadFile(filepath.Join(dir, "rotate.json"))
		if err != nil {
			t.Fatalf("no state file: %v (%+v)", err, r)
		}
		check(t, "rotate", r.stdout, r.stderr)
		check(t, "the rotate state file", string(raw))
		// --resume with the same URIs matches the (redacted) record.
		r = run(t, "", false, append(haArgs(dir, nodes), "--resume")...)
		if strings.Contains(r.stderr, "records keystore") || strings.Contains(r.stderr, "records --nodes") {
			t.Fatalf("--resume with the same URIs: %+v", r)
		}
		check(t, "rotate --resume", r.stdout, r.stderr)
		// --resume with another keystore: the error names both, redacted.
		other := with(newKeyset(t))
		args := haArgs(dir, nodes)
		args[2] = other
		r = run(t, "", false, append(args, "--resume")...)
		if !strings.Contains(r.stderr, "records keystore") {
			t.Fatalf("--resume with another keystore: %+v", r)
		}
		check(t, "rotate --resume mismatch", r.stdout, r.stderr)
	})

	t.Run("nodes", func(t *testing.T) {
		nodes := haNodes(t, 1)
		uri := with(nodes[0].uri)
		missing := with("file://" + filepath.Join(t.TempDir(), "none.json"))
		for name, list := range map[string]string{"unopenable": missing, "twice": uri} {
			dir := t.TempDir()
			args := []string{"rotate", "--keystore", uri, "--socket", nodes[0].sock, "--nodes", list, "--node-sockets", nodes[0].sock,
				"--etcd-endpoints", "http://127.0.0.1:1", "--kubeconfig", filepath.Join(dir, "none"),
				"--state-file", filepath.Join(dir, "rotate.json"), "--yes"}
			r := run(t, "", false, args...)
			if r.code == 0 {
				t.Fatalf("%s --nodes: %+v", name, r)
			}
			check(t, name+" --nodes", r.stdout, r.stderr)
		}
	})
}

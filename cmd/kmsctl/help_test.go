package main

import (
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore/awskms"
	"github.com/keywarden/keywarden/keystore/azurekv"
	"github.com/keywarden/keywarden/keystore/gcpkms"
	"github.com/keywarden/keywarden/keystore/vault"
)

// Every --keystore flag names every scheme keystore/byuri opens.
func TestKeystoreHelpNamesEveryScheme(t *testing.T) {
	schemes := []string{"file://", "pkcs11:", awskms.Scheme + "://", gcpkms.Scheme + "://", azurekv.Scheme + "://", vault.Scheme + "://"}
	for _, args := range [][]string{{"keys", "--help"}, {"keys", "list", "--help"}, {"rotate", "--help"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			r := run(t, "", false, args...)
			if r.code != 0 {
				t.Fatalf("%v: exit %d: %s", args, r.code, r.stderr)
			}
			help := r.stdout + r.stderr
			for _, s := range schemes {
				if !strings.Contains(help, s) {
					t.Errorf("%v: help does not name %s:\n%s", args, s, help)
				}
			}
		})
	}
}

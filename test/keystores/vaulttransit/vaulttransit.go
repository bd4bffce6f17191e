// Package vaulttransit sets up a Vault Transit key the way
// docs/keystores/vault.md tells an operator to, for the suites that run
// keywarden against a real Vault dev server: the e2e suite, its outage test
// and the no-secret-in-logs test. The policy is the page's, word for word
// (TestPolicyIsTheDocs).
package vaulttransit

import (
	"fmt"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"
)

// Key is the Transit key's name, as in the docs.
const Key = "keywarden"

// Policy is keywarden's least-privilege policy for Key under mount. With
// manage, it also holds the paths `kmsctl keys` needs (rotate, config,
// trim), which the docs say to give to an operator's token instead: the
// suites that run kmsctl with keywarden's token ask for them.
func Policy(mount string, manage bool) string {
	p := fmt.Sprintf(`path "%[1]s/encrypt/%[2]s" { capabilities = ["update"] }
path "%[1]s/decrypt/%[2]s" { capabilities = ["update"] }
path "%[1]s/keys/%[2]s"    { capabilities = ["read"] }
`, mount, Key)
	if manage {
		for _, sub := range []string{"rotate", "config", "trim"} {
			p += fmt.Sprintf("path \"%s/keys/%s/%s\" { capabilities = [\"update\"] }\n", mount, Key, sub)
		}
	}
	return p
}

// Setup mounts a Transit engine at mount, creates Key there (aes256-gcm96)
// and writes Policy(mount, manage) as the policy named policy. Teardown
// undoes it.
func Setup(admin *vaultapi.Client, mount, policy string, manage bool) error {
	if err := admin.Sys().Mount(mount, &vaultapi.MountInput{Type: "transit"}); err != nil {
		return fmt.Errorf("mount transit: %w", err)
	}
	if _, err := admin.Logical().Write(mount+"/keys/"+Key, map[string]any{"type": "aes256-gcm96"}); err != nil {
		return fmt.Errorf("create transit key: %w", err)
	}
	if err := admin.Sys().PutPolicy(policy, Policy(mount, manage)); err != nil {
		return fmt.Errorf("put policy: %w", err)
	}
	return nil
}

// Teardown unmounts the engine and deletes the policy, ignoring errors (a
// test's cleanup: the dev server may be gone already).
func Teardown(admin *vaultapi.Client, mount, policy string) {
	_ = admin.Sys().Unmount(mount)
	_ = admin.Sys().DeletePolicy(policy)
}

// hclBlock returns the first ```hcl block of a Markdown page.
func hclBlock(page string) (string, bool) {
	_, rest, ok := strings.Cut(page, "```hcl\n")
	if !ok {
		return "", false
	}
	block, _, ok := strings.Cut(rest, "```")
	return block, ok
}

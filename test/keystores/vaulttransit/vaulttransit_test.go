package vaulttransit

import (
	"os"
	"strings"
	"testing"
)

// TestPolicyIsTheDocs: the policy the suites run keywarden with is the one
// docs/keystores/vault.md gives operators, and the paths the page says
// `kmsctl keys` needs are the ones manage adds.
func TestPolicyIsTheDocs(t *testing.T) {
	b, err := os.ReadFile("../../../docs/keystores/vault.md")
	if err != nil {
		t.Fatal(err)
	}
	block, ok := hclBlock(string(b))
	if !ok {
		t.Fatal("docs/keystores/vault.md has no hcl block")
	}
	if got := Policy("transit", false); got != block {
		t.Fatalf("Policy(transit) =\n%s\ndocs/keystores/vault.md's first hcl block =\n%s", got, block)
	}
	extra := strings.TrimPrefix(Policy("transit", true), block)
	for _, sub := range []string{"rotate", "config", "trim"} {
		if !strings.Contains(extra, "transit/keys/keywarden/"+sub+"\"") {
			t.Errorf("manage policy lacks %s:\n%s", sub, extra)
		}
		if !strings.Contains(string(b), "`transit/keys/keywarden/"+sub+"`") && !strings.Contains(string(b), "`…/"+sub+"`") {
			t.Errorf("docs/keystores/vault.md does not name the %s path kmsctl keys needs", sub)
		}
	}
}

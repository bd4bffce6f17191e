package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"regexp"
	"slices"
	"testing"
)

// docs/configuration.md documents every flag, and nothing that is not one.
func TestConfigurationDocMatchesFlags(t *testing.T) {
	var usage bytes.Buffer
	if _, err := parseFlags([]string{"-h"}, &usage); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(usage.String(), -1) {
		flags = append(flags, m[1])
	}
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	// The flag table's rows start with | `--name` |.
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `--([a-z0-9-]+)` \\|").FindAllSubmatch(doc, -1) {
		documented = append(documented, string(m[1]))
	}
	slices.Sort(flags)
	slices.Sort(documented)
	if len(flags) < 10 {
		t.Fatalf("found only %d flags in the usage text: %q", len(flags), usage.String())
	}
	if !slices.Equal(flags, documented) {
		t.Fatalf("flags and docs/configuration.md differ:\nflags: %v\ndocs:  %v", flags, documented)
	}
}

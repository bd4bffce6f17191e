package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// docCommand is one kmsctl command line found in a document.
type docCommand struct {
	where string
	line  string
	args  []string
}

var (
	reFence = regexp.MustCompile("^\\s*```")
	// kmsctl (possibly with a directory) in command position: first on
	// the line, after a command separator or $(, after sudo, after the
	// options of setpriv, or as the command of kubectl/docker exec.
	reKmsctl = regexp.MustCompile(`(?:^|[;&|(]\s*|\bsudo\s+|--clear-groups\s+|\s--\s+|\bexec\s+[\w.-]+\s+)(?:\S*/)?kmsctl\s+(.*)$`)
	// <placeholder text>, replaced by one word.
	rePlaceholder = regexp.MustCompile(`<[^<>]*>`)
)

// docCommands returns the kmsctl command lines in the fenced code blocks
// of a Markdown file, with backslash continuations joined and the line cut
// at a comment, pipe, redirection or command separator.
func docCommands(t *testing.T, file string) []docCommand {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []docCommand
	in := false
	var pending strings.Builder
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if reFence.MatchString(l) {
			in = !in
			pending.Reset()
			continue
		}
		if !in {
			continue
		}
		l = strings.TrimSpace(l)
		if c, ok := strings.CutSuffix(l, `\`); ok {
			pending.WriteString(c + " ")
			continue
		}
		pending.WriteString(l)
		full := pending.String()
		pending.Reset()
		if j := strings.Index(full, "#"); j == 0 || (j > 0 && full[j-1] == ' ') {
			full = strings.TrimSpace(full[:j]) // a shell comment
		}
		m := reKmsctl.FindStringSubmatch(rePlaceholder.ReplaceAllString(full, "PLACEHOLDER"))
		if m == nil || strings.Contains(full, "kmsctl:") {
			continue
		}
		rest := m[1]
		for _, sep := range []string{" | ", " || ", " && ", " ; ", " > ", " 2>", ")", "`"} {
			if j := strings.Index(rest, sep); j >= 0 {
				rest = rest[:j]
			}
		}
		args, ok := shellWords(rest)
		if !ok {
			t.Errorf("%s:%d: cannot split %q", file, i+1, rest)
			continue
		}
		out = append(out, docCommand{where: file + ":" + strconv.Itoa(i+1), line: full, args: args})
	}
	return out
}

// shellWords splits like a POSIX shell does for plain words and single or
// double quotes (no expansions).
func shellWords(s string) ([]string, bool) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, false
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, true
}

// TestDocsKmsctlCommandLines: every kmsctl command line in the README's and
// docs' code blocks names a runnable subcommand, with flags it has, the
// flags it requires and no forbidden combination: what the operator
// copies works as far as kmsctl's own parsing goes. Synopsis lines
// (`keys init|list|…`, `[flags]`) are not command lines and are skipped.
func TestDocsKmsctlCommandLines(t *testing.T) {
	files := []string{"../../README.md"}
	for _, pat := range []string{"../../docs/*.md", "../../docs/keystores/*.md"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	n := 0
	for _, f := range files {
		for _, c := range docCommands(t, f) {
			if strings.ContainsAny(strings.Join(c.args, " "), "|[") {
				continue // a synopsis
			}
			n++
			var out bytes.Buffer
			g := &globals{stdout: &out, stderr: &out, now: time.Now}
			root := newRoot(g)
			cmd, rest, err := root.Find(c.args)
			if err != nil || cmd == root || !cmd.Runnable() {
				t.Errorf("%s: %q: not a kmsctl command (%v)", c.where, c.line, err)
				continue
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Errorf("%s: %q: %v", c.where, c.line, err)
				continue
			}
			if err := cmd.ValidateRequiredFlags(); err != nil {
				t.Errorf("%s: %q: %v", c.where, c.line, err)
			}
			if err := cmd.ValidateFlagGroups(); err != nil {
				t.Errorf("%s: %q: %v", c.where, c.line, err)
			}
			if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
				t.Errorf("%s: %q: %v", c.where, c.line, err)
			}
		}
	}
	if n < 20 {
		t.Errorf("only %d kmsctl command lines found in the docs; the extraction is broken", n)
	}
	t.Logf("%d kmsctl command lines checked", n)
}

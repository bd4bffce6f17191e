package deploy

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Markdown link syntax the docs use: inline links and images, and reference
// definitions. Autolinks and bare URLs are never relative.
var (
	inlineLink = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	refLink    = regexp.MustCompile(`(?m)^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$`)
	htmlAnchor = regexp.MustCompile(`<a\s+(?:id|name)="([^"]+)"`)
	codeSpan   = regexp.MustCompile("`+[^`]*`+")
	heading    = regexp.MustCompile(`^#{1,6}\s+(.+?)\s*#*\s*$`)
	linkText   = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// markdownFiles lists the repository's Markdown files, leaving out hidden
// directories (.git, .github and the Vault build's gitignored copies) and
// build output.
func markdownFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && p != repoRoot && (strings.HasPrefix(name, ".") || name == "bin" || name == "dist" || name == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(name, ".md") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// outsideFences returns a Markdown file's lines with those of fenced code
// blocks (and the fences) blanked, so line numbers still match the file.
func outsideFences(src string) []string {
	var out []string
	fence := ""
	for _, line := range strings.Split(src, "\n") {
		trim := strings.TrimSpace(line)
		switch {
		case fence == "" && (strings.HasPrefix(trim, "```") || strings.HasPrefix(trim, "~~~")):
			fence = trim[:3]
			line = ""
		case fence != "":
			if strings.HasPrefix(trim, fence) {
				fence = ""
			}
			line = ""
		}
		out = append(out, line)
	}
	return out
}

// proseLines is outsideFences with inline code spans blanked as well, so a
// link written as an example in code is not taken for one.
func proseLines(src string) []string {
	lines := outsideFences(src)
	for i, l := range lines {
		lines[i] = codeSpan.ReplaceAllString(l, "")
	}
	return lines
}

// markdownAnchors returns the anchors GitHub gives a file's headings
// (repeated headings get -1, -2, ...) and its explicit <a id> anchors.
func markdownAnchors(src string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, line := range outsideFences(src) {
		for _, m := range htmlAnchor.FindAllStringSubmatch(line, -1) {
			anchors[m[1]] = true
		}
		m := heading.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		a := githubAnchor(linkText.ReplaceAllString(m[1], "$1"))
		if n := seen[a]; n > 0 {
			anchors[a+"-"+strconv.Itoa(n)] = true
		} else {
			anchors[a] = true
		}
		seen[a]++
	}
	return anchors
}

// TestDocLinks checks every relative link in the repository's Markdown: the
// file or directory it names exists, and an anchor into a Markdown file (or
// into the same file) names one of its headings. A renamed heading or a moved
// document fails here instead of leaving a reader at a dead link.
func TestDocLinks(t *testing.T) {
	files := markdownFiles(t)
	if len(files) < 20 {
		t.Fatalf("found only %d Markdown files under %s", len(files), repoRoot)
	}
	anchorsOf := map[string]map[string]bool{}
	anchors := func(p string) (map[string]bool, error) {
		if a, ok := anchorsOf[p]; ok {
			return a, nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		anchorsOf[p] = markdownAnchors(string(b))
		return anchorsOf[p], nil
	}
	checked := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range proseLines(string(b)) {
			var targets []string
			for _, m := range inlineLink.FindAllStringSubmatch(line, -1) {
				targets = append(targets, m[1])
			}
			for _, m := range refLink.FindAllStringSubmatch(line, -1) {
				targets = append(targets, m[1])
			}
			for _, target := range targets {
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				checked++
				where := filepath.ToSlash(strings.TrimPrefix(f, repoRoot+string(filepath.Separator)))
				path, frag, _ := strings.Cut(target, "#")
				dest := f
				if path != "" {
					dest = filepath.Join(filepath.Dir(f), filepath.FromSlash(path))
					if _, err := os.Stat(dest); err != nil {
						t.Errorf("%s:%d: link %q: %s does not exist", where, i+1, target, path)
						continue
					}
				}
				if frag == "" || !strings.HasSuffix(dest, ".md") {
					continue
				}
				a, err := anchors(dest)
				if err != nil {
					t.Errorf("%s:%d: link %q: %v", where, i+1, target, err)
					continue
				}
				if !a[frag] {
					t.Errorf("%s:%d: link %q: no heading with anchor #%s", where, i+1, target, frag)
				}
			}
		}
	}
	if checked < 100 {
		t.Fatalf("checked only %d relative links; the link patterns no longer match the docs", checked)
	}
	t.Logf("%d relative links in %d Markdown files", checked, len(files))
}

// TestDocLinksCatchBreakage makes sure the checks above can fail: a dead
// file, a dead anchor and a link inside code are told apart.
func TestDocLinksCatchBreakage(t *testing.T) {
	src := "# Top\n\n## Step `one`: a [link](x.md)\n\n## Top\n\n<a id=\"here\"></a>\n\n```sh\n[no](nowhere.md)\n```\n\nsee `[no](nowhere.md)` and [yes](#top-1)\n"
	a := markdownAnchors(src)
	for _, want := range []string{"top", "step-one-a-link", "top-1", "here"} {
		if !a[want] {
			t.Errorf("anchor %q missing from %v", want, a)
		}
	}
	if a["top-2"] {
		t.Errorf("anchor top-2 should not exist: %v", a)
	}
	var found []string
	for _, line := range proseLines(src) {
		for _, m := range inlineLink.FindAllStringSubmatch(line, -1) {
			found = append(found, m[1])
		}
	}
	if strings.Join(found, " ") != "x.md #top-1" {
		t.Errorf("links outside code = %q, want [x.md #top-1]", found)
	}
}

package byuri

import (
	"errors"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/keystore"
)

// uriRow is one row of docs/configuration.md's keystore URI table.
type uriRow struct {
	form     string
	examples []string
}

var reCode = regexp.MustCompile("`([^`]+)`")

// docURIRows reads the table under "## Keystore URIs" in
// docs/configuration.md: | form | example | keystore |.
func docURIRows(t *testing.T) []uriRow {
	t.Helper()
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Keystore URIs\n")
	if !ok {
		t.Fatal("docs/configuration.md has no \"## Keystore URIs\" section")
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	var rows []uriRow
	header := false
	for _, l := range strings.Split(sec, "\n") {
		if !strings.HasPrefix(l, "|") {
			continue
		}
		cells := strings.Split(strings.Trim(l, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		switch {
		case len(cells) != 3:
			t.Fatalf("keystore URI table row has %d cells, want 3 (form | example | keystore): %q", len(cells), l)
		case cells[0] == "form":
			if cells[1] != "example" {
				t.Fatalf("keystore URI table header is %q, want | form | example | keystore |", l)
			}
			header = true
			continue
		case strings.HasPrefix(cells[0], "---"):
			continue
		}
		form := reCode.FindStringSubmatch(cells[0])
		var ex []string
		for _, m := range reCode.FindAllStringSubmatch(cells[1], -1) {
			ex = append(ex, m[1])
		}
		if form == nil || len(ex) == 0 {
			t.Fatalf("keystore URI table row needs a `form` and at least one `example`: %q", l)
		}
		rows = append(rows, uriRow{form: form[1], examples: ex})
	}
	if !header || len(rows) == 0 {
		t.Fatal("no | form | example | keystore | table under \"## Keystore URIs\"")
	}
	return rows
}

// schemeOf is the scheme of a URI, as Open dispatches on it.
func schemeOf(uri string) string {
	s, _, _ := strings.Cut(uri, ":")
	return s
}

// built reports whether this build has the backend of a scheme.
func built(scheme string) bool {
	switch scheme {
	case "file":
		return true
	case "pkcs11":
		return hasPKCS11
	case schemeAwskms:
		return hasAWS
	case schemeGcpkms:
		return hasGCP
	case schemeAzurekv:
		return hasAzure
	case schemeVault:
		return hasVault
	}
	return false
}

// TestConfigurationDocURIs: docs/configuration.md has one row for every
// scheme Open accepts and none for a scheme it does not, the flag help's
// URIForms names every scheme, and every example in the table parses as
// Open parses it (CheckURI: nothing is opened). An example may fail only for
// a reason the table states: the backend is left out of this build, or the
// PKCS#11 module-path it names is not installed on this machine.
func TestConfigurationDocURIs(t *testing.T) {
	rows := docURIRows(t)
	var documented []string
	for _, r := range rows {
		s := schemeOf(r.form)
		if slices.Contains(documented, s) {
			t.Errorf("scheme %q has two rows in docs/configuration.md", s)
		}
		documented = append(documented, s)
	}
	slices.Sort(documented)
	if want := Schemes(); !slices.Equal(documented, want) {
		t.Errorf("docs/configuration.md documents schemes %v; Open accepts %v", documented, want)
	}
	if len(Schemes()) < 6 {
		t.Errorf("Schemes() = %v: fewer than the six keystores", Schemes())
	}
	for _, s := range Schemes() {
		if !strings.Contains(URIForms, s+":") {
			t.Errorf("URIForms (the --keystore help) does not name scheme %q", s)
		}
	}

	for _, r := range rows {
		for _, ex := range r.examples {
			if s := schemeOf(ex); s != schemeOf(r.form) {
				t.Errorf("example %s is in the row of %s", ex, r.form)
				continue
			}
			err := CheckURI(ex)
			switch {
			case err == nil:
				if !built(schemeOf(ex)) {
					t.Errorf("%s parsed in a build without its backend", ex)
				}
			case !errors.Is(err, keystore.ErrConfig):
				t.Errorf("%s: %v (not ErrConfig)", ex, err)
			case !built(schemeOf(ex)):
				t.Logf("%s: backend not in this build: %v", ex, err)
			case schemeOf(ex) == "pkcs11" && moduleMissing(ex, err):
				t.Logf("%s: its module is not installed here: %v", ex, err)
			default:
				t.Errorf("documented example %s does not parse: %v", ex, err)
			}
		}
	}
}

// moduleMissing reports whether err is the parser's refusal of a pkcs11
// URI's module-path, and that path really is not a file here.
func moduleMissing(uri string, err error) bool {
	_, q, _ := strings.Cut(uri, "?")
	v, perr := url.ParseQuery(q)
	mod := v.Get("module-path")
	if perr != nil || mod == "" || !strings.Contains(err.Error(), "module-path") {
		return false
	}
	fi, serr := os.Stat(mod)
	return serr != nil || !fi.Mode().IsRegular()
}

// TestCheckURIOpensNothing: CheckURI refuses what Open's parsers refuse and
// accepts a file URI whose keyset does not exist (Open would fail reading
// it), so it parses without opening.
func TestCheckURIOpensNothing(t *testing.T) {
	missing := "file://" + t.TempDir() + "/no-such-keyset.json"
	if err := CheckURI(missing); err != nil {
		t.Errorf("CheckURI(%s) = %v, want nil: it must not read the keyset", missing, err)
	}
	for _, bad := range []string{
		"",
		"no-scheme",
		"ftp://example.com/key",
		"file://host/etc/keyset.json",
		"file:relative/keyset.json",
		schemeGcpkms + "://projects/p/locations/l/keyRings/r",
		schemeAwskms + "://arn:aws:s3:::bucket",
		schemeAzurekv + "://v.vault.azure.net/secrets/k",
		schemeVault + "://vault.example.com:8200/transit/keys/k",
		"pkcs11:token=t?module-path=/nonexistent/module.so&pin-value=1",
	} {
		err := CheckURI(bad)
		if err == nil {
			t.Errorf("CheckURI(%q) = nil, want an error", bad)
			continue
		}
		if !errors.Is(err, keystore.ErrConfig) {
			t.Errorf("CheckURI(%q) = %v, want ErrConfig", bad, err)
		}
	}
}

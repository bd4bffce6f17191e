package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/keywarden/keywarden/internal/follow"
)

const (
	alertsFile    = "monitoring/alerts.yaml"
	dashboardFile = "monitoring/grafana-dashboard.json"
)

// apiserverMetrics are the kube-apiserver metrics the alerts and the dashboard
// may use, with whether each is a histogram. TestAPIServerMetricsAllowlist
// checks every name against kube-apiserver's source at the version the e2e
// suite runs; the e2e tests also find them on a live kube-apiserver.
var apiserverMetrics = map[string]bool{
	"apiserver_envelope_encryption_kms_operations_latency_seconds":   true,
	"apiserver_envelope_encryption_key_id_hash_total":                false,
	"apiserver_envelope_encryption_invalid_key_id_from_status_total": false,
	"apiserver_envelope_encryption_dek_source_cache_size":            false,
	"apiserver_storage_transformation_operations_total":              false,
	"apiserver_storage_transformation_duration_seconds":              true,
	"apiserver_encryption_config_controller_automatic_reloads_total": false,
}

// promTargetMetrics are made by Prometheus itself, not by a target.
var promTargetMetrics = map[string]bool{"up": true}

// allowedSeries expands apiserverMetrics into series names.
func allowedSeries() map[string]bool {
	out := map[string]bool{}
	for name, hist := range apiserverMetrics {
		if hist {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				out[name+s] = true
			}
		} else {
			out[name] = true
		}
	}
	return out
}

// PromQL words that are not metric names.
var promqlWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true,
	"inf": true, "Inf": true, "nan": true, "NaN": true,
}

var (
	reString   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	reBraces   = regexp.MustCompile(`\{[^{}]*\}`)
	reBrackets = regexp.MustCompile(`\[[^\[\]]*\]`)
	reGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	reVar      = regexp.MustCompile(`\$\{?\w+\}?`)
	reIdent    = regexp.MustCompile(`\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(\s*\()?`)
)

// metricNames returns the metric names a PromQL expression selects: every
// identifier that is not a function call, a keyword, a label name in a
// matcher or grouping, a string, a duration or a Grafana variable.
func metricNames(expr string) []string {
	e := reString.ReplaceAllString(expr, `""`)
	e = reBraces.ReplaceAllString(e, "")
	e = reBrackets.ReplaceAllString(e, "")
	e = reGrouping.ReplaceAllString(e, " ")
	e = reVar.ReplaceAllString(e, " ")
	var names []string
	for _, m := range reIdent.FindAllStringSubmatch(e, -1) {
		if m[1] != "" || promqlWords[m[0]] {
			continue // a function call or a keyword
		}
		if !slices.Contains(names, m[0]) {
			names = append(names, m[0])
		}
	}
	sort.Strings(names)
	return names
}

func TestMetricNamesParser(t *testing.T) {
	tests := []struct {
		name, expr string
		want       []string
	}{
		{"selector", `up{job="keywarden"} == 0`, []string{"up"}},
		{"function and grouping", `sum by (instance, grpc_method) (rate(keywarden_grpc_server_handled_total{grpc_code!="OK"}[5m]))`, []string{"keywarden_grpc_server_handled_total"}},
		{"histogram quantile", `histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"$instance"}[$__rate_interval])))`, []string{"a_bucket"}},
		{"binary op with on", `a / on (instance) group_left (version) b > 0.5 and c`, []string{"a", "b", "c"}},
		{"time and numbers", `time() - min_over_time(timestamp(k)[91d:1d]) > 90 * 86400`, []string{"k"}},
		{"label named like a metric", `sum by (apiserver_id_hash) (m{apiserver_id_hash="x"})`, []string{"m"}},
		{"offset", `rate(m[5m] offset 1h)`, []string{"m"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := metricNames(tt.expr); !slices.Equal(got, tt.want) {
				t.Errorf("metricNames(%q) = %q, want %q", tt.expr, got, tt.want)
			}
		})
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	decodeStrict(t, alertsFile, b, &rf)
	return rf
}

// alertExprs maps "alert NAME" to its expression.
func alertExprs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			out["alert "+r.Alert] = r.Expr
		}
	}
	return out
}

type dashboard struct {
	Panels []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

var reLabelValues = regexp.MustCompile(`^label_values\((.*),\s*\w+\)$`)

// dashboardExprs maps "panel TITLE #i" (and template variables) to PromQL.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range d.Panels {
		for i, tg := range p.Targets {
			out[fmt.Sprintf("panel %q #%d", p.Title, i)] = tg.Expr
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		m := reLabelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(EXPR, LABEL)", v.Name, q.Query)
		}
		out["variable "+v.Name] = m[1]
	}
	if len(out) < 10 {
		t.Fatalf("only %d queries in the dashboard", len(out))
	}
	return out
}

// TestAlertRules runs promtool: the rules load, and the unit tests in
// monitoring/*_test.yaml pass (each alert fires on the series it is meant
// for, and not on a healthy plugin). Every alert has a severity, a summary
// and a runbook anchor that exists in docs/operations.md.
func TestAlertRules(t *testing.T) {
	promtool := needTool(t, "promtool", "prometheus")
	run(t, ".", promtool, "check", "rules", alertsFile)
	// The example scrape configuration (credential files need not exist).
	run(t, ".", promtool, "check", "config", "--syntax-only", "monitoring/prometheus.yml")
	tests, err := filepath.Glob("monitoring/*_test.yaml")
	if err != nil || len(tests) == 0 {
		t.Fatalf("no rule unit tests: %v", err)
	}
	run(t, ".", promtool, append([]string{"test", "rules"}, tests...)...)

	ops, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := markdownAnchors(string(ops))
	tested, err := os.ReadFile(tests[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tests[1:] {
		b, _ := os.ReadFile(f)
		tested = append(tested, b...)
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: needs a severity label and a summary", r.Alert)
			}
			rb := r.Annotations["runbook"]
			if a, ok := strings.CutPrefix(rb, "docs/operations.md#"); !ok || !anchors[a] {
				t.Errorf("alert %s: runbook %q is not a heading of docs/operations.md", r.Alert, rb)
			}
			if !bytes.Contains(tested, []byte("alertname: "+r.Alert+"\n")) {
				t.Errorf("alert %s has no promtool unit test", r.Alert)
			}
		}
	}
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	var b strings.Builder
	for _, r := range h {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// TestDashboardPromQL has promtool parse every dashboard query, as recording
// rules with Grafana's variables filled in.
func TestDashboardPromQL(t *testing.T) {
	promtool := needTool(t, "promtool", "prometheus")
	exprs := dashboardExprs(t)
	keys := make([]string, 0, len(exprs))
	for k := range exprs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	r := strings.NewReplacer("$__rate_interval", "5m", "$__range", "1h", "$__interval", "1m",
		"${datasource}", "x", "$job", "keywarden", "$instance", ".*", "$apiserver_job", "apiserver")
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, k := range keys {
		q, _ := json.Marshal(r.Replace(exprs[k]))
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, ".", promtool, "check", "rules", f)
}

// scrapeKeywarden runs the real keywarden on a fresh keyset, drives one
// Status, Encrypt and Decrypt through it with kmsctl, and returns the series
// and family names its /metrics serves.
func scrapeKeywarden(t *testing.T) map[string]bool {
	t.Helper()
	dir := t.TempDir()
	keyset := "file://" + filepath.Join(dir, "keyset.json")
	sock := "unix://" + filepath.Join(dir, "run", "kms.sock")
	run(t, ".", bin(t, "kmsctl"), "keys", "init", "--keystore", keyset)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin(t, "keywarden"), "--listen", sock, "--keystore", keyset,
		"--metrics-addr", "127.0.0.1:0", "--state-file", filepath.Join(dir, "state.json"), "--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
	}()
	// keywarden logs the address it bound: {"msg":"serving metrics and health","addr":"127.0.0.1:NNN"}.
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var l struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "serving metrics and health" {
				addr <- l.Addr
			}
		}
		close(addr)
	}()
	var base string
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatal("keywarden exited before serving metrics")
		}
		base = "http://" + a
	case <-time.After(30 * time.Second):
		t.Fatal("keywarden did not log its metrics address in 30s")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := execOutput(bin(t, "kmsctl"), "check", "--socket", sock)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmsctl check: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return parseExposition(string(body))
}

// parseExposition returns the series names and family names in Prometheus
// text exposition.
func parseExposition(body string) map[string]bool {
	names := map[string]bool{}
	for _, l := range strings.Split(body, "\n") {
		if f, ok := strings.CutPrefix(l, "# TYPE "); ok {
			fs := strings.Fields(f)
			names[fs[0]] = true
			if len(fs) > 1 && fs[1] == "histogram" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[fs[0]+s] = true
				}
			}
			continue
		}
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			names[l[:i]] = true
		}
	}
	return names
}

// TestMetricsExist checks that every metric an alert or a dashboard query
// selects is one the real keywarden serves, a kube-apiserver metric on the
// allowlist, or Prometheus' own `up`; and that the dashboard shows every
// keywarden_ metric but the gRPC middleware's extras.
func TestMetricsExist(t *testing.T) {
	exported := scrapeKeywarden(t)
	// kmsctl follow's metrics (job kmsctl-follow): not on the dashboard.
	for _, n := range follow.MetricNames() {
		exported[n] = true
	}
	for _, want := range []string{"keywarden_healthy", "keywarden_grpc_server_handled_total", "keywarden_grpc_server_handling_seconds_bucket", "process_resident_memory_bytes"} {
		if !exported[want] {
			t.Fatalf("keywarden does not export %s; the scrape is broken", want)
		}
	}
	allowed := allowedSeries()
	used := map[string]bool{}
	check := func(where, expr string) {
		names := metricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", where, expr)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] && !allowed[n] && !promTargetMetrics[n] {
				t.Errorf("%s: %s is neither exported by keywarden nor an allowlisted kube-apiserver metric", where, n)
			}
		}
	}
	for where, e := range alertExprs(t) {
		check(where, e)
	}
	shown := map[string]bool{}
	for where, e := range dashboardExprs(t) {
		check(where, e)
		for _, n := range metricNames(e) {
			shown[strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count")] = true
		}
	}
	for n := range allowedSeries() {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if !used[n] && !used[base+"_bucket"] && !used[base+"_count"] && !used[base+"_sum"] {
			t.Errorf("allowlisted %s is used by no alert or panel; drop it from apiserverMetrics", base)
		}
	}
	for n := range exported {
		if strings.HasPrefix(n, "keywarden_") && !strings.HasPrefix(n, "keywarden_grpc_") &&
			!strings.HasSuffix(n, "_sum") && !strings.HasSuffix(n, "_count") && !strings.HasSuffix(n, "_bucket") && !shown[n] {
			t.Errorf("the dashboard does not show %s", n)
		}
	}
}

// TestAPIServerMetricsAllowlist reads kube-apiserver's metric definitions
// from the k8s.io/apiserver source the e2e tools are built from (the Go
// module cache; fetched through the module proxy if missing) and checks
// that every allowlisted name is defined there.
func TestAPIServerMetricsAllowlist(t *testing.T) {
	toolsDir := filepath.Join(repoRoot, "test", "e2e", "tools")
	cmd := exec.Command("go", "mod", "download", "-json", "k8s.io/apiserver")
	cmd.Dir = toolsDir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download k8s.io/apiserver in %s: %v", toolsDir, err)
	}
	var mod struct{ Version, Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download printed %q: %v", out, err)
	}
	defined := map[string]bool{}
	for _, d := range []string{
		"pkg/storage/value",
		"pkg/storage/value/encrypt/envelope/metrics",
		"pkg/server/options/encryptionconfig/metrics",
	} {
		for n := range metricDefinitions(t, filepath.Join(mod.Dir, d)) {
			defined[n] = true
		}
	}
	t.Logf("k8s.io/apiserver %s defines %d metrics in the encryption packages", mod.Version, len(defined))
	for name := range apiserverMetrics {
		if !defined[name] {
			t.Errorf("%s is not defined by k8s.io/apiserver %s", name, mod.Version)
		}
	}
}

// metricDefinitions finds component-base metric options (Namespace,
// Subsystem, Name fields of a composite literal, with constants resolved
// within the package) and BuildFQName calls in the Go files of dir.
func metricDefinitions(t *testing.T, dir string) map[string]bool {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	consts := map[string]string{}
	var parsed []*ast.File
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, af)
		for _, d := range af.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						if l, ok := vs.Values[i].(*ast.BasicLit); ok && l.Kind == token.STRING {
							consts[n.Name], _ = strconv.Unquote(l.Value)
						}
					}
				}
			}
		}
	}
	str := func(e ast.Expr) string {
		switch v := e.(type) {
		case *ast.BasicLit:
			s, _ := strconv.Unquote(v.Value)
			return s
		case *ast.Ident:
			return consts[v.Name]
		}
		return ""
	}
	fq := func(parts ...string) string {
		var nonEmpty []string
		for _, p := range parts {
			if p != "" {
				nonEmpty = append(nonEmpty, p)
			}
		}
		return strings.Join(nonEmpty, "_")
	}
	names := map[string]bool{}
	for _, af := range parsed {
		ast.Inspect(af, func(n ast.Node) bool {
			switch v := n.(type) {
			case *ast.CompositeLit:
				f := map[string]string{}
				for _, e := range v.Elts {
					if kv, ok := e.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.Ident); ok {
							f[k.Name] = str(kv.Value)
						}
					}
				}
				if f["Name"] != "" && f["Namespace"] != "" {
					names[fq(f["Namespace"], f["Subsystem"], f["Name"])] = true
				}
			case *ast.CallExpr:
				if sel, ok := v.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "BuildFQName" && len(v.Args) == 3 {
					names[fq(str(v.Args[0]), str(v.Args[1]), str(v.Args[2]))] = true
				}
			}
			return true
		})
	}
	return names
}

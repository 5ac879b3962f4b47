package e2e

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// repoRoot is the module root, seen from this package's directory.
const repoRoot = "../.."

// goConsts calls fn for every constant declared with a string literal in
// the non-test Go files under dir, with its name and the doc comment of its
// declaration block.
func goConsts(t *testing.T, dir string, fn func(name, value, blockDoc string)) {
	t.Helper()
	fset := token.NewFileSet()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			gen, ok := decl.(*ast.GenDecl)
			if !ok || gen.Tok != token.CONST {
				continue
			}
			for _, spec := range gen.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						continue
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						return err
					}
					fn(name.Name, v, gen.Doc.Text())
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// registeredMetrics is every metric name declared in caddymodule/ through
// prometheus.*Opts literals (Name, or Namespace_Subsystem_Name, as
// prometheus.BuildFQName joins them), with its kind (counter, gauge,
// histogram, summary).
func registeredMetrics(t *testing.T) map[string]string {
	t.Helper()
	names := map[string]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(filepath.Join(repoRoot, "caddymodule"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			sel, ok := lit.Type.(*ast.SelectorExpr)
			if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") {
				return true
			}
			kind := strings.ToLower(strings.TrimSuffix(sel.Sel.Name, "Opts"))
			parts := map[string]string{}
			for _, el := range lit.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				val, _ := kv.Value.(*ast.BasicLit)
				if key == nil || val == nil || val.Kind != token.STRING {
					continue
				}
				parts[key.Name], _ = strconv.Unquote(val.Value)
			}
			var fq []string
			for _, k := range []string{"Namespace", "Subsystem", "Name"} {
				if parts[k] != "" {
					fq = append(fq, parts[k])
				}
			}
			if parts["Name"] != "" {
				names[strings.Join(fq, "_")] = kind
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("no metric found in caddymodule/: the scan is broken")
	}
	return names
}

var metricName = regexp.MustCompile(`\blegacygate_[a-z0-9_]+`)

// usedMetrics returns the legacygate_ metric names text refers to, with
// the series suffixes of histograms and summaries mapped to their metric.
func usedMetrics(text string, registered map[string]string) []string {
	seen := map[string]bool{}
	for _, n := range metricName.FindAllString(text, -1) {
		if _, ok := registered[n]; !ok {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, cut := strings.CutSuffix(n, suffix); cut {
					if k := registered[base]; k == "histogram" || k == "summary" {
						n = base
					}
				}
			}
		}
		seen[n] = true
	}
	var out []string
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func TestDashboardAndAlertsUseOnlyMetricsTheGatewayRegisters(t *testing.T) {
	registered := registeredMetrics(t)
	for _, file := range []string{"examples/grafana-dashboard.json", "examples/prometheus-alerts.yml"} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(repoRoot, file))
			if err != nil {
				t.Fatal(err)
			}
			used := usedMetrics(string(data), registered)
			if len(used) == 0 {
				t.Fatalf("%s uses no legacygate_ metric", file)
			}
			for _, n := range used {
				if _, ok := registered[n]; !ok {
					t.Errorf("%s uses %s, which no module under caddymodule/ registers", file, n)
				}
			}
		})
	}
}

// TestDashboardIsGrafanaJSON checks the shape Grafana's import needs: a
// title, panels with a type and at least one query each.
func TestDashboardIsGrafanaJSON(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "examples/grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels: %+v", d)
	}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || p.Type == "" || len(p.Targets) == 0 {
			t.Errorf("panel %q (type %q) has no title, type or query", p.Title, p.Type)
		}
		for _, q := range p.Targets {
			if strings.Count(q.Expr, "(") != strings.Count(q.Expr, ")") || strings.Count(q.Expr, "{") != strings.Count(q.Expr, "}") {
				t.Errorf("panel %q: unbalanced query %q", p.Title, q.Expr)
			}
		}
	}
}

// TestAlertRulesHaveThePrometheusShape checks the alert file line by line:
// it is written in a fixed layout (groups → name, rules → alert, expr,
// for, labels.severity, annotations.summary and description) so a small
// check suffices without a YAML parser. promtool, when installed, checks
// it fully.
func TestAlertRulesHaveThePrometheusShape(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "examples/prometheus-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if strings.Contains(text, "\t") {
		t.Fatal("prometheus-alerts.yml contains a tab: YAML indents with spaces")
	}
	if !strings.HasPrefix(strings.TrimLeft(text, "#\n "), "groups:") && !regexp.MustCompile(`(?m)^groups:\s*$`).MatchString(text) {
		t.Fatal("prometheus-alerts.yml does not start with groups:")
	}
	type rule struct {
		alert, expr, forDur, severity, summary, description string
	}
	var rules []rule
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		key, val, _ := strings.Cut(strings.TrimPrefix(trimmed, "- "), ":")
		val = strings.TrimSpace(val)
		if key == "alert" {
			rules = append(rules, rule{alert: val})
			continue
		}
		if len(rules) == 0 {
			continue
		}
		r := &rules[len(rules)-1]
		switch key {
		case "expr":
			r.expr = val
		case "for":
			r.forDur = val
		case "severity":
			r.severity = val
		case "summary":
			r.summary = val
		case "description":
			r.description = val
		}
	}
	if len(rules) < 6 {
		t.Fatalf("only %d alert rules", len(rules))
	}
	names := map[string]bool{}
	for _, r := range rules {
		if !regexp.MustCompile(`^[A-Z][A-Za-z0-9]+$`).MatchString(r.alert) || names[r.alert] {
			t.Errorf("alert name %q is not a unique CamelCase name", r.alert)
		}
		names[r.alert] = true
		if r.expr == "" || r.expr == "|" || r.expr == ">" {
			t.Errorf("%s: expr must be one line (the check reads it)", r.alert)
		}
		if strings.Count(r.expr, "(") != strings.Count(r.expr, ")") || strings.Count(r.expr, "{") != strings.Count(r.expr, "}") {
			t.Errorf("%s: unbalanced expr %q", r.alert, r.expr)
		}
		if !regexp.MustCompile(`^[0-9]+[smh]$`).MatchString(r.forDur) {
			t.Errorf("%s: for %q is not a duration", r.alert, r.forDur)
		}
		if r.severity != "warning" && r.severity != "critical" {
			t.Errorf("%s: severity %q", r.alert, r.severity)
		}
		if r.summary == "" || r.description == "" {
			t.Errorf("%s: no summary or description", r.alert)
		}
	}
	// What issue 15 asks the rules to watch.
	for _, want := range []string{
		"legacygate_upstream_tls_handshakes_total",  // pin mismatches
		"legacygate_policy_guard_results_total",     // signature refusals
		"legacygate_upstream_connections",           // pool exhaustion
		"legacygate_heartbeat_limit_requests_total", // rate-limit storms
		"legacygate_rotation_confirmed_ratio",       // rotation stalled
		"legacygate_manager_request_refusals_total", // manager_request refusals
	} {
		found := false
		for _, r := range rules {
			found = found || strings.Contains(r.expr, want)
		}
		if !found {
			t.Errorf("no alert rule watches %s", want)
		}
	}
}

// reasonConstants is every refusal or outcome reason declared under
// caddymodule/: string constants whose name says reason, or declared in a
// block whose doc comment starts "Reasons" ("Refusal reasons", …).
func reasonConstants(t *testing.T) map[string]string {
	t.Helper()
	reasons := map[string]string{}
	nameSaysReason := regexp.MustCompile(`(?i)reason`)
	docSaysReasons := regexp.MustCompile(`(?i)^(\w+ )?reasons\b`)
	goConsts(t, filepath.Join(repoRoot, "caddymodule"), func(name, value, doc string) {
		if nameSaysReason.MatchString(name) || docSaysReasons.MatchString(doc) {
			reasons[value] = name
		}
	})
	if len(reasons) < 20 {
		t.Fatalf("only %d reason constants found: the scan is broken", len(reasons))
	}
	return reasons
}

func TestTroubleshootingExplainsEveryReason(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "docs/operations/troubleshooting.md"))
	if err != nil {
		t.Fatal(err)
	}
	page := string(data)
	reasons := reasonConstants(t)
	var values []string
	for v := range reasons {
		values = append(values, v)
	}
	sort.Strings(values)
	for _, v := range values {
		if !strings.Contains(page, "`"+v+"`") {
			t.Errorf("reason %q (%s) is not explained in docs/operations/troubleshooting.md", v, reasons[v])
		}
	}
}

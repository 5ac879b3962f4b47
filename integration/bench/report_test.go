package bench

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/benchmarks.md from integration/bench/results")

// moduleRoot finds the repository through `go env GOMOD`, as the e2e tests do.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func TestBenchmarksPageIsUpToDate(t *testing.T) {
	root := moduleRoot(t)
	got, err := Markdown(filepath.Join(root, "integration", "bench", "results"))
	if err != nil {
		t.Fatal(err)
	}
	page := filepath.Join(root, "docs", "benchmarks.md")
	if *update {
		if err := os.WriteFile(page, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(page)
	if err != nil {
		t.Fatalf("%v (generate it: go test ./integration/bench/ -run TestBenchmarksPageIsUpToDate -update)", err)
	}
	if string(want) != got {
		t.Errorf("docs/benchmarks.md differs from what integration/bench/results renders; run: go test ./integration/bench/ -run TestBenchmarksPageIsUpToDate -update")
	}
}

func TestMarkdownRendersEveryKindOfReportWithItsCommand(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"a-bench.json": `{"machine":{"cpus":2,"target_cpus":"0","load_cpus":"1","model":"M","go_version":"go1.26","nginx":false,"haproxy":true},
			"duration_per_round":"2s","rounds":1,"connections":8,
			"paths":[{"path":"heartbeat","generator":"wrk (keep-alive)",
			"targets":[{"name":"legacygate","requests_per_second":12345.6,"p50_ms":1.5,"p99_ms":3.25,"cpu_us_per_request":99,"peak_rss_mb":70}],
			"ratios":[{"target":"legacygate","baseline":"caddy","requests_per_second":1.01,"p50":0.99,"p99":0.98,"cpu_per_request":0.97,"peak_rss":1.1}]}]}`,
		"b-storm.json": `{"machine":{"cpus":2},"clients":100,"connections":10,"duration_per_step":"1s","global_rate":50,"max_wait":"1s","goal":300,"reject_p99_goal_ms":5,
			"steps":[{"offered_rate":300,"targets":[{"name":"legacygate","elapsed":"1s","answered_per_second":300,"allowed":60,"rejected":240,
			"rejected_by_reason":{"global":200,"per_client":40},"rejected_p99_ms_by_reason":{"global":1.5,"per_client":0.5}}]}],"sustained":300,"pass":true}`,
		"c-soak.json": `{"machine":{"cpus":2},"clients":1000,"duration":"1m","warmup":"20s","flood_rate":10,"max_keys":2000,"samples":[],
			"warmup_peak_rss_mb":50,"last_half_peak_rss_mb":51,"peak_rss_mb":52,"flat":true,"fleet":{"clients":1000,"online":1000}}`,
		"d.png": "not really a png",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Markdown(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"mgrsim bench --legacygate ./legacygate --duration 2s --rounds 1 --connections 8 --paths heartbeat --target-cpus 0 --no-nginx --json > integration/bench/results/a-bench.json",
		"The targets ran on CPU 0 only, the load generator and the emulated managers on CPU 1.",
		"| heartbeat | wrk (keep-alive) | legacygate | 12,346 | 1.50 | 3.2 | 99 | 70.0 | 0 |",
		"| heartbeat | legacygate / caddy | 1.01 | 0.99 | 0.98 | 0.97 | 1.10 |",
		"mgrsim storm --legacygate ./legacygate --clients 100 --connections 10 --rates 300 --duration 1s --global-rate 50 --max-wait 1s --goal 300 --reject-p99 5ms --no-caddy --json",
		"- 300/s: every goal met; rejected by reason `global` 200, `per_client` 40, their p99 `global` 1.50 ms, `per_client` 0.50 ms.",
		"**met**; highest rate with every goal met: 300/s",
		"mgrsim soak --legacygate ./legacygate --clients 1000 --duration 1m --warmup 20s --flood-rate 10 --max-keys 2000 --json",
		"| gateway RSS, peak of the last half | 51.0 MB: **flat** |",
		"![d](../integration/bench/results/d.png)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("rendered page lacks %q\n%s", want, got)
		}
	}
	if strings.Index(got, "a-bench.json") > strings.Index(got, "b-storm.json") {
		t.Error("reports are not rendered in name order")
	}
}

func TestMarkdownRefusesAnUnknownReport(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.json"), []byte(`{"what":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Markdown(dir); err == nil || !strings.Contains(err.Error(), "x.json") {
		t.Fatalf("Markdown of an unknown report: err = %v, want one naming x.json", err)
	}
}

func TestThousandsGroupsDigits(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999.4: "999", 1000: "1,000", 8364.6: "8,365", 1234567: "1,234,567", -4200: "-4,200"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}

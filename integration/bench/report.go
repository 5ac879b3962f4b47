package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// resultsLink is how docs/benchmarks.md, the page Markdown renders, reaches
// the results directory: images are linked, not copied.
const resultsLink = "../integration/bench/results/"

// Markdown renders the benchmark page (docs/benchmarks.md) from the results
// directory: every *.json there is a bench, storm or soak report as
// `mgrsim bench|storm|soak --json` prints it, told apart by its fields, and
// every *.png a plot `mgrsim soak --png` drew. Files are rendered in name
// order, each with the command that reproduces it. The page is generated
// so that no figure in the docs can drift from the measurement behind it.
func Markdown(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("bench results %s: %w", dir, err)
	}
	var b bytes.Buffer
	b.WriteString(pageIntro)
	var pngs []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.IsDir():
		case strings.HasSuffix(name, ".png"):
			pngs = append(pngs, name)
		case strings.HasSuffix(name, ".json"):
			raw, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return "", fmt.Errorf("bench results: %w", err)
			}
			if err := renderResult(&b, name, raw); err != nil {
				return "", fmt.Errorf("bench results %s: %w", name, err)
			}
		}
	}
	if len(pngs) > 0 {
		b.WriteString("## Soak plots\n\n")
		b.WriteString("Drawn by `mgrsim soak --png FILE`: the gateway's RSS in red above, the requests/s sent to it in blue below, a grey line at the end of the warm-up. See [testing.md](testing.md#mgrsim-soak) for what a soak runs and how it is judged.\n\n")
		for _, name := range pngs {
			fmt.Fprintf(&b, "### %s\n\n![%s](%s%s)\n\n", name, strings.TrimSuffix(name, ".png"), resultsLink, name)
		}
	}
	return strings.TrimRight(b.String(), "\n") + "\n", nil
}

const pageIntro = `# Benchmarks

<!-- Generated from integration/bench/results/*.json by integration/bench/report.go.
     Do not edit: run "go test ./integration/bench/ -run TestBenchmarksPageIsUpToDate -update". -->

Every figure below is what a ` + "`mgrsim`" + ` run printed with ` + "`--json`" + `, saved in
[integration/bench/results/](../integration/bench/results/) and rendered into this page by
` + "`integration/bench/report.go`" + `. To add a measurement, save the JSON there and run
` + "`go test ./integration/bench/ -run TestBenchmarksPageIsUpToDate -update`" + `; the test fails
whenever this page and the results disagree. How each command works, and how fair its
baselines are, is in [testing.md](testing.md#benchmarks); its flags are in
[commands.md](commands.md#mgrsim-bench).

Build the binaries first: ` + "`go build -o legacygate ./cmd/legacygate && go build -o mgrsim ./cmd/mgrsim`" + `.
Figures depend on the machine and its load, which each section states; compare ratios
measured in the same run, not figures from different runs.

`

// renderResult renders one JSON report, whichever command printed it.
func renderResult(b *bytes.Buffer, name string, raw []byte) error {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return err
	}
	switch {
	case probe["paths"] != nil:
		var r Report
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		renderBench(b, name, &r)
	case probe["steps"] != nil:
		var r StormReport
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		renderStorm(b, name, &r)
	case probe["samples"] != nil:
		var r SoakReport
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		renderSoak(b, name, &r)
	default:
		return errors.New("neither a bench (paths), storm (steps) nor soak (samples) report")
	}
	return nil
}

func renderMachine(b *bytes.Buffer, m Machine) {
	fmt.Fprintf(b, "Machine: %d CPUs (%s), %s; load average %s before and %s after the run.",
		m.CPUs, m.Model, m.GoVersion, m.LoadBefore, m.LoadAfter)
	if m.TargetCPUs != "" {
		fmt.Fprintf(b, " The targets ran on CPU %s only, the load generator and the emulated managers on CPU %s.", m.TargetCPUs, m.LoadCPUs)
	}
}

func renderBench(b *bytes.Buffer, name string, r *Report) {
	fmt.Fprintf(b, "## mgrsim bench: %s\n\n", name)
	b.WriteString("legacygate against stock Caddy's `reverse_proxy`, nginx and HAProxy, all in front of the same TLS 1.2 emulated manager; `legacygate-tls10` is the gateway in front of a TLS 1.0 / SHA-1 manager, which the others cannot reach. Medians over the rounds.\n\n")
	renderMachine(b, r.Machine)
	fmt.Fprintf(b, " %d rounds of %s per target and path, %d connections.\n\n", r.Rounds, r.Duration, r.Connections)
	paths := make([]string, 0, len(r.Paths))
	for _, p := range r.Paths {
		paths = append(paths, p.Path)
	}
	cmd := fmt.Sprintf("mgrsim bench --legacygate ./legacygate --duration %s --rounds %d --connections %d --paths %s",
		r.Duration, r.Rounds, r.Connections, strings.Join(paths, ","))
	if r.Machine.TargetCPUs != "" {
		cmd += " --target-cpus " + r.Machine.TargetCPUs
	}
	if !r.Machine.WithNginx {
		cmd += " --no-nginx"
	}
	if !r.Machine.WithHAProxy {
		cmd += " --no-haproxy"
	}
	fmt.Fprintf(b, "Reproduce:\n\n```sh\n%s --json > integration/bench/results/%s\n```\n\n", cmd, name)
	b.WriteString("| path | generator | target | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MB | errors | manager handshakes / 1,000 req |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range r.Paths {
		for i, t := range p.Targets {
			path, gen := p.Path, p.Generator
			if i > 0 {
				path, gen = "", ""
			}
			perK := "" // not measured by older reports
			if t.ManagerHandshakesPer1000 != nil {
				perK = fmt.Sprintf("%.1f", *t.ManagerHandshakesPer1000)
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %.2f | %.1f | %s | %.1f | %d | %s |\n",
				path, gen, t.Name, thousands(t.RPS), t.P50Ms, t.P99Ms, thousands(t.CPUUs), t.PeakRSS, t.Errors, perK)
		}
	}
	b.WriteString("\nRatios, target ÷ baseline (for req/s above 1 is better, for the others below 1):\n\n")
	b.WriteString("| path | target / baseline | req/s | p50 | p99 | CPU/req | peak RSS |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, p := range r.Paths {
		for i, q := range p.Ratios {
			path := p.Path
			if i > 0 {
				path = ""
			}
			fmt.Fprintf(b, "| %s | %s / %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
				path, q.Target, q.Baseline, q.RPS, q.P50, q.P99, q.CPU, q.PeakRSS)
		}
	}
	b.WriteString("\n")
}

func renderStorm(b *bytes.Buffer, name string, r *StormReport) {
	fmt.Fprintf(b, "## mgrsim storm: %s\n\n", name)
	fmt.Fprintf(b, "%s simulated clients on %s keep-alive TLS connections heartbeat at each offered rate for %s per target; the gateway runs `heartbeat_limit` as `Caddyfile.example` ships it, with `global_rate %d/1s` and `max_wait %s`; `caddy` is stock `reverse_proxy` with no limiter.\n\n",
		thousands(float64(r.Clients)), thousands(float64(r.Connections)), r.Duration, r.GlobalRate, r.MaxWait)
	renderMachine(b, r.Machine)
	b.WriteString("\n\n")
	rates := make([]string, 0, len(r.Steps))
	withCaddy := false
	for _, s := range r.Steps {
		rates = append(rates, strconv.Itoa(s.Rate))
		for _, t := range s.Targets {
			withCaddy = withCaddy || t.Name == TargetCaddy
		}
	}
	cmd := fmt.Sprintf("mgrsim storm --legacygate ./legacygate --clients %d --connections %d --rates %s --duration %s --global-rate %d --max-wait %s --goal %d --reject-p99 %gms",
		r.Clients, r.Connections, strings.Join(rates, ","), r.Duration, r.GlobalRate, r.MaxWait, r.Goal, r.RejectP99)
	if !withCaddy {
		cmd += " --no-caddy"
	}
	if r.Stall != "" {
		cmd += fmt.Sprintf(" --stall %s --stall-every %s", r.Stall, r.StallEvery)
	}
	fmt.Fprintf(b, "Reproduce:\n\n```sh\n%s --json > integration/bench/results/%s\n```\n\n", cmd, name)
	b.WriteString("| offered/s | target | answered/s | allowed | rejected | errors | late | allowed p99 ms | rejected p50 ms | rejected p99 ms | manager/s | busiest second | CPU µs/answer | RSS MB | idle KB/conn |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	nominal := false
	for _, s := range r.Steps {
		for i, t := range s.Targets {
			rate := thousands(float64(s.Rate))
			if i > 0 {
				rate = ""
			}
			answered := thousands(t.Answered)
			if t.Elapsed == "" {
				answered += "\\*"
				nominal = true
			}
			rejP50, rejP99 := "", ""
			if t.Rejected > 0 {
				rejP50, rejP99 = fmt.Sprintf("%.2f", t.RejectedP50Ms), fmt.Sprintf("%.2f", t.RejectedP99Ms)
			}
			idle := "" // reports from before the column have none
			if t.IdleKBPerConn > 0 {
				idle = fmt.Sprintf("%.1f", t.IdleKBPerConn)
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %d | %.1f %% | %s | %s | %s | %s | %d | %s | %.0f | %s |\n",
				rate, t.Name, answered, thousands(float64(t.Allowed)), thousands(float64(t.Rejected)), t.Errors,
				100*t.LateShare, thousands(t.AllowedP99Ms), rejP50, rejP99, thousands(t.ManagerRate), t.ManagerPeak,
				thousands(t.CPUUs), t.RSSMB, idle)
		}
	}
	if nominal {
		b.WriteString("\n\\* This report predates `elapsed`: answered/s divides by the nominal step length, although a step whose connections were all busy ran longer. For stock Caddy, which passes every heartbeat on, manager/s is the rate it really answered.\n")
	}
	b.WriteString("\nThe gateway at each rate:\n\n")
	for _, s := range r.Steps {
		for _, t := range s.Targets {
			if t.Name != TargetGateway {
				continue
			}
			verdict := "every goal met"
			if t.Verdict != "" {
				verdict = t.Verdict
			}
			fmt.Fprintf(b, "- %s/s: %s; rejected by reason %s, their p99 %s.\n",
				thousands(float64(s.Rate)), verdict, reasonCounts(t.Reasons), reasonMs(t.ReasonP99Ms))
		}
	}
	result := "met"
	if !r.Pass {
		result = "not met"
	}
	fmt.Fprintf(b, "\nGoal %s heartbeats/s (the manager at most `global_rate`, rejections' p99 under %g ms): **%s**; highest rate with every goal met: %s/s.\n\n",
		thousands(float64(r.Goal)), r.RejectP99, result, thousands(float64(r.Sustained)))
}

func renderSoak(b *bytes.Buffer, name string, r *SoakReport) {
	fmt.Fprintf(b, "## mgrsim soak: %s\n\n", name)
	renderMachine(b, r.Machine)
	b.WriteString("\n\n")
	fmt.Fprintf(b, "Reproduce:\n\n```sh\nmgrsim soak --legacygate ./legacygate --clients %d --duration %s --warmup %s --flood-rate %d --max-keys %d --json > integration/bench/results/%s\n```\n\n",
		r.Clients, r.Duration, r.Warmup, r.FloodRate, r.MaxKeys, name)
	verdict := "growing"
	if r.Flat {
		verdict = "flat"
	}
	b.WriteString("| figure | value |\n|---|---|\n")
	fmt.Fprintf(b, "| gateway RSS, peak up to the end of warm-up | %.1f MB |\n", r.WarmupPeakMB)
	fmt.Fprintf(b, "| gateway RSS, peak of the last half | %.1f MB: **%s** |\n", r.LastHalfPeakMB, verdict)
	fmt.Fprintf(b, "| gateway RSS, peak over the run | %.1f MB |\n", r.PeakRSSMB)
	fmt.Fprintf(b, "| fleet | %s clients: %s online, %s orphaned, %s degraded, %s heartbeats |\n",
		thousands(float64(r.Fleet.Clients)), thousands(float64(r.Fleet.Online)), thousands(float64(r.Fleet.Orphaned)),
		thousands(float64(r.Fleet.Degraded)), thousands(float64(r.Fleet.Heartbeats)))
	fmt.Fprintf(b, "| spoofed-key flood | %s sent, %s limited, %s errors |\n\n",
		thousands(float64(r.FloodSent)), thousands(float64(r.FloodLimited)), thousands(float64(r.FloodErrors)))
}

func reasonCounts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("`%s` %s", k, thousands(float64(m[k]))))
	}
	return strings.Join(parts, ", ")
}

func reasonMs(m map[string]float64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("`%s` %.2f ms", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// thousands rounds f to a whole number and groups its digits by three, as
// the tables in the docs always did (8,365 requests/s).
func thousands(f float64) string {
	s := strconv.FormatInt(int64(math.Round(f)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

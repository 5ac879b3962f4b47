package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/bench"
	"github.com/legacygate/legacygate/integration/harness"
)

// baselineArgs is --no-TOOL when the baseline tool is absent outside CI;
// under CI it must be installed and the test fails without it.
func baselineArgs(t *testing.T, tool string) []string {
	t.Helper()
	for _, p := range []string{tool, "/usr/sbin/" + tool} {
		if _, err := exec.LookPath(p); err == nil {
			return nil
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed; CI must install it (apt-get install -y %s)", tool, tool)
	}
	t.Logf("%s is not installed: benchmarking without it", tool)
	return []string{"--no-" + tool}
}

func TestBenchCommandShortRunPrintsEveryPathAndRatio(t *testing.T) {
	bin := harness.Binary(t)
	wantTargets := []string{bench.TargetGateway, bench.TargetGatewayTLS10, bench.TargetCaddy}
	args := []string{"--legacygate", bin, "--duration", "1s", "--rounds", "1", "--connections", "4", "--json"}
	for _, b := range []struct{ tool, target string }{{"nginx", bench.TargetNginx}, {"haproxy", bench.TargetHAProxy}} {
		if extra := baselineArgs(t, b.tool); extra != nil {
			args = append(args, extra...)
		} else {
			wantTargets = append(wantTargets, b.target)
		}
	}
	// Each gateway target against each baseline: caddy and the tools present.
	wantRatios := 2 * (len(wantTargets) - 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := runBench(ctx, args, &stdout, &stderr); code != 0 {
		t.Fatalf("mgrsim bench exited %d:\n%s", code, stderr.String())
	}
	var rep bench.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("output is not a JSON report: %v\n%s", err, stdout.String())
	}
	if len(rep.Paths) != len(bench.AllPaths) {
		t.Fatalf("%d paths measured, want %v", len(rep.Paths), bench.AllPaths)
	}
	for i, p := range rep.Paths {
		if p.Path != bench.AllPaths[i] {
			t.Errorf("path %d is %q, want %q", i, p.Path, bench.AllPaths[i])
		}
		if len(p.Targets) != len(wantTargets) {
			t.Fatalf("path %s: %d targets, want %v", p.Path, len(p.Targets), wantTargets)
		}
		for j, tr := range p.Targets {
			if tr.Name != wantTargets[j] {
				t.Errorf("path %s target %d is %q, want %q", p.Path, j, tr.Name, wantTargets[j])
			}
			if tr.RPS <= 0 || tr.P50Ms <= 0 || tr.P99Ms < tr.P50Ms || tr.CPUUs <= 0 || tr.PeakRSS <= 0 {
				t.Errorf("path %s target %s: figures missing: %+v", p.Path, tr.Name, tr)
			}
			if tr.Errors != 0 {
				t.Errorf("path %s target %s: %d failed requests", p.Path, tr.Name, tr.Errors)
			}
		}
		if len(p.Ratios) != wantRatios {
			t.Errorf("path %s: %d ratios, want %d", p.Path, len(p.Ratios), wantRatios)
		}
		for _, g := range wantTargets[:2] {
			for _, b := range wantTargets[2:] {
				if !hasRatio(p.Ratios, g, b) {
					t.Errorf("path %s: no ratio %s / %s", p.Path, g, b)
				}
			}
		}
		for _, q := range p.Ratios {
			if q.RPS <= 0 || q.CPU <= 0 || q.PeakRSS <= 0 {
				t.Errorf("path %s: ratio %s/%s not computed: %+v", p.Path, q.Target, q.Baseline, q)
			}
		}
	}
	if rep.Machine.CPUs <= 0 || rep.Machine.LoadBefore == "" {
		t.Errorf("machine not described: %+v", rep.Machine)
	}
	if rep.Machine.WithNginx != slices.Contains(wantTargets, bench.TargetNginx) || rep.Machine.WithHAProxy != slices.Contains(wantTargets, bench.TargetHAProxy) {
		t.Errorf("machine says nginx %v, haproxy %v; targets %v", rep.Machine.WithNginx, rep.Machine.WithHAProxy, wantTargets)
	}
}

func hasRatio(rs []bench.Ratio, target, baseline string) bool {
	return slices.ContainsFunc(rs, func(r bench.Ratio) bool { return r.Target == target && r.Baseline == baseline })
}

func TestBinariesResolveFindsBaselinesOnlyWhenAsked(t *testing.T) {
	tests := []struct {
		name          string
		bins          binaries
		withBaselines bool
		wantNginx     string
		wantHAProxy   string
	}{
		{"legacygate only", binaries{}, false, "", ""},
		{"given binaries kept", binaries{nginx: "/opt/nginx", haproxy: "/opt/haproxy"}, true, "/opt/nginx", "/opt/haproxy"},
		{"no-nginx drops a given nginx", binaries{nginx: "/opt/nginx", haproxy: "/opt/haproxy", noNginx: true}, true, "", "/opt/haproxy"},
		{"no-haproxy drops a given haproxy", binaries{nginx: "/opt/nginx", haproxy: "/opt/haproxy", noHAProxy: true}, true, "/opt/nginx", ""},
		{"both left out", binaries{noNginx: true, noHAProxy: true}, true, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.bins
			b.legacygate = "/bin/true"
			if err := b.resolve(t.TempDir(), io.Discard, tt.withBaselines); err != nil {
				t.Fatal(err)
			}
			if b.legacygate != "/bin/true" || b.nginx != tt.wantNginx || b.haproxy != tt.wantHAProxy {
				t.Errorf("resolved legacygate %q, nginx %q, haproxy %q; want /bin/true, %q, %q", b.legacygate, b.nginx, b.haproxy, tt.wantNginx, tt.wantHAProxy)
			}
		})
	}
}

func TestBenchCommandRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"stray argument", []string{"extra"}, 2, "unexpected argument"},
		{"unknown flag", []string{"--nope"}, 2, "flag provided but not defined"},
		{"unknown path", []string{"--legacygate", "/bin/true", "--no-nginx", "--no-haproxy", "--paths", "heartbeat,bogus"}, 1, `unknown path "bogus"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := runBench(context.Background(), tt.args, io.Discard, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tt.code, tt.wantErr)
			}
		})
	}
}

func TestSoakCommandRejectsBadFlags(t *testing.T) {
	var stderr bytes.Buffer
	if code := runSoak(context.Background(), []string{"extra"}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "unexpected argument") {
		t.Errorf("exit %d, stderr %q; want 2 and an unexpected-argument error", code, stderr.String())
	}
}

func TestParseCPUs(t *testing.T) {
	tests := []struct {
		list    string
		want    []int
		wantErr string
	}{
		{"", nil, ""},
		{"0", []int{0}, ""},
		{" 0, 2 ", []int{0, 2}, ""},
		{"0-1", nil, `"0-1" is not a CPU number`},
		{"-1", nil, `"-1" is not a CPU number`},
		{"1,1", nil, "CPU 1 named twice"},
	}
	for _, tc := range tests {
		got, err := parseCPUs(tc.list)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseCPUs(%q) = %v, %v; want an error with %q", tc.list, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("parseCPUs(%q) = %v, %v; want %v", tc.list, got, err, tc.want)
		}
	}
}

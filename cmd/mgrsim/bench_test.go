package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/bench"
	"github.com/legacygate/legacygate/integration/harness"
)

// nginxArgs is --no-nginx when nginx is absent outside CI; under CI nginx
// must be installed and the test fails without it.
func nginxArgs(t *testing.T) []string {
	t.Helper()
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if _, err := exec.LookPath(p); err == nil {
			return nil
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("nginx is not installed; CI must install it (apt-get install -y nginx)")
	}
	t.Log("nginx is not installed: benchmarking without it")
	return []string{"--no-nginx"}
}

func TestBenchCommandShortRunPrintsEveryPathAndRatio(t *testing.T) {
	bin := harness.Binary(t)
	extra := nginxArgs(t)
	args := append([]string{"--legacygate", bin, "--duration", "1s", "--rounds", "1", "--connections", "4", "--json"}, extra...)
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
	wantTargets := []string{bench.TargetGateway, bench.TargetGatewayTLS10, bench.TargetCaddy, bench.TargetNginx}
	wantRatios := 4
	if len(extra) > 0 {
		wantTargets, wantRatios = wantTargets[:3], 2
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
		for _, q := range p.Ratios {
			if q.RPS <= 0 || q.CPU <= 0 || q.PeakRSS <= 0 {
				t.Errorf("path %s: ratio %s/%s not computed: %+v", p.Path, q.Target, q.Baseline, q)
			}
		}
	}
	if rep.Machine.CPUs <= 0 || rep.Machine.LoadBefore == "" {
		t.Errorf("machine not described: %+v", rep.Machine)
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
		{"unknown path", []string{"--legacygate", "/bin/true", "--no-nginx", "--paths", "heartbeat,bogus"}, 1, `unknown path "bogus"`},
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

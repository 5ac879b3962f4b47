package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/bench"
	"github.com/legacygate/legacygate/integration/harness"
)

// TestStormCommandShortRunReportsBothTargets runs a small storm. Whether this
// loaded machine meets the performance goals is the benchmark's business
// (exit 0 or 3); what must hold on any machine is below: every heartbeat is
// answered, the gateway rejects with Retry-After and keeps the manager to
// its ceiling on average, stock Caddy passes everything through.
func TestStormCommandShortRunReportsBothTargets(t *testing.T) {
	bin := harness.Binary(t)
	const globalRate = 50
	args := []string{"--legacygate", bin, "--clients", "300", "--rates", "300", "--duration", "3s",
		"--global-rate", "50", "--max-wait", "200ms", "--goal", "300", "--json"}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := runStorm(ctx, args, &stdout, &stderr)
	if code != 0 && code != 3 {
		t.Fatalf("mgrsim storm exited %d:\n%s", code, stderr.String())
	}
	var rep bench.StormReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("output is not a JSON report: %v\n%s", err, stdout.String())
	}
	if (code == 0) != rep.Pass {
		t.Errorf("exit code %d but pass = %v", code, rep.Pass)
	}
	if len(rep.Steps) != 1 || len(rep.Steps[0].Targets) != 2 {
		t.Fatalf("want one step with two targets, got %+v", rep.Steps)
	}
	gw, caddy := rep.Steps[0].Targets[0], rep.Steps[0].Targets[1]
	if gw.Name != bench.TargetGateway || caddy.Name != bench.TargetCaddy {
		t.Fatalf("targets %q, %q", gw.Name, caddy.Name)
	}
	for _, st := range []bench.StormTarget{gw, caddy} {
		if st.Errors != 0 || st.Allowed == 0 || st.CPUUs <= 0 || st.RSSMB <= 0 || st.Connect == "" {
			t.Errorf("%s: figures missing or heartbeats failed: %+v", st.Name, st)
		}
	}
	if gw.Rejected == 0 || gw.BadRetry != 0 || gw.Reasons["global"] == 0 {
		t.Errorf("gateway: %d rejected (%v), %d without Retry-After: the storm should hit the ceiling", gw.Rejected, gw.Reasons, gw.BadRetry)
	}
	if gw.ManagerRate > globalRate*1.05 {
		t.Errorf("the manager got %.0f heartbeats/s through the gateway, global_rate %d/s", gw.ManagerRate, globalRate)
	}
	if caddy.Rejected != 0 || caddy.ManagerRate < 2*globalRate {
		t.Errorf("stock Caddy: %d rejected, manager at %.0f/s: it should pass the storm through", caddy.Rejected, caddy.ManagerRate)
	}
}

func TestStormCommandRefusesBadRates(t *testing.T) {
	for _, rates := range []string{"", "0", "3000,x", "-5"} {
		var stdout, stderr bytes.Buffer
		if code := runStorm(context.Background(), []string{"--rates", rates}, &stdout, &stderr); code != 2 || !bytes.Contains(stderr.Bytes(), []byte("--rates")) {
			t.Errorf("--rates %q: exit %d, stderr %q; want 2 naming --rates", rates, code, stderr.String())
		}
	}
}

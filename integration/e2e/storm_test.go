package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/bench"
	"github.com/legacygate/legacygate/integration/harness"
)

// TestStormWithStallsKeepsTheManagerAtGlobalRate storms the gateway (the
// example's heartbeat_limit and legacy_tls in front of a TLS manager)
// while freezing its process now and then, as a long GC pause would: the
// requests a stall held back must reach the manager spaced, so its busiest
// second stays within global_rate + 1 %. The short version always runs;
// the 10,000-connection storm runs with LEGACYGATE_LONG=1.
func TestStormWithStallsKeepsTheManagerAtGlobalRate(t *testing.T) {
	tests := []struct {
		name       string
		long       bool
		clients    int
		rate       int
		globalRate int
		duration   time.Duration
	}{
		{"300 connections at 100/s", false, 300, 1000, 100, 4 * time.Second},
		{"10,000 connections at 200/s", true, 10_000, 3000, 200, 20 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.long && os.Getenv("LEGACYGATE_LONG") != "1" {
				t.Skip("set LEGACYGATE_LONG=1 for the 10,000-connection storm")
			}
			rep, err := bench.RunStorm(context.Background(), bench.StormConfig{
				Legacygate: harness.Binary(t),
				Clients:    tt.clients,
				Rates:      []int{tt.rate},
				Duration:   tt.duration,
				GlobalRate: tt.globalRate,
				MaxWait:    time.Second,
				NoCaddy:    true,
				Stall:      300 * time.Millisecond,
				StallEvery: time.Second,
				Dir:        t.TempDir(),
				Log:        testLog{t},
			})
			if err != nil {
				t.Fatal(err)
			}
			st := rep.Steps[0].Targets[0]
			ceiling := int64(tt.globalRate + (tt.globalRate+99)/100)
			t.Logf("manager %.0f/s, busiest second %d (ceiling %d); %d allowed, %d rejected (p99 %.1f ms), %d errors",
				st.ManagerRate, st.ManagerPeak, ceiling, st.Allowed, st.Rejected, st.RejectedP99Ms, st.Errors)
			if st.ManagerPeak > ceiling {
				t.Errorf("the manager saw %d heartbeats in one second, want at most %d (global_rate %d/s + 1 %%)", st.ManagerPeak, ceiling, tt.globalRate)
			}
			if st.Errors > 0 {
				t.Errorf("%d heartbeats failed", st.Errors)
			}
			if st.ManagerPeak < int64(tt.globalRate)/2 {
				t.Errorf("the manager's busiest second held %d heartbeats: the storm did not press global_rate %d/s", st.ManagerPeak, tt.globalRate)
			}
		})
	}
}

// testLog sends a storm's progress lines to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Helper()
	l.t.Log(string(p))
	return len(p), nil
}

package e2e

import (
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/legacygate/legacygate/integration/harness"
)

// legacygate replaces Caddy's main (cmd/legacygate/cli.go); `run` must still
// bound the heap by Caddy's memory limit (90% of the cgroup's or the
// machine's memory), which keeps thousands of idle connections from growing
// the process past its host, and must leave GOGC to the administrator
// (docs/operations/connections.md).
func TestRunSetsAMemoryLimitAndHonoursGOGC(t *testing.T) {
	for _, tc := range []struct {
		name string
		gogc string // "" leaves GOGC unset
		want string
	}{
		{"GOGC unset", "", "100"},
		{"GOGC=150", "150", "150"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOGC", tc.gogc)
			if tc.gogc == "" {
				os.Unsetenv("GOGC")
			}
			g := harness.StartGateway(t, fmt.Sprintf("http://127.0.0.1:%d {\n\trespond ok\n}\n", harness.FreePort(t)))
			if got := transportMetric(t, g, "go_gc_gogc_percent"); got != tc.want {
				t.Errorf("go_gc_gogc_percent = %q, want %s", got, tc.want)
			}
			limit, err := strconv.ParseFloat(transportMetric(t, g, "go_gc_gomemlimit_bytes"), 64)
			if err != nil || limit <= 0 || limit >= 9e18 {
				t.Errorf("go_gc_gomemlimit_bytes = %v (%v): the heap has no memory limit", limit, err)
			}
		})
	}
}

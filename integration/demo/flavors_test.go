package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

// TestFlavorDemoEveryStepBehaves runs each flavor's scripted demo with a
// gateway process of this tree's legacygate, as `mgrsim demo --flavor F
// --once` does, and requires every step to behave.
func TestFlavorDemoEveryStepBehaves(t *testing.T) {
	tests := []struct {
		flavor string
		want   []string
	}{
		{flavorCheckpoint, []string{"TLS 1.0 only", "pinned SHA-1", "503 with Retry-After", "byte for byte", "untrusted_key", "degraded, not orphaned", "14 of 14 steps"}},
		{flavorPolicyServer, []string{"plain HTTP", "replay", "xml_guard", "received the request once", "7 of 7 steps"}},
	}
	for _, tc := range tests {
		t.Run(tc.flavor, func(t *testing.T) {
			var out bytes.Buffer
			d, err := setupFlavor(Options{Flavor: tc.flavor, Legacygate: harness.Binary(t), Dir: t.TempDir(), Out: &out})
			if err != nil {
				t.Fatalf("setting up the demo: %v\n%s", err, out.String())
			}
			defer d.close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if failed := d.runSteps(ctx); failed != 0 {
				t.Fatalf("%d demo steps misbehaved:\n%s", failed, out.String())
			}
			for _, want := range tc.want {
				if !strings.Contains(out.String(), want) {
					t.Errorf("demo output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestFlavorDemoUnknownFlavor(t *testing.T) {
	_, err := setupFlavor(Options{Flavor: "nosuch", Legacygate: "legacygate-not-needed", Dir: t.TempDir(), Out: &bytes.Buffer{}})
	if err == nil || !strings.Contains(err.Error(), "--flavor") {
		t.Fatalf("error %v, want one naming --flavor", err)
	}
}

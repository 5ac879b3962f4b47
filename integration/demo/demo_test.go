package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

// TestDemoEveryStepBehavesAndTheStoryShowsBothSides runs the demo with a
// gateway process of this tree's legacygate, as `mgrsim demo --once` does:
// every scripted step must behave, and the story must show the direct fleet
// orphaned, none through the gateway, and every gateway client confirming
// the rotation.
func TestDemoEveryStepBehavesAndTheStoryShowsBothSides(t *testing.T) {
	var out bytes.Buffer
	d, err := setup(Options{Legacygate: harness.Binary(t), Dir: t.TempDir(), Out: &out})
	if err != nil {
		t.Fatalf("setting up the demo: %v\n%s", err, out.String())
	}
	defer d.close()
	ctx, cancel := context.WithTimeout(context.Background(), 110*time.Second)
	defer cancel()
	if failed := d.runSteps(ctx); failed != 0 {
		t.Fatalf("%d demo steps misbehaved:\n%s", failed, out.String())
	}
	// Caddyfile.example answers a limited heartbeat with the client's last
	// index (last_index), not with 503: the storm step proves fewer than six
	// reached the manager.
	for _, want := range []string{"TLS 1.0 only", "answered 200 with the client's last index", "orphaned", "degraded, not orphaned", "steps behaved as expected"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	r, err := d.runStory(ctx, storyClients)
	if err != nil {
		t.Fatalf("the story: %v\n%s", err, out.String())
	}
	if r.direct.Orphaned == 0 {
		t.Errorf("direct to the manager: 0 orphaned, want some\n%s", out.String())
	}
	if r.gwImport.Orphaned != 0 || r.gwFinal.Orphaned != 0 || r.gwFinal.EverOrphaned != 0 {
		t.Errorf("through the gateway: %d orphaned after the import, %d at the end, %d ever; want 0\n%s",
			r.gwImport.Orphaned, r.gwFinal.Orphaned, r.gwFinal.EverOrphaned, out.String())
	}
	if !r.rotationOK() || r.rotation.Counts.Confirmed != storyClients {
		t.Errorf("rotation: %d of %d confirmed, %d still on plaintext; want all confirmed, none on plaintext\n%s",
			r.rotation.Counts.Confirmed, storyClients, r.gwFinal.OnPlaintext, out.String())
	}
	if err := r.ok(); err != nil {
		t.Errorf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"Phase 1", "Phase 2", "direct to manager", "through legacygate", "signature_failures"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("story output lacks %q:\n%s", want, out.String())
		}
	}
}

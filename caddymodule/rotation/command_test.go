package rotation

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/internal/rotationtable"
)

func TestRotationStatusTableShowsProgressAndStragglers(t *testing.T) {
	ends := windowEnd.Add(90 * 24 * time.Hour)
	st := RotationStatus{
		Rotation:          true,
		Window:            &rotationtable.Window{Start: windowStart, End: windowEnd},
		Grace:             "2160h0m0s",
		GraceEnds:         &ends,
		ConfirmHeartbeats: 3,
		Keys:              map[string]string{"current": "aaaa", "next": "bbbb"},
		Counts:            &rotationtable.RotationCounts{Phase: "open", Tracked: 4, Pending: 2, AnchorFetched: 1, Confirmed: 1, Plaintext: 2},
		ConfirmedPercent:  25,
		PlaintextClients:  2,
		Stragglers: &StragglerPage{Page: 1, Size: 2, Total: 3, Clients: []rotationtable.Straggler{
			{Client: "pc-\x1b[31mred", Progress: rotationtable.ProgressPending, ClientState: rotationtable.ClientState{LastSeen: inWindow}},
			{Client: "pc-2", Progress: rotationtable.ProgressAnchorFetched, ClientState: rotationtable.ClientState{LastSeen: inWindow, AnchorFetched: inWindow, HeartbeatsSince: 2, SeenPlaintext: true}},
		}},
	}
	var out bytes.Buffer
	if err := formatRotationStatus(&out, st); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{
		"2026-12-01T00:00:00Z to 2026-12-31T00:00:00Z (phase open",
		"[##########" + strings.Repeat(".", 30) + "]  25.0% confirmed (1 of 4)",
		"current aaaa, next bbbb",
		"page 1 of 2, 3 in all",
		"pc-?[31mred",
		"anchor_fetched",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "\x1b") {
		t.Error("a client id's escape sequence reached the terminal")
	}
}

func TestRotationStatusWithoutRotation(t *testing.T) {
	var out bytes.Buffer
	if err := formatRotationStatus(&out, RotationStatus{Keys: map[string]string{"current": "aaaa"}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "No rotation configured") {
		t.Fatalf("output: %s", out.String())
	}
}

func TestRotationStatusRejectsBadFlags(t *testing.T) {
	for _, tt := range []struct{ page, size int }{{0, 10}, {1, 0}, {1, 1001}} {
		if err := runRotationStatus(&bytes.Buffer{}, "127.0.0.1:1", false, tt.page, tt.size); err == nil {
			t.Errorf("page %d size %d accepted", tt.page, tt.size)
		}
	}
}

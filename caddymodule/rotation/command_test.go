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
		PlaintextClients:  new(2),
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

func TestRotationStatusWithoutRotationPrintsKeysAndPlaintext(t *testing.T) {
	notAfter := time.Date(2036, 1, 2, 3, 4, 5, 0, time.UTC)
	key := SigningKeyInfo{Role: "current", KeyID: "aaaa", Subject: "CN=gateway\x1b[2J", NotAfter: notAfter, Pin: "sha256/PIN=", Fingerprint: "ff00"}
	tests := []struct {
		name string
		st   RotationStatus
		want []string
	}{
		{"app without a window", RotationStatus{App: true, Keys: map[string]string{"current": "aaaa"}, SigningKeys: []SigningKeyInfo{key}}, []string{
			"no rotation configured: every payload is signed with the legacygate app's current key",
			"Plaintext clients  not tracked",
			`current      key id aaaa, subject "CN=gateway?[2J", expires 2036-01-02T03:04:05Z`,
			"pin sha256/PIN=, sha256 fingerprint ff00",
		}},
		{"no app, a policy_guard key", RotationStatus{Keys: map[string]string{}, SigningKeys: []SigningKeyInfo{{Role: "policy_guard", KeyID: "bbbb", Pin: "sha256/B="}}}, []string{
			"no rotation configured: no legacygate global option",
			"policy_guard key id bbbb",
			"pin sha256/B=",
		}},
		{"plaintext counted", RotationStatus{App: true, PlaintextClients: new(3)}, []string{"Plaintext clients  3", "Signing keys: none reported."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := formatRotationStatus(&out, tt.st); err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.want {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			if strings.Contains(out.String(), "\x1b") {
				t.Error("a subject's escape sequence reached the terminal")
			}
		})
	}
}

func TestRotationStatusRejectsBadFlags(t *testing.T) {
	for _, tt := range []struct{ page, size int }{{0, 10}, {1, 0}, {1, 1001}} {
		if err := runRotationStatus(&bytes.Buffer{}, "127.0.0.1:1", false, tt.page, tt.size); err == nil {
			t.Errorf("page %d size %d accepted", tt.page, tt.size)
		}
	}
}

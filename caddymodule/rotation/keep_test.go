package rotation

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/legacygate/legacygate/internal/rotationtable"
)

func TestParseKeepListReadsOneUpperCasedIDPerLine(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
		err        string
	}{
		{"ids, comments and blanks", "# XP lab\n\nab-01\n  CD02\t\r\n#x\n", []string{"AB-01", "CD02"}, ""},
		{"case variants are one client", "ab01\nAB01\n", []string{"AB01"}, ""},
		{"empty file", "", nil, ""},
		{"space inside an id", "ok\n# c\nbad id\n", nil, "keep.txt line 3"},
		{"control character", "a\x01b\n", nil, "keep.txt line 1"},
		{"non-ASCII", "h\u00f6st\n", nil, "keep.txt line 1"},
		{"id too long", strings.Repeat("A", maxKeepIDLen+1) + "\n", nil, "keep.txt line 1: client id longer than 128"},
		{"too many ids", manyIDs(maxKeepClients + 1), nil, fmt.Sprintf("line %d: more than %d client ids", maxKeepClients+1, maxKeepClients)},
		{"file too large", strings.Repeat("#", maxKeepFileSize+1), nil, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKeepList("keep.txt", strings.NewReader(tt.text))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("ids %q, want %q", got, tt.want)
			}
		})
	}
}

func manyIDs(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "H%d\n", i)
	}
	return b.String()
}

func FuzzParseKeepList(f *testing.F) {
	f.Add("# comment\nAB01\n\ncd02\r\n")
	f.Add("bad id\n")
	f.Fuzz(func(t *testing.T, text string) {
		ids, err := ParseKeepList("keep.txt", strings.NewReader(text))
		if err != nil {
			return
		}
		if len(ids) > maxKeepClients {
			t.Fatalf("%d ids, over the bound", len(ids))
		}
		seen := map[string]bool{}
		for _, id := range ids {
			if id == "" || len(id) > maxKeepIDLen || strings.ToUpper(id) != id || seen[id] || id[0] == '#' || strings.ContainsAny(id, " \t\r\n") {
				t.Fatalf("id %q kept from %q", id, text)
			}
			seen[id] = true
		}
	})
}

func writeKeepFile(t *testing.T, text string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "tls10-clients.txt")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

const keepBridgeBlock = `plaintext_bridge {
	allow /secars/secars.dll /secreg/secreg.dll
	migration /secars/secars.dll action=sylink
	outside_window migrate
	keep %s
}`

// TestPlaintextBridgeKeepsListedClientsOnPlainHTTPPastTheWindow: after the
// window, a kept client is passed on the allow paths (and its log uploads
// still refused), everyone else is moved; the status lists kept clients as
// needing an agent upgrade, and Cleanup takes the list off the app.
func TestPlaintextBridgeKeepsListedClientsOnPlainHTTPPastTheWindow(t *testing.T) {
	clock := &testClock{now: inWindow}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	b := newBridge(t, a, fmt.Sprintf(keepBridgeBlock, writeKeepFile(t, "# TLS 1.0 only\nxp-01\nXP-02\n")))
	serve := func(target string, body string) (int, bool) {
		t.Helper()
		r := clientRequest("GET", target)
		if body != "" {
			r = clientRequest("POST", target)
			r.Body, r.ContentLength = http.NoBody, int64(len(body))
		}
		w, next := httptest.NewRecorder(), &passedNext{}
		if err := b.ServeHTTP(w, r, next); err != nil {
			t.Fatal(err)
		}
		return w.Code, next.called
	}
	if _, passed := serve("/secars/secars.dll?action=index&hostid=XP-01", ""); !passed {
		t.Fatal("inside the window, a kept client's heartbeat was not passed on")
	}
	clock.Set(windowEnd.Add(time.Hour))
	tests := []struct {
		target, body string
		status       int // 0: passed on
	}{
		{"/secars/secars.dll?action=index&hostid=xp-01", "", 0},
		{"/secars/secars.dll?action=profile&hostid=XP-02", "", 0},
		{"/secars/secars.dll?action=profile&hostid=OTHER", "", http.StatusUpgradeRequired},
		{"/secars/secars.dll?action=profile", "", http.StatusUpgradeRequired},
		{"/secars/secars.dll?action=log&hostid=XP-01", "lines", http.StatusForbidden},
		{"/admin/console?hostid=XP-01", "", http.StatusUpgradeRequired},
	}
	for _, tt := range tests {
		code, passed := serve(tt.target, tt.body)
		if tt.status == 0 && !passed || tt.status != 0 && (passed || code != tt.status) {
			t.Errorf("after the window, %s: status %d, passed %v; want %d (0: passed)", tt.target, code, passed, tt.status)
		}
	}
	if got := testutil.ToFloat64(b.results.WithLabelValues("passed", bridgeKept)); got != 2 {
		t.Errorf("passed with reason kept: %v, want 2", got)
	}

	st := Status(a, 1, 10)
	if len(st.NeedsAgentUpgrade) != 2 {
		t.Fatalf("needs_agent_upgrade %+v, want XP-01 and XP-02", st.NeedsAgentUpgrade)
	}
	if k := st.NeedsAgentUpgrade[0]; k.Client != "XP-01" || !k.Seen || !k.Plaintext || k.Progress != "pending" || k.LastSeen.IsZero() {
		t.Errorf("kept client %+v, want XP-01 seen on plaintext, pending", k)
	}
	if k := st.NeedsAgentUpgrade[1]; k.Client != "XP-02" || k.Seen {
		t.Errorf("kept client %+v, want XP-02 never seen by the rotation (profile requests are no heartbeats)", k)
	}
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if st := Status(a, 1, 10); len(st.NeedsAgentUpgrade) != 0 {
		t.Fatalf("after Cleanup the app still keeps %+v", st.NeedsAgentUpgrade)
	}
}

// TestPlaintextBridgeKeepFileIsReadAtEveryProvision: a reload provisions a
// new handler, which reads the file again; a bad line fails the provision
// with the file and the line.
func TestPlaintextBridgeKeepFileIsReadAtEveryProvision(t *testing.T) {
	a := startApp(t, appBlock(t, t.TempDir(), "a"), &testClock{now: windowEnd.Add(time.Hour)})
	file := writeKeepFile(t, "XP-01\n")
	block := fmt.Sprintf(keepBridgeBlock, file)
	old := newBridge(t, a, block)
	if err := os.WriteFile(file, []byte("XP-03\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	newBridge(t, a, block)
	_ = old.Cleanup() // the old configuration stops after the new one started
	if st := Status(a, 1, 10); len(st.NeedsAgentUpgrade) != 1 || st.NeedsAgentUpgrade[0].Client != "XP-03" {
		t.Fatalf("after the reload the app keeps %+v, want XP-03 only", st.NeedsAgentUpgrade)
	}
	if err := os.WriteFile(file, []byte("XP-03\nXP 04\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := tryNewBridge(t, a, block)
	if want := "plaintext_bridge: keep: " + file + " line 2"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one containing %q", err, want)
	}
	_, err = tryNewBridge(t, a, fmt.Sprintf(keepBridgeBlock, filepath.Join(t.TempDir(), "missing.txt")))
	if err == nil || !strings.Contains(err.Error(), "missing.txt") {
		t.Fatalf("error %v, want one naming the missing file", err)
	}
}

func TestRotationStatusListsKeptClientsAsNeedingAnAgentUpgrade(t *testing.T) {
	kept := []KeptClient{
		{Client: "XP-\x1b[2J01", Seen: true, Progress: "confirmed", LastSeen: inWindow, Plaintext: true},
		{Client: "XP-02"},
	}
	for _, st := range []RotationStatus{
		{App: true, NeedsAgentUpgrade: kept},
		{App: true, Rotation: true, Window: &rotationtable.Window{Start: windowStart, End: windowEnd}, GraceEnds: &windowEnd,
			Keys: map[string]string{}, Counts: &rotationtable.RotationCounts{Phase: "open"}, NeedsAgentUpgrade: kept},
	} {
		var out bytes.Buffer
		if err := formatRotationStatus(&out, st); err != nil {
			t.Fatal(err)
		}
		text := out.String()
		for _, want := range []string{
			"Kept on plain HTTP, needs agent upgrade (2):",
			"XP-?[2J01  confirmed  2026-12-02T00:00:00Z  needs agent upgrade",
			"XP-02      not seen   -                     needs agent upgrade",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("rotation %v: output lacks %q:\n%s", st.Rotation, want, text)
			}
		}
	}
}

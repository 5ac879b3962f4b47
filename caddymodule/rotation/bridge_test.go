package rotation

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/legacygate/legacygate/caddymodule/internal/response"
)

const bridgeBlock = `plaintext_bridge {
	allow /secars/secars.dll /secreg/secreg.dll
	migration /secars/secars.dll action=index
	migration /secars/secars.dll action=sylink
	outside_window %s
}`

func newBridge(t *testing.T, a *App, block string) *PlaintextBridge {
	t.Helper()
	b, err := tryNewBridge(t, a, block)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tryNewBridge(t *testing.T, a *App, block string) (*PlaintextBridge, error) {
	t.Helper()
	b := new(PlaintextBridge)
	if err := b.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		return nil, err
	}
	if err := b.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return b, b.provision(ctx, a)
}

// passedNext records that the request was passed on, and reads its body.
type passedNext struct {
	called  bool
	readErr error
}

func (n *passedNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.called = true
	_, n.readErr = io.Copy(io.Discard, r.Body)
	w.WriteHeader(http.StatusOK)
	return nil
}

func TestPlaintextBridgePassesOnlyWhatTheWindowAllows(t *testing.T) {
	clock := &testClock{}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	bridges := map[string]*PlaintextBridge{}
	for _, mode := range []string{"migrate", "426", "403"} {
		bridges[mode] = newBridge(t, a, strings.Replace(bridgeBlock, "%s", mode, 1))
	}
	before, after := windowStart.Add(-time.Hour), windowEnd.Add(time.Hour)
	const (
		index   = "/secars/secars.dll?action=index&hostid=H1"
		sylink  = "/secars/secars.dll?action=sylink&hostid=H1"
		profile = "/secars/secars.dll?action=profile&hostid=H1"
		logUp   = "/secars/secars.dll?action=log&hostid=H1"
	)
	tests := []struct {
		name   string
		mode   string
		at     time.Time
		method string
		target string
		body   string
		status int // 0: passed on
	}{
		{"window: index", "migrate", inWindow, "GET", index, "", 0},
		{"window: profile", "migrate", inWindow, "GET", profile, "", 0},
		{"window: settings", "migrate", inWindow, "GET", sylink, "", 0},
		{"window: registration", "migrate", inWindow, "POST", "/secreg/secreg.dll?action=register", "hostname=pc1&group=g", 0},
		{"window: path not listed", "migrate", inWindow, "GET", "/admin/console", "", http.StatusForbidden},
		{"window: path case-insensitive", "migrate", inWindow, "GET", "/SECARS/SECARS.DLL?action=index&hostid=H1", "", 0},
		{"window: log upload", "migrate", inWindow, "POST", logUp, "log lines", http.StatusForbidden},
		{"window: body over max_body", "migrate", inWindow, "POST", "/secreg/secreg.dll?action=register", strings.Repeat("x", 65<<10), http.StatusRequestEntityTooLarge},
		{"before, migrate: index", "migrate", before, "GET", index, "", 0},
		{"before, migrate: settings", "migrate", before, "GET", sylink, "", 0},
		{"before, migrate: profile", "migrate", before, "GET", profile, "", http.StatusUpgradeRequired},
		{"after, migrate: settings", "migrate", after, "GET", sylink, "", 0},
		{"after, migrate: profile", "migrate", after, "GET", profile, "", http.StatusUpgradeRequired},
		{"after, migrate: registration", "migrate", after, "POST", "/secreg/secreg.dll?action=register", "hostname=pc1", http.StatusUpgradeRequired},
		{"after, migrate: log upload", "migrate", after, "POST", logUp, "log lines", http.StatusForbidden},
		{"after, 426: settings", "426", after, "GET", sylink, "", http.StatusUpgradeRequired},
		{"after, 403: settings", "403", after, "GET", sylink, "", http.StatusForbidden},
		{"after, 403: index", "403", after, "GET", index, "", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.Set(tt.at)
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			r := httptest.NewRequest(tt.method, tt.target, body)
			*r = *r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
			caddyhttp.NewTestReplacer(r)
			w := httptest.NewRecorder()
			next := &passedNext{}
			if err := bridges[tt.mode].ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			if tt.status == 0 {
				if !next.called || w.Code != http.StatusOK {
					t.Fatalf("not passed on: %d %s", w.Code, w.Body)
				}
				return
			}
			if next.called {
				t.Fatal("passed on; want a refusal")
			}
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d", w.Code, tt.status)
			}
			upgrade, conn := w.Header().Get("Upgrade"), w.Header().Get("Connection")
			if tt.status == http.StatusUpgradeRequired && (upgrade != "TLS/1.2" || conn != "Upgrade") {
				t.Fatalf("426 with Upgrade %q, Connection %q; want TLS/1.2, Upgrade", upgrade, conn)
			}
			if tt.status != http.StatusUpgradeRequired && upgrade != "" {
				t.Fatalf("%d carries Upgrade %q", w.Code, upgrade)
			}
		})
	}
}

func TestPlaintextBridgeCutsAChunkedBodyAtMaxBody(t *testing.T) {
	a := startApp(t, appBlock(t, t.TempDir(), "a"), &testClock{now: inWindow})
	b := newBridge(t, a, strings.Replace(bridgeBlock, "%s", "migrate", 1))
	r := clientRequest("POST", "/secreg/secreg.dll?action=register")
	r.Body = io.NopCloser(strings.NewReader(strings.Repeat("x", 100<<10)))
	r.ContentLength = -1
	next := &passedNext{}
	if err := b.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	var tooLarge *http.MaxBytesError
	if !errors.As(next.readErr, &tooLarge) {
		t.Fatalf("reading a 100 KiB chunked body behind max_body 64KiB: %v, want http.MaxBytesError", next.readErr)
	}
}

func TestPlaintextBridgeCountsClientsOnPlaintext(t *testing.T) {
	clock := &testClock{now: windowEnd.Add(time.Hour)}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	b := newBridge(t, a, strings.Replace(bridgeBlock, "%s", "426", 1))
	w := httptest.NewRecorder()
	if err := b.ServeHTTP(w, clientRequest("GET", "/secars/secars.dll?action=index&hostid=H7"), &passedNext{}); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusUpgradeRequired {
		t.Fatalf("status %d, want 426", w.Code)
	}
	if st, ok := a.table.Lookup("H7"); !ok || !st.SeenPlaintext {
		t.Fatalf("a refused plaintext heartbeat was not counted: %+v", st)
	}
	if c := a.table.Counts(clock.Now()); c.Plaintext != 1 {
		t.Fatalf("plaintext clients %d, want 1", c.Plaintext)
	}
}

func TestPlaintextBridgeRefusesDuplicateDecisionKeys(t *testing.T) {
	clock := &testClock{}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	b := newBridge(t, a, strings.Replace(bridgeBlock, "%s", "migrate", 1))
	outside := windowEnd.Add(time.Hour)
	tests := []struct {
		name   string
		at     time.Time
		method string
		target string
		status int // 0: passed on
		reason string
	}{
		{"outside: index then log", outside, "POST", "/secars/secars.dll?action=index&action=log&hostid=H1", http.StatusBadRequest, response.ReasonDuplicateKey},
		{"outside: log then index", outside, "POST", "/secars/secars.dll?action=log&action=index&hostid=H1", http.StatusBadRequest, response.ReasonDuplicateKey},
		{"outside: case variants of the name", outside, "POST", "/secars/secars.dll?ACTION=index&action=log&hostid=H1", http.StatusBadRequest, response.ReasonDuplicateKey},
		{"outside: escaped second name", outside, "GET", "/secars/secars.dll?action=sylink&act%69on=profile&hostid=H1", http.StatusBadRequest, response.ReasonDuplicateKey},
		{"outside: client id twice", outside, "GET", "/secars/secars.dll?action=index&hostid=H1&hostid=H2", http.StatusBadRequest, response.ReasonDuplicateKey},
		{"outside: client id twice, case variants", outside, "GET", "/secars/secars.dll?action=sylink&hostid=H1&HostID=h1", http.StatusBadRequest, response.ReasonDuplicateKey},
		{"outside: malformed escape in action", outside, "GET", "/secars/secars.dll?action=%zz&hostid=H1", http.StatusBadRequest, response.ReasonBadQuery},
		{"window: index then log", inWindow, "POST", "/secars/secars.dll?action=index&action=log&hostid=H1", http.StatusBadRequest, response.ReasonDuplicateKey},
		{"window: registration twice", inWindow, "POST", "/secreg/secreg.dll?action=register&action=register", http.StatusBadRequest, response.ReasonDuplicateKey},
		{"window: upper-case log is a log upload", inWindow, "POST", "/secars/secars.dll?action=LOG&hostid=H1", http.StatusForbidden, bridgeLogUpload},
		{"outside: upper-case name is the migration index", outside, "GET", "/secars/secars.dll?ACTION=index&hostid=H1", 0, bridgeMigration},
		{"outside: other keys may repeat", outside, "GET", "/secars/secars.dll?action=sylink&hostid=H1&x=1&x=2", 0, bridgeMigration},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.Set(tt.at)
			result := "refused"
			if tt.status == 0 {
				result = "passed"
			}
			counter := b.results.WithLabelValues(result, tt.reason)
			before := testutil.ToFloat64(counter)
			var body io.Reader
			if tt.method == "POST" {
				body = strings.NewReader("log lines")
			}
			r := httptest.NewRequest(tt.method, tt.target, body)
			*r = *r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
			caddyhttp.NewTestReplacer(r)
			w := httptest.NewRecorder()
			next := &passedNext{}
			if err := b.ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.status == 0 && (!next.called || w.Code != http.StatusOK):
				t.Fatalf("not passed on: %d %s", w.Code, w.Body)
			case tt.status != 0 && next.called:
				t.Fatal("passed on; want a refusal")
			case tt.status != 0 && w.Code != tt.status:
				t.Fatalf("status %d, want %d", w.Code, tt.status)
			}
			if got := testutil.ToFloat64(counter) - before; got != 1 {
				t.Fatalf("%s{%s} rose by %v, want 1", result, tt.reason, got)
			}
		})
	}
	if c := a.table.Counts(clock.Now()); c.Tracked != 1 {
		t.Fatalf("%d clients tracked, want 1 (H1, from the requests that passed)", c.Tracked)
	}
}

func TestPlaintextBridgeRefusesARepeatedClientIDBeforeCountingIt(t *testing.T) {
	clock := &testClock{now: windowEnd.Add(time.Hour)}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	b := newBridge(t, a, strings.Replace(bridgeBlock, "%s", "426", 1))
	w := httptest.NewRecorder()
	if err := b.ServeHTTP(w, clientRequest("GET", "/secars/secars.dll?action=index&hostid=H7&hostid=H8"), &passedNext{}); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusBadRequest {
		t.Fatalf("status %d, want 400", w.Code)
	}
	if c := a.table.Counts(clock.Now()); c.Tracked != 0 {
		t.Fatalf("%d clients tracked, want none", c.Tracked)
	}
	// A lower-case id is the client the manager knows in upper case.
	if err := b.ServeHTTP(httptest.NewRecorder(), clientRequest("GET", "/secars/secars.dll?action=index&hostid=h7"), &passedNext{}); err != nil {
		t.Fatal(err)
	}
	if st, ok := a.table.Lookup("H7"); !ok || !st.SeenPlaintext {
		t.Fatalf("hostid=h7 was not counted as H7 on plaintext: %+v", st)
	}
}

func TestPlaintextBridgeConfigErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name  string
		block string
		want  string
	}{
		{"no allow", "plaintext_bridge {\n migration action=sylink\n}", "allow: at least one path"},
		{"allow not a path", "plaintext_bridge {\n allow secars.dll\n migration action=sylink\n}", `allow: "secars.dll" does not start with /`},
		{"migrate without migration", "plaintext_bridge {\n allow /secars/*\n}", "migration: outside_window migrate needs"},
		{"bad outside_window", "plaintext_bridge {\n allow /secars/*\n outside_window 404\n}", `outside_window: "404" is not migrate, 426 or 403`},
		{"bad migration", "plaintext_bridge {\n allow /secars/*\n migration sylink\n}", `migration: "sylink" is neither a path`},
		{"bad max_body", "plaintext_bridge {\n allow /secars/*\n outside_window 426\n max_body lots\n}", `max_body: "lots" is not a size`},
		{"unknown", "plaintext_bridge {\n allow /secars/*\n windows 3\n}", `unknown subdirective "windows"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := new(PlaintextBridge)
			err := b.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.block))
			if err == nil {
				err = b.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestPlaintextBridgeNeedsTheApp(t *testing.T) {
	b := new(PlaintextBridge)
	if err := b.UnmarshalCaddyfile(caddyfile.NewTestDispenser(strings.Replace(bridgeBlock, "%s", "426", 1))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := b.Provision(ctx)
	if err == nil || !strings.Contains(err.Error(), "needs the legacygate global option") {
		t.Fatalf("error %v, want one naming the legacygate global option", err)
	}
}

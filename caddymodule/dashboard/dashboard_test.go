package dashboard

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/legacygate/legacygate/caddymodule/rotation"
	"github.com/legacygate/legacygate/policyguard"
)

// newDashboard parses block, provisions and validates the handler as Caddy
// does, and points it at app (nil: no legacygate app) and reg.
func newDashboard(t *testing.T, block string, app *rotation.App, reg *prometheus.Registry) *Dashboard {
	t.Helper()
	d, err := tryNewDashboard(t, block)
	if err != nil {
		t.Fatal(err)
	}
	d.app = app
	if reg != nil {
		d.gatherer = reg
	}
	return d
}

func tryNewDashboard(t *testing.T, block string) (*Dashboard, error) {
	t.Helper()
	d := new(Dashboard)
	if err := d.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		return nil, err
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := d.Provision(ctx); err != nil {
		return nil, err
	}
	return d, d.Validate()
}

func serve(t *testing.T, d *Dashboard, method, target, remote string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	r.RemoteAddr = remote
	w := httptest.NewRecorder()
	if err := d.ServeHTTP(w, r, nil); err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	return w
}

func TestDashboardAnswersOnlyLoopbackPeersUnlessAllowRemote(t *testing.T) {
	for _, tc := range []struct {
		name, block, remote string
		want                int
	}{
		{"IPv4 loopback", "legacygate_dashboard", "127.0.0.1:40000", http.StatusOK},
		{"other 127/8 address", "legacygate_dashboard", "127.3.2.1:40000", http.StatusOK},
		{"IPv6 loopback", "legacygate_dashboard", "[::1]:40000", http.StatusOK},
		{"remote IPv4", "legacygate_dashboard", "192.0.2.10:40000", http.StatusForbidden},
		{"remote IPv6", "legacygate_dashboard", "[2001:db8::1]:40000", http.StatusForbidden},
		{"IPv4-mapped remote", "legacygate_dashboard", "[::ffff:192.0.2.10]:40000", http.StatusForbidden},
		{"unparsable peer", "legacygate_dashboard", "somewhere", http.StatusForbidden},
		{"remote with allow_remote", "legacygate_dashboard {\n allow_remote\n}", "192.0.2.10:40000", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDashboard(t, tc.block, nil, nil)
			for _, target := range []string{"/", "/?format=json"} {
				if w := serve(t, d, http.MethodGet, target, tc.remote); w.Code != tc.want {
					t.Fatalf("GET %s from %s: %d, want %d: %s", target, tc.remote, w.Code, tc.want, w.Body)
				}
			}
		})
	}
}

// TestDashboardPageAllowsOnlyItsOwnScriptAndStyle proves the page carries
// no client data and loads nothing: its one script and one style are
// allowed by hash, nothing else is.
func TestDashboardPageAllowsOnlyItsOwnScriptAndStyle(t *testing.T) {
	d := newDashboard(t, "legacygate_dashboard {\n refresh 3s\n}", nil, nil)
	w := serve(t, d, http.MethodGet, "/", "127.0.0.1:1")
	if w.Code != http.StatusOK || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	page := w.Body.String()
	csp := w.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy %q allows unsafe sources", csp)
	}
	for _, tag := range []string{"script", "style"} {
		open, end := "<"+tag+">", "</"+tag+">"
		if strings.Count(page, open) != 1 {
			t.Fatalf("page has %d %s elements, want 1", strings.Count(page, open), open)
		}
		body := page[strings.Index(page, open)+len(open) : strings.Index(page, end)]
		sum := sha256.Sum256([]byte(body))
		if src := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, tag+"-src "+src) {
			t.Errorf("Content-Security-Policy %q does not allow the page's %s by its hash %s", csp, tag, src)
		}
	}
	for _, external := range []string{"src=", "http://", "https://", "@import", "url("} {
		if strings.Contains(page, external) {
			t.Errorf("page contains %q: it must load nothing", external)
		}
	}
	if !strings.Contains(page, `data-refresh="3000"`) {
		t.Error("page does not carry the refresh interval")
	}
	for _, h := range []string{"X-Content-Type-Options", "Cache-Control", "X-Frame-Options", "Referrer-Policy"} {
		if w.Header().Get(h) == "" {
			t.Errorf("page served without %s", h)
		}
	}
}

func TestDashboardRefusesOtherMethodsAndFormats(t *testing.T) {
	d := newDashboard(t, "legacygate_dashboard", nil, nil)
	for _, tc := range []struct {
		method, target string
		want           int
	}{
		{http.MethodPost, "/", http.StatusMethodNotAllowed},
		{http.MethodGet, "/?format=xml", http.StatusBadRequest},
		{http.MethodGet, "/?format=json&format=html", http.StatusBadRequest},
		{http.MethodGet, "/?format=%zz", http.StatusBadRequest},
		{http.MethodHead, "/?format=json", http.StatusOK},
	} {
		if w := serve(t, d, tc.method, tc.target, "127.0.0.1:1"); w.Code != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.target, w.Code, tc.want)
		}
	}
}

func TestDashboardConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ block, want string }{
		{"legacygate_dashboard {\n refresh 10ms\n}", "refresh"},
		{"legacygate_dashboard {\n refresh 2h\n}", "refresh"},
		{"legacygate_dashboard {\n stragglers 0\n}", "stragglers"},
		{"legacygate_dashboard {\n stragglers 1001\n}", "stragglers"},
		{"legacygate_dashboard {\n allow_remote yes\n}", "allow_remote"},
		{"legacygate_dashboard {\n refrsh 2s\n}", `unknown subdirective "refrsh"`},
		{"legacygate_dashboard extra", "wrong argument count"},
	} {
		_, err := tryNewDashboard(t, tc.block)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one naming %q", tc.block, err, tc.want)
		}
	}
}

// TestDashboardJSONReportsTheRotationAndTheMetrics checks the figures the
// page shows, from a running app and a registry as Caddy's.
func TestDashboardJSONReportsTheRotationAndTheMetrics(t *testing.T) {
	now := time.Now().UTC()
	app := startApp(t, now.Add(-time.Hour), now.Add(30*time.Minute))
	hostile := "<script>alert(1)</script>"
	app.ObserveHeartbeat(heartbeatRequest(hostile), true)
	app.ObserveHeartbeat(heartbeatRequest("GOOD-HOST"), false)

	reg := prometheus.NewPedanticRegistry()
	limit := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricHeartbeatLimit, Help: "test"}, []string{"outcome", "reason"})
	conns := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: metricConnections, Help: "test"}, []string{"state"})
	reg.MustRegister(limit, conns)
	limit.WithLabelValues("limited", "global").Add(7)
	limit.WithLabelValues("allowed", "keyed").Add(40)
	conns.WithLabelValues("idle").Set(3)

	d := newDashboard(t, "legacygate_dashboard {\n stragglers 5\n}", app, reg)
	w := serve(t, d, http.MethodGet, "/?format=json", "127.0.0.1:1")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET ?format=json: %d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body)
	}
	if strings.Contains(w.Body.String(), "<script>") {
		t.Error("the JSON carries a client id's markup unescaped")
	}
	var s Snapshot
	if err := json.Unmarshal(w.Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if s.Window == nil || !s.Window.Open || s.Window.Phase != "open" || s.Window.NextPhase != "grace" ||
		s.Window.SecondsLeft < 29*60 || s.Window.SecondsLeft > 30*60 {
		t.Errorf("window %+v, want open with about 30 minutes left", s.Window)
	}
	c := s.Rotation.Counts
	if c == nil || c.Tracked != 2 || c.Pending != 2 || c.Plaintext != 1 {
		t.Fatalf("counts %+v, want 2 pending, 1 on plaintext", c)
	}
	if st := s.Rotation.Stragglers; st == nil || st.Size != 5 || st.Total != 2 {
		t.Fatalf("stragglers %+v, want a page of 5 with 2 in all", st)
	}
	found := false
	for _, c := range s.Rotation.Stragglers.Clients {
		found = found || (c.Client == strings.ToUpper(hostile) && c.SeenPlaintext)
	}
	if !found {
		t.Errorf("stragglers %+v lack the plaintext client %q", s.Rotation.Stragglers.Clients, hostile)
	}
	if len(s.HeartbeatLimit) != 2 || s.HeartbeatLimit[0].Labels["outcome"] != "allowed" || s.HeartbeatLimit[1].Value != 7 {
		t.Errorf("heartbeat_limit %+v, want allowed keyed 40 then limited global 7", s.HeartbeatLimit)
	}
	if s.Upstream.Connections["idle"] != 3 {
		t.Errorf("upstream connections %+v, want 3 idle", s.Upstream.Connections)
	}
}

func TestDashboardWindowViewNamesThePhaseAndTheTimeLeft(t *testing.T) {
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	end, grace := start.Add(48*time.Hour), start.Add(72*time.Hour)
	for _, tc := range []struct {
		now         time.Time
		phase, next string
		open        bool
		left        int64
	}{
		{start.Add(-time.Minute), "before", "open", false, 60},
		{start, "open", "grace", true, 48 * 3600},
		{end.Add(-time.Second), "open", "grace", true, 1},
		{end, "grace", "after", false, 24 * 3600},
		{grace, "after", "", false, 0},
	} {
		w := windowView(tc.now, start, end, grace)
		if w.Phase != tc.phase || w.NextPhase != tc.next || w.Open != tc.open || w.SecondsLeft != tc.left {
			t.Errorf("at %s: %+v, want phase %s, next %q, open %v, %d s left", tc.now, w, tc.phase, tc.next, tc.open, tc.left)
		}
	}
}

// Test keys, made once per process: RSA generation is slow under -race.
var testKeyFiles = sync.OnceValues(func() ([4]string, error) {
	var files [4]string
	dir, err := os.MkdirTemp("", "legacygate-dashboard-keys-")
	if err != nil {
		return files, err
	}
	for i, name := range []string{"current", "next"} {
		key, cert, err := policyguard.GenerateSigningKey(2048, "dashboard test "+name)
		if err != nil {
			return files, err
		}
		keyPEM, certPEM, err := policyguard.EncodeKeyPair(key, cert)
		if err != nil {
			return files, err
		}
		files[2*i], files[2*i+1] = filepath.Join(dir, name+".key"), filepath.Join(dir, name+".crt")
		if err := os.WriteFile(files[2*i], keyPEM, 0o600); err != nil {
			return files, err
		}
		if err := os.WriteFile(files[2*i+1], certPEM, 0o644); err != nil {
			return files, err
		}
	}
	return files, nil
})

// startApp provisions and starts a legacygate app with a window from start
// to end; it is stopped when the test ends.
func startApp(t *testing.T, start, end time.Time) *rotation.App {
	t.Helper()
	f, err := testKeyFiles()
	if err != nil {
		t.Fatal(err)
	}
	block := "legacygate {\n signing_key current " + f[0] + " " + f[1] + "\n signing_key next " + f[2] + " " + f[3] +
		"\n instance_id dashboard-test\n storage file_system " + t.TempDir() +
		"\n rotation {\n  window " + start.Format(time.RFC3339) + " " + end.Format(time.RFC3339) + "\n  grace 1h\n  persist_interval 1h\n }\n}"
	a := new(rotation.App)
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = a.Stop()
		_ = a.Cleanup()
	})
	return a
}

// heartbeatRequest is a SEPM heartbeat of host as Caddy hands it on.
func heartbeatRequest(host string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/secars/secars.dll?action=index&hostid="+url.QueryEscape(host), nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	caddyhttp.NewTestReplacer(r)
	return r
}

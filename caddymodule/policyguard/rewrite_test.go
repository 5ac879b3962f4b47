package policyguard

import (
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beevik/etree"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/legacygate/legacygate/caddymodule/rotation"
	guardlib "github.com/legacygate/legacygate/policyguard"
)

func parseGuardRewrite(t *testing.T, block string) *GuardRewrite {
	t.Helper()
	d := caddyfile.NewTestDispenser(block)
	d.Next()
	rw, err := unmarshalGuardRewrite(d)
	if err != nil {
		t.Fatalf("parsing %q: %v", block, err)
	}
	return rw
}

const settingsDoc = `<ServerSettings><CommConf><ServerList><ServerPriorityBlock><Server Address="10.0.0.5" HttpPort="8014" HttpsPort="443"/></ServerPriorityBlock></ServerList></CommConf></ServerSettings>`

func TestGuardSigningRewritesSettingsWithTheCertificateOfTheWindow(t *testing.T) {
	clock := &testClock{now: windowStart.Add(-time.Hour)}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	rw := parseGuardRewrite(t, "rewrite {\n roots ServerSettings\n addresses gw.example.com\n https_port 443\n drop_http_only\n}")
	if err := rw.validate([]string{"Profile", "ServerSettings"}); err != nil {
		t.Fatal(err)
	}
	s, err := newGuardSigning("", "", rw, a)
	if err != nil {
		t.Fatal(err)
	}
	r := clientRequest("GET", "/secars/secars.dll?action=sylink&hostid=H1")
	current, _ := a.Signers()

	before := s.choose(r, []byte(settingsDoc))
	if before.signer != current || before.transform != s.current || before.anchorNext {
		t.Fatalf("before the window: signer current %v, rewrite with the current certificate %v, anchorNext %v",
			before.signer == current, before.transform == s.current, before.anchorNext)
	}
	if c := s.choose(r, []byte(`<Profile/>`)); c.transform != nil {
		t.Fatal("a profile was rewritten")
	}

	clock.Set(inWindow)
	in := s.choose(r, []byte(settingsDoc))
	if in.signer != current || in.transform != s.next || !in.anchorNext {
		t.Fatalf("in the window: signer current %v, rewrite with the next certificate %v, anchorNext %v",
			in.signer == current, in.transform == s.next, in.anchorNext)
	}
	s.served(r, in)
	if st, ok := a.Progress("H1"); !ok || !st.AnchorFetched.Equal(inWindow) {
		t.Fatalf("serving the next certificate did not record the anchor fetch: %+v", st)
	}
}

func TestGuardSigningWithItsOwnKeyEmbedsItsOwnCertificate(t *testing.T) {
	k := testRotationKeys(t)
	rw := parseGuardRewrite(t, "rewrite {\n addresses gw.example.com\n https_port 443\n}")
	s, err := newGuardSigning(k.nextKey, k.nextCert, rw, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := s.choose(clientRequest("GET", "/?hostid=H1"), []byte(settingsDoc))
	if c.signer.KeyID() != k.next.KeyID() || c.transform == nil || c.anchorNext {
		t.Fatalf("own key: signer %s, transform %v, anchorNext %v", c.signer.KeyID(), c.transform, c.anchorNext)
	}
	if !strings.HasPrefix(c.transform.ID(), "rewrite/v1:") {
		t.Fatalf("transform id %q", c.transform.ID())
	}
}

func TestGuardRewriteConfigErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name  string
		block string
		want  string
	}{
		{"root not signed", "rewrite {\n roots SyLink\n addresses gw\n https_port 443\n}", `rewrite: roots: "SyLink" is not among policy_guard's roots`},
		{"no addresses", "rewrite {\n https_port 443\n}", "addresses"},
		{"no https_port", "rewrite {\n addresses gw\n}", "https_port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := parseGuardRewrite(t, tt.block).validate([]string{"Profile", "ServerSettings"})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
	for _, block := range []string{
		"rewrite {\n https_port 70000\n}",
		"rewrite {\n protocol_attr UseHttps 1\n}",
		"rewrite {\n certificate x\n}",
	} {
		d := caddyfile.NewTestDispenser(block)
		d.Next()
		if _, err := unmarshalGuardRewrite(d); err == nil {
			t.Errorf("%q parsed", block)
		}
	}
}

func TestGuardSigningNeedsAKeyOrTheApp(t *testing.T) {
	_, err := newGuardSigning("", "", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "signing_key: not set, and there is no legacygate global option") {
		t.Fatalf("error %v", err)
	}
}

// holdLab is a policy_guard with the real pipeline, its keys from a
// rotation app, in front of a fake manager that signs with its own key.
type holdLab struct {
	app     *rotation.App
	clock   *testClock
	guard   *testGuard
	signed  map[string][]byte // manager-signed documents by root
	debug   *observer.ObservedLogs
	results *prometheus.CounterVec
}

func startHoldLab(t *testing.T, rotationLines ...string) *holdLab {
	t.Helper()
	dir := t.TempDir()
	mKey, mCert, err := guardlib.GenerateSigningKey(2048, "manager")
	if err != nil {
		t.Fatal(err)
	}
	_, mPEM, err := guardlib.EncodeKeyPair(mKey, mCert)
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(dir, "manager.crt")
	if err := os.WriteFile(certFile, mPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := guardlib.NewSigner(mKey, mCert)
	if err != nil {
		t.Fatal(err)
	}
	l := &holdLab{clock: &testClock{now: inWindow}, signed: map[string][]byte{}}
	for root, doc := range map[string]string{"Profile": `<Profile Serial="7"><Rule Name="manager-rule"/></Profile>`, "ServerSettings": settingsDoc} {
		d := etree.NewDocument()
		if err := d.ReadFromString(doc); err != nil {
			t.Fatal(err)
		}
		if l.signed[root], err = signer.Sign(d.Root()); err != nil {
			t.Fatal(err)
		}
	}
	l.app = startApp(t, appBlock(t, dir, "a", rotationLines...), l.clock)
	core, logs := observer.New(zapcore.DebugLevel)
	l.debug = logs
	l.results = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "results"}, []string{"result", "reason"})
	g := &PolicyGuard{
		UpstreamCerts: []string{certFile},
		Roots:         []string{"Profile", "ServerSettings"},
		Rewrite:       parseGuardRewrite(t, rewriteBlock),
		MaxSize:       1 << 20,
		CacheSize:     1 << 20,
		logger:        zap.New(core),
		results:       l.results,
	}
	cache := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cache"}, []string{"result"})
	if err := g.provisionPipeline(cache, l.app); err != nil {
		t.Fatal(err)
	}
	l.guard = &testGuard{PolicyGuard: g, logs: logs}
	return l
}

// fetch asks for root's document as host and returns the response.
func (l *holdLab) fetch(t *testing.T, root, host string) *httptest.ResponseRecorder {
	t.Helper()
	action := map[string]string{"Profile": "profile", "ServerSettings": "sylink"}[root]
	m := &fakeManager{status: 200, body: string(l.signed[root]), header: map[string]string{
		"Content-Type": "text/xml", "Etag": `"mgr-1"`, "X-Manager": "sepm",
	}}
	return serve(t, l.guard, clientRequest("GET", "/secars/secars.dll?action="+action+"&hostid="+host), m)
}

// signedWith reports which of the app's certificates verifies w's body.
func (l *holdLab) signedWith(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	if w.Code != http.StatusOK {
		return "status " + strconv.Itoa(w.Code)
	}
	current, next := l.app.Signers()
	for name, s := range map[string]*guardlib.Signer{"current": current, "next": next} {
		v, err := guardlib.NewVerifier([]*x509.Certificate{s.Cert()}, guardlib.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(w.Body.Bytes()); err == nil {
			return name
		}
	}
	return "neither"
}

func TestPolicyGuardHoldsPayloadsUntilTheClientConfirms(t *testing.T) {
	for _, root := range []string{"Profile", "ServerSettings"} {
		t.Run(root, func(t *testing.T) {
			l := startHoldLab(t, "hold_retry_after 7s")
			heartbeat(l.app, "H1")
			fetchAnchor(l.app, "H1")
			heartbeat(l.app, "H2") // pending: never fetched the anchor

			w := l.fetch(t, root, "H1")
			if w.Code != http.StatusServiceUnavailable {
				t.Fatalf("anchor fetched, unconfirmed: status %d, want 503", w.Code)
			}
			h := w.Header()
			if h.Get("Retry-After") != "7" || h.Get("Cache-Control") != "no-store" {
				t.Errorf("Retry-After %q, Cache-Control %q; want 7 and no-store", h.Get("Retry-After"), h.Get("Cache-Control"))
			}
			if w.Body.String() != holdBody || h.Get("Content-Length") != strconv.Itoa(len(holdBody)) {
				t.Errorf("body %q (Content-Length %q), want %q", w.Body.String(), h.Get("Content-Length"), holdBody)
			}
			if h.Get("X-Manager") != "" || h.Get("Etag") != "" || strings.Contains(w.Body.String(), root) {
				t.Errorf("manager headers or bytes leaked into the hold: %v %q", h, w.Body.String())
			}
			if got := l.guard.resultCount(resultHeld, reasonAwaitingConfirmation); got != 1 {
				t.Errorf("held/awaiting_confirmation counted %v, want 1", got)
			}
			if got := l.guard.resultCount(resultRefused, reasonSignFailed); got != 0 {
				t.Errorf("a hold was counted as a refusal")
			}
			if n := l.debug.FilterMessageSnippet("held").FilterLevelExact(zapcore.DebugLevel).Len(); n != 1 {
				t.Errorf("%d debug lines for the hold, want 1", n)
			}
			if n := l.debug.FilterLevelExact(zapcore.WarnLevel).Len(); n != 0 {
				t.Errorf("%d warnings for a hold, want none (it can be frequent)", n)
			}
			if st, _ := l.app.Progress("H1"); !st.AnchorFetched.Equal(inWindow) {
				t.Errorf("the hold changed the anchor fetch: %+v", st)
			}

			if got := l.signedWith(t, l.fetch(t, root, "H2")); got != "current" {
				t.Errorf("a client that never fetched the anchor: %s, want current", got)
			}
			for range 3 {
				l.clock.Set(l.clock.Now().Add(time.Minute))
				heartbeat(l.app, "H1") // the unsigned heartbeats still count
			}
			if got := l.signedWith(t, l.fetch(t, root, "H1")); got != "next" {
				t.Errorf("after confirming: %s, want next", got)
			}
		})
	}
}

func TestPolicyGuardHoldFollowsTheRotationPhase(t *testing.T) {
	tests := []struct {
		name string
		at   time.Time
		want string
	}{
		{"in the window", inWindow.Add(time.Hour), "status 503"},
		{"in the grace", windowEnd.Add(24 * time.Hour), "status 503"},
		{"after the grace", windowEnd.Add(91 * 24 * time.Hour), "next"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := startHoldLab(t)
			heartbeat(l.app, "H1")
			fetchAnchor(l.app, "H1")
			l.clock.Set(tt.at)
			w := l.fetch(t, "Profile", "H1")
			if got := l.signedWith(t, w); got != tt.want {
				t.Fatalf("anchor fetched, unconfirmed, %s: %s, want %s", tt.name, got, tt.want)
			}
			if w.Code == http.StatusServiceUnavailable && w.Header().Get("Retry-After") != "60" {
				t.Fatalf("default Retry-After %q, want 60", w.Header().Get("Retry-After"))
			}
		})
	}
}

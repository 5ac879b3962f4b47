package policyguard

import (
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/legacygate/legacygate/caddymodule/rotation"
	"github.com/legacygate/legacygate/internal/xmlscan"
)

const (
	sepmIndex      = `<?xml version="1.0" encoding="UTF-8"?><Index><Profile Checksum="C1" SerialNumber="A3AF-01/30/2012 23:50:54 284" LastModifiedTime="1"/><SyLink Serial="S-7"/></Index>`
	rewriteBlock   = "rewrite {\n roots ServerSettings\n addresses gw.example.com\n https_port 443\n}"
	rewriteDropped = "rewrite {\n roots ServerSettings\n addresses gw.example.com\n https_port 443\n drop_http_only\n}"
)

var suffixedSerial = regexp.MustCompile(`^S-7-lg[0-9a-f]{8}$`)

// indexGuard is a test guard whose settings rewrite is rw (a rewrite
// block), its keys from app, or its own when app is nil.
func indexGuard(t *testing.T, block string, app *rotation.App) *testGuard {
	t.Helper()
	rw := parseGuardRewrite(t, block)
	if err := rw.validate([]string{"Profile", "ServerSettings"}); err != nil {
		t.Fatal(err)
	}
	var keyFile, certFile string
	if app == nil {
		k := testRotationKeys(t)
		keyFile, certFile = k.currentKey, k.currentCert
	}
	s, err := newGuardSigning(keyFile, certFile, rw, app)
	if err != nil {
		t.Fatal(err)
	}
	g := newTestGuard(t, 1<<20)
	g.heartbeat = s.observe
	g.index = newIndexSerial(rw, s)
	return g
}

// indexManager answers the index with validators the gateway must drop.
func indexManager(body string) *fakeManager {
	return &fakeManager{status: 200, body: body, header: map[string]string{
		"Content-Type": "text/xml", "Etag": `"mgr-1"`, "Last-Modified": "Mon, 30 Jan 2012 23:50:54 GMT",
	}}
}

// heartbeatSerial sends host's heartbeat through g and returns the
// SyLink serial the client sees, after checking the response's framing.
func heartbeatSerial(t *testing.T, g *testGuard, host string) string {
	t.Helper()
	req := clientRequest("GET", "/secars/secars.dll?action=index&hostid="+host)
	w := serve(t, g, req, indexManager(sepmIndex))
	body := w.Body.Bytes()
	if w.Code != http.StatusOK {
		t.Fatalf("index: status %d", w.Code)
	}
	if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Fatalf("Content-Length %q for a %d-byte body", cl, len(body))
	}
	if w.Header().Get("Etag") != "" || w.Header().Get("Last-Modified") != "" {
		t.Fatalf("the manager's validators were kept on a changed body: %v", w.Header())
	}
	var ix struct {
		Profile struct {
			SerialNumber string `xml:"SerialNumber,attr"`
		}
		SyLink struct {
			Serial string `xml:"Serial,attr"`
		}
	}
	if err := xml.Unmarshal(body, &ix); err != nil {
		t.Fatalf("the index no longer parses: %v\n%s", err, body)
	}
	if ix.Profile.SerialNumber != "A3AF-01/30/2012 23:50:54 284" {
		t.Fatalf("the profile serial changed: %q", ix.Profile.SerialNumber)
	}
	return ix.SyLink.Serial
}

func TestIndexSerialChangesWhenTheWindowOpensAndIsStableAcrossHeartbeats(t *testing.T) {
	clock := &testClock{now: windowStart.Add(-time.Hour)}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	g := indexGuard(t, rewriteBlock, a)

	before := heartbeatSerial(t, g, "H1")
	if !suffixedSerial.MatchString(before) {
		t.Fatalf("serial before the window %q, want the manager's with -lg and 8 hex digits", before)
	}
	for range 3 {
		clock.Set(clock.Now().Add(time.Minute))
		if s := heartbeatSerial(t, g, "H1"); s != before {
			t.Fatalf("unchanged settings, serial moved from %q to %q", before, s)
		}
	}
	if s := heartbeatSerial(t, g, "H2"); s != before {
		t.Fatalf("another client with the same settings sees %q, not %q", s, before)
	}

	clock.Set(inWindow)
	opened := heartbeatSerial(t, g, "H1")
	if opened == before || !suffixedSerial.MatchString(opened) {
		t.Fatalf("serial when the window opens %q; before it %q", opened, before)
	}
	fetchAnchor(a, "H1")
	for i := range 3 {
		clock.Set(clock.Now().Add(time.Minute))
		if s := heartbeatSerial(t, g, "H1"); s != opened {
			t.Fatalf("heartbeat %d in the window: serial %q, want %q", i+1, s, opened)
		}
	}
	// Each index request was one heartbeat: the three after the anchor fetch.
	if st, _ := a.Progress("H1"); st.HeartbeatsSince != 3 {
		t.Fatalf("heartbeats since the anchor fetch %d, want 3", st.HeartbeatsSince)
	}
	if keyFor(a, "H1") != "next" {
		t.Fatal("a client that confirmed through the rewritten index is not on the next key")
	}
}

func TestIndexSerialDiffersWhereTheSettingsDiffer(t *testing.T) {
	https := heartbeatSerial(t, indexGuard(t, rewriteBlock, nil), "H1")
	again := heartbeatSerial(t, indexGuard(t, rewriteBlock, nil), "H1")
	plain := heartbeatSerial(t, indexGuard(t, rewriteDropped, nil), "H1")
	if https != again {
		t.Fatalf("the same rewrite gave %q and %q (a reload would make every client refetch)", https, again)
	}
	if plain == https {
		t.Fatalf("HTTPS listener and drop_http_only listener both give %q", plain)
	}
}

func TestIndexSerialPassesOtherIndexesUnchanged(t *testing.T) {
	deep := strings.Repeat("<a>", xmlscan.MaxDepth) + `<SyLink Serial="1"/>` + strings.Repeat("</a>", xmlscan.MaxDepth)
	tests := []struct {
		name   string
		body   string
		logged bool
	}{
		{"no SyLink element", `<Index><Profile SerialNumber="1"/></Index>`, false},
		{"no Serial attribute", `<Index><SyLink Version="1"/></Index>`, false},
		{"serial on the root only", `<Index Serial="1"/>`, false},
		{"serial in a comment", `<Index><!-- <SyLink Serial="1"/> --></Index>`, false},
		{"serial in CDATA", `<Index><![CDATA[<SyLink Serial="1"/>]]></Index>`, false},
		{"unclosed root", `<Index><SyLink Serial="1"/>`, true},
		{"mismatched end tag", `<Index><SyLink Serial="1"></Sylink></Index>`, true},
		{"second root", `<Index><SyLink Serial="1"/></Index><Index/>`, true},
		{"text after the root", `<Index><SyLink Serial="1"/></Index>junk`, true},
		{"unquoted attribute", `<Index><SyLink Serial=1/></Index>`, true},
		{"attribute given twice", `<Index><SyLink Serial="1" Serial="2"/></Index>`, true},
		{"attributes not separated", `<Index><SyLink A="0"Serial="1"/></Index>`, true},
		{"'<' in a value", `<Index><SyLink Serial="<1"/></Index>`, true},
		{"unterminated comment", `<Index><SyLink Serial="1"/><!-- </Index>`, true},
		{"too deep", `<Index>` + deep + `</Index>`, true},
		{"over 64 KiB", `<Index><SyLink Serial="1"/>` + strings.Repeat("<P/>", maxIndexBytes/4) + `</Index>`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := indexGuard(t, rewriteBlock, nil)
			w := serve(t, g, clientRequest("GET", "/secars/secars.dll?action=index&hostid=H1"), indexManager(tt.body))
			if w.Body.String() != tt.body || w.Header().Get("Content-Length") != strconv.Itoa(len(tt.body)) {
				t.Fatalf("index changed: %q (Content-Length %s)", w.Body.String(), w.Header().Get("Content-Length"))
			}
			if w.Header().Get("Etag") != `"mgr-1"` {
				t.Fatal("an unchanged index lost the manager's ETag")
			}
			if n := g.logs.FilterMessage("index passed without its settings serial rewritten").Len(); (n == 1) != tt.logged {
				t.Fatalf("%d log lines, want logged=%v", n, tt.logged)
			}
			if g.resultCount(resultPassed, reasonUnlistedRoot) != 1 {
				t.Fatal("not counted as passed unlisted root")
			}
		})
	}
}

func TestIndexSerialConfiguration(t *testing.T) {
	tests := []struct {
		name, line, body, want string
	}{
		{"off", "index_serial off", sepmIndex, sepmIndex},
		{"other shape", "index_serial Heartbeat Settings Version",
			`<hb:Heartbeat xmlns:hb="urn:x"><hb:Settings Version='9'/><Settings Version="0"/></hb:Heartbeat>`,
			`<hb:Heartbeat xmlns:hb="urn:x"><hb:Settings Version='9-lg`},
		{"other shape leaves the SEPM index", "index_serial Heartbeat Settings Version", sepmIndex, sepmIndex},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := indexGuard(t, strings.Replace(rewriteBlock, "\n}", "\n "+tt.line+"\n}", 1), nil)
			w := serve(t, g, clientRequest("GET", "/?hostid=H1"), indexManager(tt.body))
			if !strings.HasPrefix(w.Body.String(), tt.want) {
				t.Fatalf("got %q, want it to start with %q", w.Body.String(), tt.want)
			}
		})
	}
}

func TestIndexSerialConfigErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name, line, want string
	}{
		{"two names", "index_serial Index SyLink", "index_serial: want off, or <root> <element> <attribute>"},
		{"no value", "index_serial", "index_serial: want off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(strings.Replace(rewriteBlock, "\n}", "\n "+tt.line+"\n}", 1))
			d.Next()
			if _, err := unmarshalGuardRewrite(d); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
	invalid := []struct {
		name string
		cfg  IndexSerial
		want string
	}{
		{"signed root", IndexSerial{Root: "Profile", Element: "SyLink", Attribute: "Serial"}, `index_serial: root "Profile" is among policy_guard's signed roots`},
		{"off with names", IndexSerial{Off: true, Root: "Index"}, "index_serial: off takes no root"},
		{"bad name", IndexSerial{Element: "Sy Link"}, `index_serial: "Sy Link" is not an XML name`},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			rw := parseGuardRewrite(t, rewriteBlock)
			rw.IndexSerial = &tt.cfg
			if err := rw.validate([]string{"Profile", "ServerSettings"}); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestIndexSerialHeadHasTheRewrittenLength(t *testing.T) {
	g := indexGuard(t, rewriteBlock, nil)
	get := serve(t, g, clientRequest("GET", "/?hostid=H1"), indexManager(sepmIndex))
	head := serve(t, g, clientRequest("HEAD", "/?hostid=H1"), indexManager(sepmIndex))
	if head.Body.Len() != 0 || head.Header().Get("Content-Length") != strconv.Itoa(get.Body.Len()) {
		t.Fatalf("HEAD: %d body bytes, Content-Length %q; GET body %d bytes",
			head.Body.Len(), head.Header().Get("Content-Length"), get.Body.Len())
	}
	if get.Body.Len() != len(sepmIndex)+len("-lg12345678") {
		t.Fatalf("GET body %d bytes, want the manager's %d plus the suffix", get.Body.Len(), len(sepmIndex))
	}
}

func newBenchGuard() *PolicyGuard {
	core, _ := observer.New(zapcore.InfoLevel)
	return &PolicyGuard{
		Roots: []string{"Profile", "ServerSettings"}, MaxSize: defaultPolicyMaxSize, pipeline: new(fakeResigner), logger: zap.New(core),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"result", "reason"}),
	}
}

// BenchmarkPolicyGuardIndex compares the heartbeat answer passed through
// unchanged (index_serial off) with the serial rewrite, in the same run.
func BenchmarkPolicyGuardIndex(b *testing.B) {
	k := testRotationKeys(b)
	for _, bc := range []struct{ name, line string }{{"pass_through", "index_serial off"}, {"serial_rewrite", ""}} {
		d := caddyfile.NewTestDispenser(strings.Replace(rewriteBlock, "\n}", "\n "+bc.line+"\n}", 1))
		d.Next()
		rw, err := unmarshalGuardRewrite(d)
		if err != nil {
			b.Fatal(err)
		}
		s, err := newGuardSigning(k.currentKey, k.currentCert, rw, nil)
		if err != nil {
			b.Fatal(err)
		}
		g := newBenchGuard()
		g.index = newIndexSerial(rw, s)
		m := indexManager(sepmIndex)
		req := httptest.NewRequest("GET", "/secars/secars.dll?action=index&hostid=H1", nil)
		b.Run(bc.name, func(b *testing.B) {
			w := &discardWriter{header: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.header)
				if err := g.ServeHTTP(w, req, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package policyguard

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beevik/etree"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/legacygate/legacygate/caddymodule/internal/response"
	guardlib "github.com/legacygate/legacygate/policyguard"
	"github.com/legacygate/legacygate/rewrite"
)

// fakeResigner accepts a document that contains "<Signature>" and not
// "tampered", and returns a fixed "gateway-signed" document.
type fakeResigner struct {
	calls int
}

const fakeSigned = `<Profile Serial="1"><Signature>gateway</Signature></Profile>`

func (f *fakeResigner) resign(_ *http.Request, doc []byte) (signedPayload, error) {
	f.calls++
	if !bytes.Contains(doc, []byte("<Signature>")) {
		return signedPayload{}, &response.Refusal{Reason: "no_signature", Err: errors.New("document is not signed")}
	}
	if bytes.Contains(doc, []byte("tampered")) {
		return signedPayload{}, &response.Refusal{Reason: "digest_mismatch", Err: errors.New("digest does not match")}
	}
	return signedPayload{body: []byte(fakeSigned), etag: `"gw-1"`}, nil
}

type testGuard struct {
	*PolicyGuard
	fake *fakeResigner
	logs *observer.ObservedLogs
}

func newTestGuard(t *testing.T, maxSize int64) *testGuard {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	fake := new(fakeResigner)
	g := &PolicyGuard{
		Roots:    []string{"Profile", "ServerSettings"},
		MaxSize:  maxSize,
		pipeline: fake,
		logger:   zap.New(core),
		results:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "results"}, []string{"result", "reason"}),
		pinned:   []string{"AA:BB"},
	}
	return &testGuard{PolicyGuard: g, fake: fake, logs: logs}
}

func (g *testGuard) resultCount(result, reason string) float64 {
	return testutil.ToFloat64(g.results.WithLabelValues(result, reason))
}

// manager answers like reverse_proxy: headers, status, then the body, and an
// error (or ErrAbortHandler panic) when the body was cut.
type fakeManager struct {
	status  int
	header  map[string]string
	body    string
	cutAt   int         // write only body[:cutAt], then fail; 0: write everything
	panics  bool        // fail the reverse_proxy way, by panicking with ErrAbortHandler
	lines   http.Header // added after header, one line per value (repeated headers)
	seenReq *http.Request
}

func (m *fakeManager) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	m.seenReq = r
	for k, v := range m.header {
		w.Header().Set(k, v)
	}
	for k, vs := range m.lines {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	if _, ok := m.header["Content-Length"]; !ok {
		w.Header().Set("Content-Length", strconv.Itoa(len(m.body)))
	}
	w.WriteHeader(m.status)
	if m.body == "" {
		return nil
	}
	if m.cutAt == 0 {
		_, err := io.WriteString(w, m.body)
		return err
	}
	if _, err := io.WriteString(w, m.body[:m.cutAt]); err != nil {
		return err
	}
	if m.panics {
		panic(http.ErrAbortHandler)
	}
	return errors.New("reading body from upstream: unexpected EOF")
}

func serve(t *testing.T, g *testGuard, req *http.Request, m *fakeManager) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	w.Header().Set("Server", "Caddy")
	if err := g.ServeHTTP(w, req, m); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	return w
}

const (
	signedProfile   = `<?xml version="1.0"?><Profile Serial="1"><Rules/><Signature>manager</Signature></Profile>`
	unsignedProfile = `<?xml version="1.0"?><Profile Serial="1"><Rules/></Profile>`
	indexDoc        = `<Index><Profile Serial="1"/></Index>`
)

func TestPolicyGuardRefusesWithoutForwardingManagerBytes(t *testing.T) {
	tests := []struct {
		name    string
		maxSize int64
		m       fakeManager
		reason  string
	}{
		{"unsigned listed root", 0, fakeManager{status: 200, body: unsignedProfile}, "no_signature"},
		{"tampered body", 0, fakeManager{status: 200, body: strings.Replace(signedProfile, "Rules", "tampered", 1)}, "digest_mismatch"},
		{"namespaced listed root", 0, fakeManager{status: 200, body: `<p:ServerSettings xmlns:p="urn:x"/>`}, "no_signature"},
		{"body cut, next returns an error", 0, fakeManager{status: 200, body: signedProfile, cutAt: 20}, reasonIncomplete},
		{"body cut, reverse_proxy panics", 0, fakeManager{status: 200, body: signedProfile, cutAt: 20, panics: true}, reasonIncomplete},
		{"fewer bytes than Content-Length", 0, fakeManager{status: 200, body: signedProfile, header: map[string]string{"Content-Length": "4096"}}, reasonIncomplete},
		{"over max_size by Content-Length", 32, fakeManager{status: 200, body: signedProfile}, reasonTooLarge},
		{"over max_size without Content-Length", 32, fakeManager{status: 200, body: signedProfile, header: map[string]string{"Content-Length": ""}}, reasonTooLarge},
		{"gzip although identity was asked", 0, fakeManager{status: 200, body: "\x1f\x8b\x08\x00manager-bytes", header: map[string]string{"Content-Encoding": "gzip"}}, reasonContentEncoding},
		{"partial content", 0, fakeManager{status: 206, body: signedProfile[:40]}, reasonPartialContent},
		{"UTF-16 document", 0, fakeManager{status: 200, body: "\xff\xfe<\x00P\x00"}, reasonXMLEncoding},
		{"unterminated comment before the root", 0, fakeManager{status: 200, body: "<!-- <Index/> "}, reasonMalformed},
		{"CDATA before the root", 0, fakeManager{status: 200, body: "<![CDATA[x]]><Profile/>"}, reasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			maxSize := tc.maxSize
			if maxSize == 0 {
				maxSize = defaultPolicyMaxSize
			}
			g := newTestGuard(t, maxSize)
			m := tc.m
			if m.header == nil {
				m.header = map[string]string{}
			}
			m.header["X-Manager"] = "secret"
			m.header["Etag"] = `"manager-etag"`
			w := serve(t, g, httptest.NewRequest("GET", "/secars/secars.dll?action=profile", nil), &m)

			if w.Code != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", w.Code)
			}
			body := w.Body.String()
			if body != refusalBody {
				t.Errorf("client received %q, want only the gateway's refusal", body)
			}
			for _, k := range []string{"X-Manager", "Etag", "Content-Encoding"} {
				if v := w.Header().Get(k); v != "" {
					t.Errorf("client received manager header %s: %q", k, v)
				}
			}
			if got := w.Header().Get("Content-Length"); got != strconv.Itoa(len(body)) {
				t.Errorf("Content-Length %q for a %d-byte body", got, len(body))
			}
			if w.Header().Get("Server") != "Caddy" {
				t.Errorf("the gateway's own headers were lost: %v", w.Header())
			}
			if got := g.resultCount(resultRefused, tc.reason); got != 1 {
				t.Errorf("refused/%s counted %v times, want 1", tc.reason, got)
			}
			entries := g.logs.FilterMessage("policy payload refused").All()
			if len(entries) != 1 {
				t.Fatalf("%d refusal log lines, want 1", len(entries))
			}
			fields := entries[0].ContextMap()
			if fields["reason"] != tc.reason || fields["path"] != "/secars/secars.dll" {
				t.Errorf("log fields %v, want reason %s and path /secars/secars.dll", fields, tc.reason)
			}
			if _, ok := fields["pinned"]; !ok {
				t.Errorf("log line lacks pinned fingerprints: %v", fields)
			}
		})
	}
}

func TestPolicyGuardSignsListedRoots(t *testing.T) {
	g := newTestGuard(t, defaultPolicyMaxSize)
	m := &fakeManager{status: 200, body: signedProfile, header: map[string]string{
		"Etag": `"manager-etag"`, "Last-Modified": "Mon, 02 Jan 2006 15:04:05 GMT",
		"Content-Type": "text/xml", "Accept-Ranges": "bytes",
	}}
	w := serve(t, g, httptest.NewRequest("GET", "/secars/secars.dll?action=profile", nil), m)

	if w.Code != 200 || w.Body.String() != fakeSigned {
		t.Fatalf("got %d %q, want 200 and the gateway-signed document", w.Code, w.Body.String())
	}
	want := map[string]string{
		"Content-Length": strconv.Itoa(len(fakeSigned)), "Etag": `"gw-1"`,
		"Last-Modified": "", "Accept-Ranges": "", "Content-Type": "text/xml",
	}
	for k, v := range want {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if got := g.resultCount(resultSigned, reasonVerified); got != 1 {
		t.Errorf("signed/verified counted %v times, want 1", got)
	}
}

func TestPolicyGuardAsksManagerForWholeIdentityBody(t *testing.T) {
	g := newTestGuard(t, defaultPolicyMaxSize)
	m := &fakeManager{status: 200, body: signedProfile}
	req := httptest.NewRequest("GET", "/secars/secars.dll", nil)
	for k, v := range map[string]string{
		"Accept-Encoding": "gzip, br", "Range": "bytes=0-10", "If-Range": `"x"`,
		"If-None-Match": `"x"`, "If-Modified-Since": "Mon, 02 Jan 2006 15:04:05 GMT",
	} {
		req.Header.Set(k, v)
	}
	serve(t, g, req, m)
	up := m.seenReq.Header
	if got := up.Get("Accept-Encoding"); got != "identity" {
		t.Errorf("Accept-Encoding upstream %q, want identity", got)
	}
	for _, k := range []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since"} {
		if v := up.Get(k); v != "" {
			t.Errorf("%s forwarded to the manager: %q", k, v)
		}
	}
}

func TestPolicyGuardPassesUnlistedAndNonPolicyResponses(t *testing.T) {
	tests := []struct {
		name   string
		m      fakeManager
		reason string
	}{
		{"index document", fakeManager{status: 200, body: indexDoc}, reasonUnlistedRoot},
		{"index after prolog and DOCTYPE", fakeManager{status: 200, body: `<?xml version="1.0"?><!-- c --><!DOCTYPE Index [<!ENTITY a "]>"> <!-- ]> -->]>` + "\n" + indexDoc}, reasonUnlistedRoot},
		{"hello probe of a listed media type", fakeManager{status: 200, body: "OK"}, reasonNotXML},
		{"empty body", fakeManager{status: 200, body: ""}, reasonNoBody},
		{"bad request", fakeManager{status: 400, body: "4 Bad format."}, reasonStatus},
		{"manager error with an XML body", fakeManager{status: 503, body: unsignedProfile}, reasonStatus},
		{"no content", fakeManager{status: 204}, reasonStatus},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newTestGuard(t, defaultPolicyMaxSize)
			g.allowNonXML = []string{"text/plain"}
			m := tc.m
			m.header = map[string]string{"X-Manager": "kept", "Etag": `"m"`, "Content-Type": "text/plain"}
			w := serve(t, g, httptest.NewRequest("GET", "/secars/secars.dll", nil), &m)
			if w.Code != m.status || w.Body.String() != m.body {
				t.Errorf("got %d %q, want %d %q unchanged", w.Code, w.Body.String(), m.status, m.body)
			}
			if w.Header().Get("X-Manager") != "kept" || w.Header().Get("Etag") != `"m"` {
				t.Errorf("manager headers not passed: %v", w.Header())
			}
			if g.fake.calls != 0 {
				t.Errorf("resigner called %d times for a response out of scope", g.fake.calls)
			}
			if got := g.resultCount(resultPassed, tc.reason); got != 1 {
				t.Errorf("passed/%s counted %v times, want 1", tc.reason, got)
			}
		})
	}
}

func TestPolicyGuardHeadIsVerifiedAsGet(t *testing.T) {
	g := newTestGuard(t, defaultPolicyMaxSize)
	m := &fakeManager{status: 200, body: signedProfile}
	w := serve(t, g, httptest.NewRequest("HEAD", "/secars/secars.dll", nil), m)
	if m.seenReq.Method != "GET" {
		t.Errorf("manager saw %s, want GET", m.seenReq.Method)
	}
	if w.Code != 200 || w.Body.Len() != 0 {
		t.Errorf("HEAD got %d with %d body bytes, want 200 and none", w.Code, w.Body.Len())
	}
	if got := w.Header().Get("Content-Length"); got != strconv.Itoa(len(fakeSigned)) {
		t.Errorf("HEAD Content-Length %q, want the signed document's %d", got, len(fakeSigned))
	}

	m = &fakeManager{status: 200, body: unsignedProfile}
	w = serve(t, g, httptest.NewRequest("HEAD", "/secars/secars.dll", nil), m)
	if w.Code != http.StatusBadGateway || w.Header().Get("Content-Length") == strconv.Itoa(len(unsignedProfile)) {
		t.Errorf("HEAD of an unsigned profile got %d %v, want 502 without the manager's length", w.Code, w.Header())
	}
}

func TestPolicyGuardAnswersNotModifiedForItsOwnETag(t *testing.T) {
	g := newTestGuard(t, defaultPolicyMaxSize)
	req := httptest.NewRequest("GET", "/secars/secars.dll", nil)
	req.Header.Set("If-None-Match", `W/"other", "gw-1"`)
	w := serve(t, g, req, &fakeManager{status: 200, body: signedProfile})
	if w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Errorf("got %d with %d body bytes, want 304 and none", w.Code, w.Body.Len())
	}
	if w.Header().Get("Etag") != `"gw-1"` {
		t.Errorf("304 without the ETag: %v", w.Header())
	}
}

func TestPolicyGuardReturnsUpstreamErrorsBeforeAnyResponse(t *testing.T) {
	g := newTestGuard(t, defaultPolicyMaxSize)
	dialErr := caddyhttp.Error(http.StatusBadGateway, errors.New("dial tcp: connection refused"))
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return dialErr })
	w := httptest.NewRecorder()
	if err := g.ServeHTTP(w, httptest.NewRequest("GET", "/secars/secars.dll", nil), next); !errors.Is(err, dialErr) {
		t.Fatalf("error %v, want the upstream error for Caddy's error handling", err)
	}
	if w.Code != 200 || w.Body.Len() != 0 {
		t.Errorf("the handler wrote %d %q itself", w.Code, w.Body.String())
	}
}

// gzipped returns s compressed, as a hostile manager would send it.
func gzipped(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestPolicyGuardFailsClosedOnAmbiguousAnswers(t *testing.T) {
	gz := gzipped(t, unsignedProfile)
	tests := []struct {
		name   string
		allow  []string
		m      fakeManager
		reason string
		header string // the header named in the log line, "" for none
	}{
		{"Content-Encoding identity then gzip", nil, fakeManager{status: 200, body: gz, lines: http.Header{"Content-Encoding": {"identity", "gzip"}}}, reasonDuplicateHeader, "Content-Encoding"},
		{"Content-Encoding empty then gzip", nil, fakeManager{status: 200, body: gz, lines: http.Header{"Content-Encoding": {"", "gzip"}}}, reasonDuplicateHeader, "Content-Encoding"},
		{"Content-Encoding under two spellings", nil, fakeManager{status: 200, body: gz, header: map[string]string{"Content-Encoding": "identity"}, lines: http.Header{"content-encoding": {"gzip"}}}, reasonDuplicateHeader, "Content-Encoding"},
		{"gzip alone", nil, fakeManager{status: 200, body: gz, header: map[string]string{"Content-Encoding": "gzip"}}, reasonContentEncoding, "Content-Encoding"},
		{"identity, gzip on one line", nil, fakeManager{status: 200, body: gz, header: map[string]string{"Content-Encoding": "identity, gzip"}}, reasonContentEncoding, "Content-Encoding"},
		{"empty Content-Encoding", nil, fakeManager{status: 200, body: unsignedProfile, lines: http.Header{"Content-Encoding": {""}}}, reasonContentEncoding, "Content-Encoding"},
		{"Content-Type twice", []string{"text/plain"}, fakeManager{status: 200, body: unsignedProfile, lines: http.Header{"Content-Type": {"text/plain", "text/xml"}}}, reasonDuplicateHeader, "Content-Type"},
		{"Content-Length twice", nil, fakeManager{status: 200, body: unsignedProfile, header: map[string]string{"Content-Length": strconv.Itoa(len(unsignedProfile))}, lines: http.Header{"Content-Length": {strconv.Itoa(len(unsignedProfile))}}}, reasonDuplicateHeader, "Content-Length"},
		{"Transfer-Encoding twice", nil, fakeManager{status: 200, body: unsignedProfile, lines: http.Header{"Transfer-Encoding": {"chunked", "identity"}}}, reasonDuplicateHeader, "Transfer-Encoding"},
		{"repeated header on an error answer", nil, fakeManager{status: 404, body: unsignedProfile, lines: http.Header{"Content-Encoding": {"identity", "gzip"}}}, reasonDuplicateHeader, "Content-Encoding"},
		{"repeated header on 204", nil, fakeManager{status: 204, lines: http.Header{"Content-Type": {"text/xml", "text/plain"}}}, reasonDuplicateHeader, "Content-Type"},
		{"unsigned Profile labelled text/plain", []string{"text/plain"}, fakeManager{status: 200, body: unsignedProfile, header: map[string]string{"Content-Type": "text/plain"}}, "no_signature", ""},
		{"unsigned Profile after a BOM, labelled octet-stream", []string{"application/octet-stream"}, fakeManager{status: 200, body: "\xef\xbb\xbf \n" + unsignedProfile, header: map[string]string{"Content-Type": "application/octet-stream"}}, "no_signature", ""},
		{"non-XML body, nothing allowed", nil, fakeManager{status: 200, body: "OK", header: map[string]string{"Content-Type": "text/plain"}}, reasonNotXML, ""},
		{"non-XML body of an unlisted media type", []string{"text/plain"}, fakeManager{status: 200, body: gz, header: map[string]string{"Content-Type": "application/octet-stream"}}, reasonNotXML, ""},
		{"non-XML body without Content-Type", []string{"text/plain"}, fakeManager{status: 200, body: gz}, reasonNotXML, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newTestGuard(t, defaultPolicyMaxSize)
			g.allowNonXML = tc.allow
			m := tc.m
			w := serve(t, g, httptest.NewRequest("GET", "/secars/secars.dll?action=profile", nil), &m)

			if w.Code != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", w.Code)
			}
			body := w.Body.String()
			if body != refusalBody || strings.Contains(body, "<Profile") || (m.body != "" && strings.Contains(body, m.body)) {
				t.Errorf("client received %q, want only the gateway's refusal", body)
			}
			if ce := w.Header().Values("Content-Encoding"); len(ce) != 0 {
				t.Errorf("client received Content-Encoding %q", ce)
			}
			if got := g.resultCount(resultRefused, tc.reason); got != 1 {
				t.Errorf("refused/%s counted %v times, want 1", tc.reason, got)
			}
			entries := g.logs.FilterMessage("policy payload refused").All()
			if len(entries) != 1 {
				t.Fatalf("%d refusal log lines, want 1", len(entries))
			}
			fields := entries[0].ContextMap()
			if fields["reason"] != tc.reason {
				t.Errorf("log reason %v, want %s", fields["reason"], tc.reason)
			}
			if got, _ := fields["header"].(string); got != tc.header {
				t.Errorf("log header %q, want %q (fields %v)", got, tc.header, fields)
			}
		})
	}
}

func TestPolicyGuardPassesWhatIsPlain(t *testing.T) {
	tests := []struct {
		name           string
		allow          []string
		m              fakeManager
		result, reason string
		want           string
	}{
		{"signed payload with Content-Encoding identity", nil, fakeManager{status: 200, body: signedProfile, header: map[string]string{"Content-Encoding": "identity"}}, resultSigned, reasonVerified, fakeSigned},
		{"signed payload with Content-Encoding IDENTITY", nil, fakeManager{status: 200, body: signedProfile, header: map[string]string{"Content-Encoding": " IDENTITY "}}, resultSigned, reasonVerified, fakeSigned},
		{"signed payload labelled text/plain", []string{"text/plain"}, fakeManager{status: 200, body: signedProfile, header: map[string]string{"Content-Type": "text/plain"}}, resultSigned, reasonVerified, fakeSigned},
		{"non-XML body of a listed media type", []string{"text/plain"}, fakeManager{status: 200, body: "OK", header: map[string]string{"Content-Type": "Text/Plain; charset=utf-8"}}, resultPassed, reasonNotXML, "OK"},
		{"empty 2xx body", nil, fakeManager{status: 200}, resultPassed, reasonNoBody, ""},
		{"error answer, gzip, not listed", nil, fakeManager{status: 500, body: "\x1f\x8b", header: map[string]string{"Content-Encoding": "gzip"}}, resultPassed, reasonStatus, "\x1f\x8b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newTestGuard(t, defaultPolicyMaxSize)
			g.allowNonXML = tc.allow
			m := tc.m
			w := serve(t, g, httptest.NewRequest("GET", "/secars/secars.dll?action=profile", nil), &m)
			if w.Code != m.status || w.Body.String() != tc.want {
				t.Fatalf("got %d %q, want %d %q", w.Code, w.Body.String(), m.status, tc.want)
			}
			if got := g.resultCount(tc.result, tc.reason); got != 1 {
				t.Errorf("%s/%s counted %v times, want 1", tc.result, tc.reason, got)
			}
			if n := len(g.logs.FilterMessage("policy payload refused").All()); n != 0 {
				t.Errorf("%d refusal log lines, want none", n)
			}
		})
	}
}

func TestPolicyGuardAllowNonXMLIsCheckedAtProvision(t *testing.T) {
	tests := []struct {
		list    []string
		want    []string
		wantErr bool
	}{
		{[]string{"text/plain", "Application/JSON"}, []string{"text/plain", "application/json"}, false},
		{[]string{"text"}, nil, true},
		{[]string{"text/*"}, nil, true},
		{[]string{"text/plain; charset=utf-8"}, nil, true},
		{[]string{""}, nil, true},
		{[]string{"text/plain/x"}, nil, true},
	}
	for _, tc := range tests {
		g := &PolicyGuard{UpstreamCerts: []string{"m.crt"}, Roots: []string{"Profile"}, AllowNonXML: tc.list}
		err := g.Validate()
		if (err != nil) != tc.wantErr {
			t.Errorf("Validate(%q) = %v, want error %v", tc.list, err, tc.wantErr)
			continue
		}
		if err != nil {
			if !strings.Contains(err.Error(), "policy_guard: allow_non_xml") {
				t.Errorf("Validate(%q) = %v, want the field named", tc.list, err)
			}
			continue
		}
		got, _ := response.MediaTypes("policy_guard: allow_non_xml", tc.list)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("normalized %q = %q, want %q", tc.list, got, tc.want)
		}
	}
}

func TestPolicyGuardLogsSeenCertificates(t *testing.T) {
	g := newTestGuard(t, defaultPolicyMaxSize)
	der := []byte("not really DER, but fingerprinted all the same")
	doc := `<Profile><Signature><KeyInfo><X509Data><X509Certificate>` +
		"\n" + base64Std(der) + "\n" + `</X509Certificate></X509Data></KeyInfo></Signature>tampered</Profile>`
	serve(t, g, httptest.NewRequest("GET", "/secars/secars.dll", nil), &fakeManager{status: 200, body: doc})
	entries := g.logs.FilterMessage("policy payload refused").All()
	if len(entries) != 1 {
		t.Fatalf("%d refusal log lines, want 1", len(entries))
	}
	seen, _ := entries[0].ContextMap()["seen"].([]any)
	if len(seen) != 1 || seen[0] != fingerprint(der) {
		t.Errorf("seen = %v, want [%s]", entries[0].ContextMap()["seen"], fingerprint(der))
	}
}

func TestPolicyGuardCaddyfileSyntax(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  PolicyGuard
		err   string
	}{
		{"full", `policy_guard {
			upstream_cert /m.crt /m-next.crt
			upstream_cert /m-old.crt
			signing_key /g.key /g.crt
			roots Profile
			roots ServerSettings
			allow_sha1
			ignore_expiry
			max_size 16MiB
			cache_size 1MB
			allow_non_xml text/plain
			allow_non_xml application/json
			rewrite {
				addresses gw.example.com
				https_port 443
			}
		}`, PolicyGuard{
			UpstreamCerts: []string{"/m.crt", "/m-next.crt", "/m-old.crt"}, SigningKeyFile: "/g.key", SigningCertFile: "/g.crt",
			Roots: []string{"Profile", "ServerSettings"}, AllowSHA1: true, IgnoreExpiry: true, MaxSize: 16 << 20, CacheSize: 1000000,
			AllowNonXML: []string{"text/plain", "application/json"},
			Rewrite:     &GuardRewrite{Rules: rewrite.Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443}},
		}, ""},
		{"signing_key with one file", "policy_guard {\nsigning_key /g.key\n}", PolicyGuard{}, "signing_key"},
		{"unknown rewrite subdirective", "policy_guard {\nrewrite {\nservers x\n}\n}", PolicyGuard{}, "servers"},
		{"bad max_size", "policy_guard {\nmax_size lots\n}", PolicyGuard{}, "max_size"},
		{"zero cache_size", "policy_guard {\ncache_size 0\n}", PolicyGuard{}, "cache_size"},
		{"empty roots", "policy_guard {\nroots\n}", PolicyGuard{}, "roots"},
		{"empty allow_non_xml", "policy_guard {\nallow_non_xml\n}", PolicyGuard{}, "allow_non_xml"},
		{"allow_sha1 with a value", "policy_guard {\nallow_sha1 yes\n}", PolicyGuard{}, "allow_sha1"},
		{"unknown subdirective", "policy_guard {\nupstream /x\n}", PolicyGuard{}, "upstream"},
		{"inline argument", "policy_guard /x.crt", PolicyGuard{}, "argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var g PolicyGuard
			err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalConfig(g, tc.want) {
				t.Errorf("got %+v, want %+v", g, tc.want)
			}
		})
	}
}

func TestPolicyGuardValidateNamesTheField(t *testing.T) {
	good := func() PolicyGuard {
		return PolicyGuard{UpstreamCerts: []string{"/m.crt"}, SigningKeyFile: "/g.key", SigningCertFile: "/g.crt", Roots: []string{"Profile"}}
	}
	tests := []struct {
		field  string
		change func(*PolicyGuard)
	}{
		{"upstream_cert", func(g *PolicyGuard) { g.UpstreamCerts = nil }},
		{"signing_key", func(g *PolicyGuard) { g.SigningCertFile = "" }},
		{"roots", func(g *PolicyGuard) { g.Roots = nil }},
		{"roots", func(g *PolicyGuard) { g.Roots = []string{"<Profile>"} }},
		{"max_size", func(g *PolicyGuard) { g.MaxSize = -1 }},
		{"cache_size", func(g *PolicyGuard) { g.CacheSize = -1 }},
	}
	g := good()
	if err := g.Validate(); err != nil {
		t.Fatalf("a good configuration fails: %v", err)
	}
	for _, tc := range tests {
		g := good()
		tc.change(&g)
		if err := g.Validate(); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("error %v, want one naming %s", err, tc.field)
		}
	}
}

// BenchmarkPolicyGuardPassThrough measures the handler on responses it lets
// through unchanged (reported allocations are the handler's plus the test
// recorder's).
func BenchmarkPolicyGuardPassThrough(b *testing.B) {
	core, _ := observer.New(zapcore.InfoLevel)
	g := &PolicyGuard{
		Roots: []string{"Profile"}, MaxSize: defaultPolicyMaxSize, pipeline: new(fakeResigner), logger: zap.New(core),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"result", "reason"}),
	}
	for _, m := range []*fakeManager{{status: 200, body: indexDoc}, {status: 400, body: "4 Bad format."}} {
		b.Run(strconv.Itoa(m.status), func(b *testing.B) {
			req := httptest.NewRequest("GET", "/secars/secars.dll", nil)
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

type discardWriter struct{ header http.Header }

func (d *discardWriter) Header() http.Header         { return d.header }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// xmlRoot is encoding/xml's view of a well-formed document's root element.
func equalConfig(a, b PolicyGuard) bool { return reflect.DeepEqual(a, b) }

// guardFiles are PEM files for a real pipeline: the manager's certificate,
// the gateway's key and certificate, and a document the manager signed.
type guardFiles struct {
	managerCert, gatewayKey, gatewayCert string
	gateway                              *x509.Certificate
	signedDoc                            []byte
}

func writeGuardFiles(t testing.TB, docSize int) *guardFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	mKey, mCert, err := guardlib.GenerateSigningKey(2048, "manager")
	if err != nil {
		t.Fatal(err)
	}
	gKey, gCert, err := guardlib.GenerateSigningKey(2048, "gateway")
	if err != nil {
		t.Fatal(err)
	}
	f := &guardFiles{gateway: gCert}
	_, mPEM, err := guardlib.EncodeKeyPair(mKey, mCert)
	if err != nil {
		t.Fatal(err)
	}
	gKeyPEM, gCertPEM, err := guardlib.EncodeKeyPair(gKey, gCert)
	if err != nil {
		t.Fatal(err)
	}
	f.managerCert = write("manager.crt", mPEM)
	f.gatewayKey = write("gateway.key", gKeyPEM)
	f.gatewayCert = write("gateway.crt", gCertPEM)

	doc := etree.NewDocument()
	root := doc.CreateElement("Profile")
	for i := 0; i*64 < docSize; i++ {
		root.CreateElement("Rule").CreateAttr("Name", "block C:\\temp\\rule-"+strconv.Itoa(i)+".exe")
	}
	signer, err := guardlib.NewSigner(mKey, mCert)
	if err != nil {
		t.Fatal(err)
	}
	if f.signedDoc, err = signer.Sign(root); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *guardFiles) guard() *PolicyGuard {
	return &PolicyGuard{
		UpstreamCerts: []string{f.managerCert}, SigningKeyFile: f.gatewayKey, SigningCertFile: f.gatewayCert,
		Roots: []string{"Profile"},
	}
}

func provision(t testing.TB, g *PolicyGuard) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(func() { cancel() })
	return provisionLikeCaddy(ctx, g)
}

func TestPolicyGuardResignsWithThePinnedAndSigningKeys(t *testing.T) {
	f := writeGuardFiles(t, 8<<10)
	g := f.guard()
	if err := provision(t, g); err != nil {
		t.Fatal(err)
	}
	hitsBefore := testutil.ToFloat64(policyGuardMetrics.cache.WithLabelValues("hit"))
	var first string
	for i := range 2 {
		w := httptest.NewRecorder()
		if err := g.ServeHTTP(w, httptest.NewRequest("GET", "/secars/secars.dll", nil), &fakeManager{status: 200, body: string(f.signedDoc)}); err != nil {
			t.Fatal(err)
		}
		if w.Code != 200 {
			t.Fatalf("status %d: %q", w.Code, w.Body.String())
		}
		v, err := guardlib.NewVerifier([]*x509.Certificate{f.gateway}, guardlib.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(w.Body.Bytes()); err != nil {
			t.Errorf("the output does not verify with the gateway's certificate: %v", err)
		}
		if i == 0 {
			first = w.Header().Get("Etag")
		} else if w.Header().Get("Etag") != first || first == "" {
			t.Errorf("ETag %q then %q for the same payload", first, w.Header().Get("Etag"))
		}
	}
	if got := testutil.ToFloat64(policyGuardMetrics.cache.WithLabelValues("hit")) - hitsBefore; got != 1 {
		t.Errorf("cache hits grew by %v, want 1", got)
	}

	w := httptest.NewRecorder()
	forged := bytes.Replace(f.signedDoc, []byte("rule-3."), []byte("rule-4."), 1)
	if err := g.ServeHTTP(w, httptest.NewRequest("GET", "/secars/secars.dll", nil), &fakeManager{status: 200, body: string(forged)}); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusBadGateway {
		t.Errorf("a tampered payload got %d, want 502", w.Code)
	}
}

func TestPolicyGuardProvisionNamesTheField(t *testing.T) {
	f := writeGuardFiles(t, 1<<10)
	dir := t.TempDir()
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	ecDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ecKey.PublicKey, ecKey)
	if err != nil {
		t.Fatal(err)
	}
	ecKeyDER, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	ecCert := filepath.Join(dir, "ec.crt")
	ecKeyFile := filepath.Join(dir, "ec.key")
	garbage := filepath.Join(dir, "garbage.pem")
	for path, data := range map[string][]byte{
		ecCert:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ecDER}),
		ecKeyFile: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecKeyDER}),
		garbage:   []byte("not a certificate"),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, field string
		change      func(*PolicyGuard)
	}{
		{"missing upstream_cert", "upstream_cert", func(g *PolicyGuard) { g.UpstreamCerts = nil }},
		{"unreadable upstream_cert", "upstream_cert", func(g *PolicyGuard) { g.UpstreamCerts = []string{filepath.Join(dir, "absent.crt")} }},
		{"upstream_cert not a certificate", "upstream_cert", func(g *PolicyGuard) { g.UpstreamCerts = []string{garbage} }},
		{"upstream_cert with an ECDSA key", "upstream_cert", func(g *PolicyGuard) { g.UpstreamCerts = []string{ecCert} }},
		{"unreadable signing key", "signing_key", func(g *PolicyGuard) { g.SigningKeyFile = filepath.Join(dir, "absent.key") }},
		{"no signing key and no legacygate app", "signing_key", func(g *PolicyGuard) { g.SigningKeyFile, g.SigningCertFile = "", "" }},
		{"signing key without its certificate", "signing_key", func(g *PolicyGuard) { g.SigningCertFile = "" }},
		{"non-RSA signing key", "signing_key", func(g *PolicyGuard) { g.SigningKeyFile, g.SigningCertFile = ecKeyFile, ecCert }},
		{"key and certificate that do not match", "signing_key", func(g *PolicyGuard) { g.SigningCertFile = f.managerCert }},
		{"negative max_size", "max_size", func(g *PolicyGuard) { g.MaxSize = -5 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := f.guard()
			tc.change(g)
			err := provision(t, g)
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v, want one naming %s", err, tc.field)
			}
		})
	}
}

// BenchmarkPolicyGuardHandler compares the handler serving a re-signed
// 100 KB profile from the cache with the bare next handler writing the
// manager's body, in the same run.
func BenchmarkPolicyGuardHandler(b *testing.B) {
	f := writeGuardFiles(b, 100<<10)
	g := f.guard()
	if err := provision(b, g); err != nil {
		b.Fatal(err)
	}
	m := &fakeManager{status: 200, body: string(f.signedDoc)}
	req := httptest.NewRequest("GET", "/secars/secars.dll", nil)
	b.Run("bare_next", func(b *testing.B) {
		w := &discardWriter{header: make(http.Header)}
		b.SetBytes(int64(len(f.signedDoc)))
		b.ReportAllocs()
		for b.Loop() {
			clear(w.header)
			if err := m.ServeHTTP(w, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cache_hit", func(b *testing.B) {
		w := &discardWriter{header: make(http.Header)}
		b.SetBytes(int64(len(f.signedDoc)))
		b.ReportAllocs()
		for b.Loop() {
			clear(w.header)
			if err := g.ServeHTTP(w, req, m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func testSigner(t testing.TB) *guardlib.Signer {
	t.Helper()
	key, cert, err := guardlib.GenerateSigningKey(2048, "gateway")
	if err != nil {
		t.Fatal(err)
	}
	s, err := guardlib.NewSigner(key, cert)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPayloadCacheHitsOnlyTheSameBytesAndKey(t *testing.T) {
	k1, k2 := guardChoice{signer: testSigner(t)}, guardChoice{signer: testSigner(t)}
	bound := int64(3000)
	c := newPayloadCache(bound)
	doc := bytes.Repeat([]byte("a"), 500)
	payload := signedPayload{body: bytes.Repeat([]byte("s"), 490), etag: `"e"`}
	key := c.key(doc, k1)
	c.put(key, doc, payload)
	doc[0] = 'b' // the caller's pooled buffer is reused after put
	original := bytes.Repeat([]byte("a"), 500)
	if got, ok := c.get(c.key(original, k1), original); !ok || got.etag != `"e"` {
		t.Fatalf("no hit for the same bytes and key")
	}
	if _, ok := c.get(c.key(doc, k1), doc); ok {
		t.Error("hit for different bytes")
	}
	if _, ok := c.get(c.key(original, k2), original); ok {
		t.Error("hit for another signing key")
	}
	if _, ok := c.get(key, doc); ok {
		t.Error("hit for different bytes under a colliding key")
	}

	for i := range 5 {
		d := []byte(strings.Repeat(strconv.Itoa(i), 500))
		c.put(c.key(d, k1), d, payload)
	}
	if c.lru.Bytes() > bound || c.lru.Len() != 3 {
		t.Errorf("cache holds %d bytes in %d entries, bound %d bytes", c.lru.Bytes(), c.lru.Len(), bound)
	}
	if _, ok := c.get(c.key(original, k1), original); ok {
		t.Error("the least recently used entry was not evicted")
	}
	huge := bytes.Repeat([]byte("h"), 4000)
	c.put(c.key(huge, k1), huge, payload)
	if _, ok := c.get(c.key(huge, k1), huge); ok {
		t.Error("an entry over the whole bound was stored")
	}
}

func TestPolicyGuardConcurrentRequestsSignOnce(t *testing.T) {
	f := writeGuardFiles(t, 32<<10)
	g := f.guard()
	if err := provision(t, g); err != nil {
		t.Fatal(err)
	}
	const clients = 8
	bodies := make([][]byte, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			w := httptest.NewRecorder()
			if err := g.ServeHTTP(w, httptest.NewRequest("GET", "/secars/secars.dll", nil), &fakeManager{status: 200, body: string(f.signedDoc)}); err != nil {
				t.Error(err)
			}
			bodies[i] = w.Body.Bytes()
		})
	}
	wg.Wait()
	for i := range bodies {
		if !bytes.Equal(bodies[i], bodies[0]) || len(bodies[0]) == 0 {
			t.Fatalf("client %d got a different or empty payload", i)
		}
	}
	if st := g.pipeline.(*policyPipeline).resigner.Stats(); st.Misses != 1 {
		t.Errorf("the payload was verified and signed %d times, want once", st.Misses)
	}
}

// FuzzDocumentCertificates checks that reading the certificates of a refused
// document never panics and stays within its bound.
func FuzzDocumentCertificates(f *testing.F) {
	for _, seed := range []string{
		signedProfile,
		`<Profile><Signature><KeyInfo><X509Data><X509Certificate>` + base64Std([]byte("der")) + `</X509Certificate></X509Data></KeyInfo></Signature></Profile>`,
		`<a><X509Certificate>not base64</X509Certificate><X509Certificate>`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		seen := documentCertificates(body)
		if len(seen) > maxSeenCertificates {
			t.Fatalf("%d fingerprints, bound is %d", len(seen), maxSeenCertificates)
		}
		for _, fp := range seen {
			if len(fp) != 64 {
				t.Fatalf("fingerprint %q is not hex SHA-256", fp)
			}
		}
	})
}

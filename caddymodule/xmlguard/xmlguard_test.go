package xmlguard

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const xmlGuardSOAPNS = "http://schemas.xmlsoap.org/soap/envelope/"

// xmlGuardSOAP is a PolicyServer-style SOAP 1.1 request or response.
const xmlGuardSOAP = `<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <Heartbeat xmlns="http://tempuri.org/">
      <DeviceID>3F2504E0-4F89-11D3-9A0C-0305E82C3301</DeviceID>
      <Payload>q83vASNFZ4mrze8BI0VniQ==</Payload>
    </Heartbeat>
  </soap:Body>
</soap:Envelope>
`

// unsignedProfile is a policy document with an unlisted root, as a
// manager's answer that is not the SOAP asked for.
const unsignedProfile = `<?xml version="1.0"?><Profile Serial="1"><Rules/></Profile>`

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

// xmlGuardManager stands for reverse_proxy: it records the request body it
// read and answers with status, header and body.
type xmlGuardManager struct {
	calls   int
	got     []byte
	gotLen  int64
	status  int
	header  map[string]string
	body    string
	cutAt   int         // write body[:cutAt], then abort like reverse_proxy; 0: all
	failErr error       // return this before writing anything
	lines   http.Header // added after header, one line per value (repeated headers)
}

func (m *xmlGuardManager) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	m.calls++
	m.gotLen = r.ContentLength
	var err error
	if m.got, err = io.ReadAll(r.Body); err != nil {
		return err
	}
	if m.failErr != nil {
		return m.failErr
	}
	for k, v := range m.header {
		w.Header().Set(k, v)
	}
	for k, vs := range m.lines {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(m.status)
	if m.cutAt > 0 {
		w.Write([]byte(m.body[:m.cutAt]))
		panic(http.ErrAbortHandler)
	}
	_, err = io.WriteString(w, m.body)
	return err
}

func newXMLGuardManager() *xmlGuardManager {
	return &xmlGuardManager{status: 200, header: map[string]string{"Content-Type": "text/xml; charset=utf-8", "X-Manager": "1"}, body: xmlGuardSOAP}
}

// provisionXMLGuard provisions g and sends its logs to an observer.
func provisionXMLGuard(t *testing.T, g *XMLGuard) *observer.ObservedLogs {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := provisionLikeCaddy(ctx, g); err != nil {
		t.Fatalf("provision: %v", err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	g.logger = zap.New(core)
	return logs
}

func serveXMLGuard(t *testing.T, g *XMLGuard, r *http.Request, m *xmlGuardManager) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	if err := g.ServeHTTP(w, r, m); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	return w
}

func xmlGuardPost(body string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/MAWebService2/MAWebService2.asmx", strings.NewReader(body))
	r.Header.Set("Content-Type", "text/xml; charset=utf-8")
	r.Header.Set("SOAPAction", `"http://tempuri.org/Heartbeat"`)
	return r
}

// assertXMLGuardLogged checks that exactly one refusal was logged, with reason.
func assertXMLGuardLogged(t *testing.T, logs *observer.ObservedLogs, direction, reason string) {
	t.Helper()
	entries := logs.FilterField(zap.String("reason", reason)).FilterField(zap.String("direction", direction)).All()
	if len(entries) != 1 || entries[0].Level != zapcore.WarnLevel {
		t.Fatalf("want one warning with direction %s and reason %s, got %v", direction, reason, logs.All())
	}
}

func xmlGuardCount(g *XMLGuard, direction, result, reason string) float64 {
	return testutil.ToFloat64(g.results.WithLabelValues(direction, result, reason))
}

func TestXMLGuardRefusesBadRequestsBeforeTheManager(t *testing.T) {
	tests := []struct {
		name        string
		body        string
		contentType string
		status      int
		reason      string
	}{
		{"malformed", `<soap:Envelope xmlns:soap="` + xmlGuardSOAPNS + `"><soap:Body></soap:Envelope>`, "text/xml", 400, "malformed_xml"},
		{"doctype", `<!DOCTYPE soap:Envelope><soap:Envelope xmlns:soap="` + xmlGuardSOAPNS + `"/>`, "text/xml", 400, "doctype"},
		{"external entity", `<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>`, "text/xml", 400, "doctype"},
		{"billion laughs", `<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>`, "text/xml", 400, "doctype"},
		{"undeclared entity", `<a>&x;</a>`, "text/xml", 400, "malformed_xml"},
		{"processing instruction", `<?xml-stylesheet href="x"?><a/>`, "text/xml", 400, "processing_instruction"},
		{"depth 5000", strings.Repeat("<a>", 5000) + strings.Repeat("</a>", 5000), "text/xml", 400, "too_deep"},
		{"too many elements", "<a>" + strings.Repeat("<b/>", 200) + "</a>", "text/xml", 400, "too_many_elements"},
		{"oversize", "<a>" + strings.Repeat("x", 64<<10) + "</a>", "text/xml", 413, "too_large"},
		{"unlisted root", `<Envelope xmlns="urn:other"/>`, "text/xml", 400, "unlisted_root"},
		{"not XML content type", xmlGuardSOAP, "application/json", 415, "content_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &XMLGuard{MaxSize: 64 << 10, MaxDepth: 32, MaxElements: 100, Roots: []string{"{" + xmlGuardSOAPNS + "}Envelope", "a", "l"}}
			logs := provisionXMLGuard(t, g)
			before := xmlGuardCount(g, "request", "refused", tt.reason)
			r := xmlGuardPost(tt.body)
			r.Header.Set("Content-Type", tt.contentType)
			m := newXMLGuardManager()
			w := serveXMLGuard(t, g, r, m)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.status, w.Body)
			}
			if m.calls != 0 {
				t.Fatal("the refused request reached the manager")
			}
			if strings.Contains(w.Body.String(), "Envelope") || w.Header().Get("X-Manager") != "" {
				t.Fatalf("refusal carries manager or client bytes: %q", w.Body)
			}
			assertXMLGuardLogged(t, logs, "request", tt.reason)
			if got := xmlGuardCount(g, "request", "refused", tt.reason) - before; got != 1 {
				t.Fatalf("refused{reason=%s} grew by %v, want 1", tt.reason, got)
			}
		})
	}
}

func TestXMLGuardValidSOAPPassesByteForByte(t *testing.T) {
	g := &XMLGuard{Roots: []string{"Envelope"}, SOAPActions: []string{"http://tempuri.org/Heartbeat"}}
	logs := provisionXMLGuard(t, g)
	before := xmlGuardCount(g, "request", "passed", "checked")
	m := newXMLGuardManager()
	m.body = strings.Replace(xmlGuardSOAP, "Heartbeat", "HeartbeatResponse", 2)
	w := serveXMLGuard(t, g, xmlGuardPost(xmlGuardSOAP), m)
	if w.Code != 200 || w.Body.String() != m.body {
		t.Fatalf("client got %d %q, want the manager's bytes", w.Code, w.Body)
	}
	if string(m.got) != xmlGuardSOAP || m.gotLen != int64(len(xmlGuardSOAP)) {
		t.Fatalf("manager got %d bytes (Content-Length %d), want the client's %d bytes", len(m.got), m.gotLen, len(xmlGuardSOAP))
	}
	if w.Header().Get("X-Manager") != "1" || w.Header().Get("Content-Length") != strconv.Itoa(len(m.body)) {
		t.Fatalf("manager headers not forwarded: %v", w.Header())
	}
	if got := xmlGuardCount(g, "request", "passed", "checked") - before; got != 1 {
		t.Fatalf("passed{checked} grew by %v, want 1", got)
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 0 {
		t.Fatalf("%d warnings for a valid exchange: %v", n, logs.All())
	}
}

func TestXMLGuardChunkedRequestIsForwardedWithItsLength(t *testing.T) {
	g := &XMLGuard{}
	provisionXMLGuard(t, g)
	r := xmlGuardPost(xmlGuardSOAP)
	r.ContentLength = -1
	r.TransferEncoding = []string{"chunked"}
	m := newXMLGuardManager()
	serveXMLGuard(t, g, r, m)
	if string(m.got) != xmlGuardSOAP || m.gotLen != int64(len(xmlGuardSOAP)) || r.TransferEncoding != nil {
		t.Fatalf("manager got %d bytes with Content-Length %d, want %d", len(m.got), m.gotLen, len(xmlGuardSOAP))
	}
}

func TestXMLGuardOversizeRequestIsRefusedUnread(t *testing.T) {
	tests := []struct {
		name          string
		contentLength int64
	}{
		{"declared length", 1 << 20},
		{"chunked", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &XMLGuard{MaxSize: 1024}
			logs := provisionXMLGuard(t, g)
			body := &xmlGuardCountingReader{r: strings.NewReader("<a>" + strings.Repeat("x", 1<<20) + "</a>")}
			r := httptest.NewRequest(http.MethodPost, "/MAWebService2/MAWebService2.asmx", body)
			r.ContentLength = tt.contentLength
			m := newXMLGuardManager()
			w := serveXMLGuard(t, g, r, m)
			if w.Code != http.StatusRequestEntityTooLarge || m.calls != 0 {
				t.Fatalf("status %d, manager calls %d; want 413 and none", w.Code, m.calls)
			}
			if body.n > 1025 {
				t.Fatalf("read %d bytes of an oversize body, want at most max_size+1", body.n)
			}
			assertXMLGuardLogged(t, logs, "request", "too_large")
		})
	}
}

type xmlGuardCountingReader struct {
	r io.Reader
	n int
}

func (c *xmlGuardCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestXMLGuardRequestWithoutBodyPasses(t *testing.T) {
	g := &XMLGuard{SOAPActions: []string{"x"}}
	provisionXMLGuard(t, g)
	m := newXMLGuardManager()
	w := serveXMLGuard(t, g, httptest.NewRequest(http.MethodGet, "/MAWebService2/MAWebService2.asmx?wsdl", nil), m)
	if w.Code != 200 || m.calls != 1 {
		t.Fatalf("status %d, manager calls %d", w.Code, m.calls)
	}
}

func TestXMLGuardSOAPActions(t *testing.T) {
	tests := []struct {
		name    string
		headers map[string][]string
		pass    bool
	}{
		{"listed, quoted", map[string][]string{"Soapaction": {`"http://tempuri.org/Heartbeat"`}}, true},
		{"listed, bare", map[string][]string{"Soapaction": {`http://tempuri.org/Heartbeat`}}, true},
		{"SOAP 1.2 content type", map[string][]string{"Content-Type": {`application/soap+xml; charset=utf-8; action="http://tempuri.org/Heartbeat"`}}, true},
		{"unlisted", map[string][]string{"Soapaction": {`"http://tempuri.org/DeleteDevice"`}}, false},
		{"missing", map[string][]string{}, false},
		{"two headers", map[string][]string{"Soapaction": {`"http://tempuri.org/Heartbeat"`, `"http://tempuri.org/DeleteDevice"`}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &XMLGuard{SOAPActions: []string{"http://tempuri.org/Heartbeat"}}
			logs := provisionXMLGuard(t, g)
			r := httptest.NewRequest(http.MethodPost, "/MAWebService2/MAWebService2.asmx", strings.NewReader(xmlGuardSOAP))
			r.Header.Set("Content-Type", "text/xml")
			for k, v := range tt.headers {
				r.Header[k] = v
			}
			m := newXMLGuardManager()
			w := serveXMLGuard(t, g, r, m)
			if tt.pass != (w.Code == 200 && m.calls == 1) {
				t.Fatalf("status %d, manager calls %d, want pass=%v", w.Code, m.calls, tt.pass)
			}
			if !tt.pass {
				assertXMLGuardLogged(t, logs, "request", "soap_action")
			}
		})
	}
}

func TestXMLGuardRefusesBadResponsesWithoutForwardingThem(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		contentType string
		body        string
		cutAt       int
		reason      string
	}{
		{"malformed", 200, "text/xml", `<soap:Envelope xmlns:soap="` + xmlGuardSOAPNS + `"><soap:Body>`, 0, "malformed_xml"},
		{"doctype in a SOAP fault", 500, "text/xml", `<!DOCTYPE x [<!ENTITY e SYSTEM "http://attacker.example/">]><x>&e;</x>`, 0, "doctype"},
		{"depth 5000", 200, "", strings.Repeat("<a>", 5000) + strings.Repeat("</a>", 5000), 0, "too_deep"},
		{"oversize", 200, "text/xml", "<a>" + strings.Repeat("x", 64<<10) + "</a>", 0, "too_large"},
		{"cut short", 200, "text/xml", xmlGuardSOAP, 40, "incomplete"},
		{"2xx not XML", 200, "text/html", "<html><body>hello</body></html>", 0, "content_type"},
		{"unlisted root", 200, "text/xml", `<Envelope xmlns="urn:other"/>`, 0, "unlisted_root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &XMLGuard{MaxSize: 64 << 10, Roots: []string{"{" + xmlGuardSOAPNS + "}Envelope", "a", "x"}}
			logs := provisionXMLGuard(t, g)
			before := xmlGuardCount(g, "response", "refused", tt.reason)
			m := &xmlGuardManager{status: tt.status, header: map[string]string{"Content-Type": tt.contentType, "X-Manager": "1"}, body: tt.body, cutAt: tt.cutAt}
			w := serveXMLGuard(t, g, xmlGuardPost(xmlGuardSOAP), m)
			if w.Code != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", w.Code)
			}
			if w.Header().Get("X-Manager") != "" || strings.Contains(w.Body.String(), "<") {
				t.Fatalf("manager bytes reached the client: %v %q", w.Header(), w.Body)
			}
			assertXMLGuardLogged(t, logs, "response", tt.reason)
			if got := xmlGuardCount(g, "response", "refused", tt.reason) - before; got != 1 {
				t.Fatalf("refused{reason=%s} grew by %v, want 1", tt.reason, got)
			}
		})
	}
}

func TestXMLGuardFailsClosedOnAmbiguousResponses(t *testing.T) {
	gz := gzipped(t, unsignedProfile)
	tests := []struct {
		name   string
		allow  []string
		status int
		header map[string]string
		lines  http.Header
		body   string
		reason string
		named  string // the header named in the log line, "" for none
	}{
		{"Content-Encoding identity then gzip", nil, 200, nil, http.Header{"Content-Encoding": {"identity", "gzip"}}, gz, "duplicate_header", "Content-Encoding"},
		{"Content-Encoding empty then gzip", nil, 200, nil, http.Header{"Content-Encoding": {"", "gzip"}}, gz, "duplicate_header", "Content-Encoding"},
		{"gzip alone", nil, 200, map[string]string{"Content-Encoding": "gzip"}, nil, gz, "content_encoding", "Content-Encoding"},
		{"identity, gzip on one line", nil, 200, map[string]string{"Content-Encoding": "identity, gzip"}, nil, gz, "content_encoding", "Content-Encoding"},
		{"Content-Type twice", nil, 200, nil, http.Header{"Content-Type": {"text/plain", "text/xml"}}, unsignedProfile, "duplicate_header", "Content-Type"},
		{"Content-Length twice", nil, 200, map[string]string{"Content-Length": strconv.Itoa(len(unsignedProfile))}, http.Header{"Content-Length": {strconv.Itoa(len(unsignedProfile))}}, unsignedProfile, "duplicate_header", "Content-Length"},
		{"repeated header on a SOAP fault", nil, 500, nil, http.Header{"Content-Encoding": {"identity", "gzip"}}, unsignedProfile, "duplicate_header", "Content-Encoding"},
		{"repeated header on 204", nil, 204, nil, http.Header{"Content-Type": {"text/xml", "text/plain"}}, "", "duplicate_header", "Content-Type"},
		{"gzipped unsigned Profile labelled text/xml", nil, 200, map[string]string{"Content-Type": "text/xml"}, nil, gz, "not_xml", ""},
		{"unsigned Profile labelled text/plain", nil, 200, map[string]string{"Content-Type": "text/plain"}, nil, unsignedProfile, "content_type", ""},
		{"unsigned Profile labelled a listed text/plain", []string{"text/plain"}, 200, map[string]string{"Content-Type": "text/plain"}, nil, unsignedProfile, "unlisted_root", ""},
		{"non-XML body, nothing allowed", nil, 200, map[string]string{"Content-Type": "text/plain"}, nil, "OK", "not_xml", ""},
		{"non-XML body of an unlisted media type", []string{"text/plain"}, 200, map[string]string{"Content-Type": "application/octet-stream"}, nil, gz, "not_xml", ""},
		{"UTF-16 body of a listed media type", []string{"text/plain"}, 200, map[string]string{"Content-Type": "text/plain"}, nil, "\xff\xfe<\x00P\x00", "xml_encoding", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &XMLGuard{Roots: []string{"Envelope"}, AllowNonXML: tt.allow}
			logs := provisionXMLGuard(t, g)
			before := xmlGuardCount(g, "response", "refused", tt.reason)
			header := map[string]string{"X-Manager": "1"}
			for k, v := range tt.header {
				header[k] = v
			}
			m := &xmlGuardManager{status: tt.status, header: header, lines: tt.lines, body: tt.body}
			w := serveXMLGuard(t, g, xmlGuardPost(xmlGuardSOAP), m)
			if w.Code != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", w.Code)
			}
			if w.Header().Get("X-Manager") != "" || strings.Contains(w.Body.String(), "<") || (tt.body != "" && strings.Contains(w.Body.String(), tt.body)) {
				t.Fatalf("manager bytes reached the client: %v %q", w.Header(), w.Body)
			}
			assertXMLGuardLogged(t, logs, "response", tt.reason)
			entry := logs.FilterField(zap.String("reason", tt.reason)).All()[0]
			if got, _ := entry.ContextMap()["header"].(string); got != tt.named {
				t.Errorf("log header %q, want %q", got, tt.named)
			}
			if got := xmlGuardCount(g, "response", "refused", tt.reason) - before; got != 1 {
				t.Fatalf("refused{reason=%s} grew by %v, want 1", tt.reason, got)
			}
		})
	}
}

func TestXMLGuardPassesPlainResponses(t *testing.T) {
	tests := []struct {
		name   string
		allow  []string
		header map[string]string
		body   string
		reason string
	}{
		{"SOAP with Content-Encoding identity", nil, map[string]string{"Content-Type": "text/xml", "Content-Encoding": "Identity"}, xmlGuardSOAP, "checked"},
		{"SOAP labelled a listed text/plain", []string{"text/plain"}, map[string]string{"Content-Type": "text/plain"}, xmlGuardSOAP, "checked"},
		{"non-XML body of a listed media type", []string{"text/plain"}, map[string]string{"Content-Type": "Text/Plain; charset=utf-8"}, "OK", "not_xml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &XMLGuard{AllowNonXML: tt.allow}
			provisionXMLGuard(t, g)
			before := xmlGuardCount(g, "response", "passed", tt.reason)
			m := &xmlGuardManager{status: 200, header: tt.header, body: tt.body}
			w := serveXMLGuard(t, g, xmlGuardPost(xmlGuardSOAP), m)
			if w.Code != 200 || w.Body.String() != tt.body {
				t.Fatalf("got %d %q, want the manager's answer", w.Code, w.Body)
			}
			if got := xmlGuardCount(g, "response", "passed", tt.reason) - before; got != 1 {
				t.Fatalf("passed{reason=%s} grew by %v, want 1", tt.reason, got)
			}
		})
	}
}

func TestXMLGuardAsksManagerForIdentity(t *testing.T) {
	g := &XMLGuard{}
	provisionXMLGuard(t, g)
	m := newXMLGuardManager()
	r := xmlGuardPost(xmlGuardSOAP)
	r.Header.Set("Accept-Encoding", "gzip, br")
	var seen string
	next := caddyHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		seen = r.Header.Get("Accept-Encoding")
		return m.ServeHTTP(w, r)
	})
	if err := g.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	if seen != "identity" {
		t.Fatalf("Accept-Encoding upstream %q, want identity", seen)
	}
}

func TestXMLGuardPassesResponsesItDoesNotCheck(t *testing.T) {
	tests := []struct {
		name        string
		method      string
		status      int
		contentType string
		body        string
		reason      string
	}{
		{"IIS error page", http.MethodPost, 503, "text/html", "<html><body>Service Unavailable</body></html>", "not_xml"},
		{"no content", http.MethodPost, 204, "", "", "no_body"},
		{"HEAD", http.MethodHead, 200, "text/xml", "", "no_body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &XMLGuard{}
			provisionXMLGuard(t, g)
			before := xmlGuardCount(g, "response", "passed", tt.reason)
			m := &xmlGuardManager{status: tt.status, header: map[string]string{"Content-Type": tt.contentType, "Retry-After": "30"}, body: tt.body}
			r := xmlGuardPost(xmlGuardSOAP)
			if tt.method == http.MethodHead {
				r = httptest.NewRequest(http.MethodHead, "/MAWebService2/MAWebService2.asmx", nil)
			}
			w := serveXMLGuard(t, g, r, m)
			if w.Code != tt.status || w.Body.String() != tt.body || w.Header().Get("Retry-After") != "30" {
				t.Fatalf("got %d %q %v, want the manager's response", w.Code, w.Body, w.Header())
			}
			if got := xmlGuardCount(g, "response", "passed", tt.reason) - before; got != 1 {
				t.Fatalf("passed{reason=%s} grew by %v, want 1", tt.reason, got)
			}
		})
	}
}

func TestXMLGuardUpstreamErrorBeforeAResponseIsReturnedAsIs(t *testing.T) {
	g := &XMLGuard{}
	provisionXMLGuard(t, g)
	m := newXMLGuardManager()
	m.failErr = errors.New("dial tcp: connection refused")
	w := httptest.NewRecorder()
	err := g.ServeHTTP(w, xmlGuardPost(xmlGuardSOAP), m)
	if !errors.Is(err, m.failErr) || w.Code != 200 || w.Body.Len() != 0 || len(w.Header()) != 0 {
		t.Fatalf("err %v, response %d %q: want the upstream error and nothing written", err, w.Code, w.Body)
	}
}

func TestXMLGuardBodyIsReadOnceOnly(t *testing.T) {
	g := &XMLGuard{SkipResponses: true}
	provisionXMLGuard(t, g)
	var bodies [][]byte
	var errs []error
	next := caddyHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		// Like a transport that retries: read, close, read again.
		for range 2 {
			b, err := io.ReadAll(r.Body)
			bodies, errs = append(bodies, b), append(errs, err)
			r.Body.Close()
		}
		return nil
	})
	r := xmlGuardPost(xmlGuardSOAP)
	if err := g.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	if r.GetBody != nil {
		t.Fatal("GetBody is set: a transport could rewind the body")
	}
	if string(bodies[0]) != xmlGuardSOAP || errs[0] != nil {
		t.Fatalf("first read: %q, %v", bodies[0], errs[0])
	}
	if len(bodies[1]) != 0 || !errors.Is(errs[1], errBodySent) {
		t.Fatalf("second read after Close: %d bytes, %v; want none and errBodySent", len(bodies[1]), errs[1])
	}
}

type caddyHandlerFunc func(http.ResponseWriter, *http.Request) error

func (f caddyHandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

func TestXMLGuardCaddyfile(t *testing.T) {
	input := `xml_guard {
		max_size 64KiB
		max_depth 32
		max_elements 5000
		roots Envelope {` + xmlGuardSOAPNS + `}Envelope
		roots definitions
		soap_actions http://tempuri.org/Heartbeat
		requests on
		responses on
		allow_non_xml text/plain
		allow_non_xml application/json
	}`
	var g XMLGuard
	if err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	want := XMLGuard{
		MaxSize: 64 << 10, MaxDepth: 32, MaxElements: 5000,
		Roots:       []string{"Envelope", "{" + xmlGuardSOAPNS + "}Envelope", "definitions"},
		SOAPActions: []string{"http://tempuri.org/Heartbeat"},
		AllowNonXML: []string{"text/plain", "application/json"},
	}
	if g.MaxSize != want.MaxSize || g.MaxDepth != want.MaxDepth || g.MaxElements != want.MaxElements ||
		strings.Join(g.Roots, " ") != strings.Join(want.Roots, " ") || strings.Join(g.SOAPActions, " ") != strings.Join(want.SOAPActions, " ") ||
		strings.Join(g.AllowNonXML, " ") != strings.Join(want.AllowNonXML, " ") || g.SkipRequests || g.SkipResponses {
		t.Fatalf("got %+v, want %+v", g, want)
	}
}

func TestXMLGuardCaddyfileErrors(t *testing.T) {
	tests := []struct {
		input string
		want  string
	}{
		{"xml_guard extra", "wrong argument count"},
		{"xml_guard {\n max_depth zero\n}", "max_depth"},
		{"xml_guard {\n max_elements -1\n}", "max_elements"},
		{"xml_guard {\n max_size lots\n}", "max_size"},
		{"xml_guard {\n responses maybe\n}", "responses"},
		{"xml_guard {\n roots\n}", "roots"},
		{"xml_guard {\n allow_non_xml\n}", "allow_non_xml"},
		{"xml_guard {\n replay on\n}", "unknown subdirective"},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			var g XMLGuard
			err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one naming %q", err, tt.want)
			}
		})
	}
}

func TestXMLGuardProvisionNamesTheField(t *testing.T) {
	tests := []struct {
		name string
		g    XMLGuard
		want string
	}{
		{"negative size", XMLGuard{MaxSize: -1}, "max_size"},
		{"negative depth", XMLGuard{MaxDepth: -1}, "max_depth"},
		{"negative elements", XMLGuard{MaxElements: -1}, "max_elements"},
		{"nothing to check", XMLGuard{SkipRequests: true, SkipResponses: true}, "requests, responses"},
		{"actions without requests", XMLGuard{SkipRequests: true, SOAPActions: []string{"a"}}, "soap_actions"},
		{"quoted action", XMLGuard{SOAPActions: []string{`"a"`}}, "soap_actions"},
		{"prefixed root", XMLGuard{Roots: []string{"soap:Envelope"}}, "roots"},
		{"unclosed namespace", XMLGuard{Roots: []string{"{urn:x"}}, "roots"},
		{"empty namespace", XMLGuard{Roots: []string{"{}Envelope"}}, "roots"},
		{"media type without a subtype", XMLGuard{AllowNonXML: []string{"text"}}, "allow_non_xml"},
		{"media type with a wildcard", XMLGuard{AllowNonXML: []string{"text/*"}}, "allow_non_xml"},
		{"non-XML allowed without responses", XMLGuard{SkipResponses: true, AllowNonXML: []string{"text/plain"}}, "allow_non_xml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := provisionLikeCaddy(ctx, &tt.g)
			if err == nil || !strings.Contains(err.Error(), "xml_guard: "+tt.want) {
				t.Fatalf("error %v, want one naming %q", err, tt.want)
			}
		})
	}
}

func BenchmarkXMLGuardRoundTrip(b *testing.B) {
	g := &XMLGuard{Roots: []string{"Envelope"}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := g.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	body := []byte(xmlGuardSOAP)
	next := caddyHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return err
		}
		w.Header().Set("Content-Type", "text/xml")
		_, err := w.Write(body)
		return err
	})
	run := func(b *testing.B, h func(http.ResponseWriter, *http.Request) error) {
		b.ReportAllocs()
		b.SetBytes(int64(2 * len(body)))
		for b.Loop() {
			r := httptest.NewRequest(http.MethodPost, "/MAWebService2/MAWebService2.asmx", bytes.NewReader(body))
			r.Header.Set("Content-Type", "text/xml")
			if err := h(httptest.NewRecorder(), r); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("bare", func(b *testing.B) { run(b, next) })
	b.Run("xml_guard", func(b *testing.B) {
		run(b, func(w http.ResponseWriter, r *http.Request) error { return g.ServeHTTP(w, r, next) })
	})
}

// TestXMLGuardSecondConnectionIsClosedUnused retries a round trip the way
// reverse_proxy does when lb_retry_match allows POST: the manager sees one
// request, and the retry fails without a byte sent.
func TestXMLGuardSecondConnectionIsClosedUnused(t *testing.T) {
	var requests atomic.Int32
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		io.Copy(io.Discard, r.Body)
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	}))
	defer upstream.Close()
	g := &XMLGuard{SkipResponses: true}
	logs := provisionXMLGuard(t, g)
	before := xmlGuardCount(g, "request", "refused", "replay")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	var errs []error
	next := caddyHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for range 3 {
			out := r.Clone(r.Context())
			out.RequestURI, out.URL.Scheme, out.URL.Host = "", "http", upstream.Listener.Addr().String()
			resp, err := tr.RoundTrip(out)
			if err == nil {
				resp.Body.Close()
			}
			errs = append(errs, err)
		}
		return nil
	})
	if err := g.ServeHTTP(httptest.NewRecorder(), xmlGuardPost(xmlGuardSOAP), next); err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		if err == nil {
			t.Fatalf("round trip %d succeeded against a manager that drops every connection", i+1)
		}
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("the manager received %d requests, want 1", n)
	}
	if got := xmlGuardCount(g, "request", "refused", "replay") - before; got != 2 {
		t.Fatalf("refused{replay} grew by %v, want 2", got)
	}
	if n := logs.FilterMessage("xml request not sent again").Len(); n != 2 {
		t.Fatalf("%d log lines for the blocked retries, want 2", n)
	}
}

func TestXMLGuardRequestBodyCutShortIsRefused(t *testing.T) {
	tests := []struct {
		name          string
		body          io.Reader
		contentLength int64
	}{
		{"client gone mid-body", io.MultiReader(strings.NewReader("<a>"), iotest.ErrReader(io.ErrUnexpectedEOF)), -1},
		{"shorter than Content-Length", strings.NewReader("<a/>"), 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &XMLGuard{}
			logs := provisionXMLGuard(t, g)
			r := httptest.NewRequest(http.MethodPost, "/MAWebService2/MAWebService2.asmx", tt.body)
			r.ContentLength = tt.contentLength
			m := newXMLGuardManager()
			w := serveXMLGuard(t, g, r, m)
			if w.Code != http.StatusBadRequest || m.calls != 0 {
				t.Fatalf("status %d, manager calls %d; want 400 and none", w.Code, m.calls)
			}
			assertXMLGuardLogged(t, logs, "request", "incomplete")
		})
	}
}

package e2e

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/legacygate/legacygate/integration/harness"
)

// The tests in this file are a second red-team pass over Caddyfile.example
// as shipped (after issue 11): request smuggling and HTTP/2 shapes, query
// spellings a Windows manager may read differently, Host and Expect
// handling, and manager answers (1xx, upgrades, trailers, redirects) that
// security_test.go does not cover. Each case runs through a real gateway
// and the raw upstream's own record proves what reached the manager.

// redteamAgent is a readable log upload target: proxied, not a heartbeat.
const redteamAgent = "/secars/secars.dll?action=log&hostid=" + secHostID

// checkNoSmuggled fails when any request the manager received is not for a
// listed path or names the console: a second request hidden in the first
// one's body or framing.
func (s *secGateway) checkNoSmuggled(t *testing.T) {
	t.Helper()
	for _, r := range s.up.Requests() {
		target := r.Target()
		if bytes.Contains(r.Head, []byte("ConsoleServlet")) || bytes.Contains(r.Body, []byte("ConsoleServlet")) ||
			!(strings.HasPrefix(target, "/secars/secars.dll") || strings.HasPrefix(target, "/content/")) {
			t.Errorf("the manager received a smuggled request %q (body %q)", r.Line(), r.Body)
		}
	}
}

// TestRedteamHTTP1SmugglingShapesNeverReachTheManager sends framing and
// header shapes on raw HTTP/1.1 sockets that a Windows manager and the
// gateway could frame or read differently. Each is refused without a
// request reaching the manager, or reaches it in one re-serialised form
// with nothing smuggled behind it.
func TestRedteamHTTP1SmugglingShapesNeverReachTheManager(t *testing.T) {
	s := startSecGateway(t)
	const smuggled = "GET /servlet/ConsoleServlet?ActionType=ConfigServer HTTP/1.1\r\nHost: localhost\r\n\r\n"
	post := func(extra ...string) string {
		return "POST " + redteamAgent + " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Smc\r\n" + strings.Join(extra, "")
	}
	tests := []struct {
		name string
		req  string
		want []int
		// sent is whether the (one, canonical) request reaches the manager.
		sent bool
	}{
		{"Content-Length and chunked together", post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n") + "\r\n0\r\n\r\n" + smuggled, []int{400, 411}, false},
		{"chunked then identity", post("Transfer-Encoding: chunked, identity\r\n") + "\r\n0\r\n\r\n" + smuggled, []int{400, 501}, false},
		{"identity alone", post("Transfer-Encoding: identity\r\nContent-Length: 5\r\n") + "\r\nhello", []int{400, 501}, false},
		{"xchunked", post("Transfer-Encoding: xchunked\r\n") + "\r\n0\r\n\r\n" + smuggled, []int{400, 501}, false},
		{"space before the colon", post("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n") + "\r\nhello", []int{400}, false},
		// Go's server unfolds obs-fold into one value, and the manager
		// receives that one line: nothing is framed by the folded text.
		{"tab-folded Transfer-Encoding", post("Content-Length: 5\r\nX-A: a\r\n\tTransfer-Encoding: chunked\r\n") + "\r\nhello", []int{200, 400}, true},
		{"obs-fold continuation", post("Content-Length: 5\r\nX-A: a\r\n b\r\n") + "\r\nhello", []int{200, 400}, true},
		{"space in a header name", post("Content Length: 5\r\n") + "\r\nhello", []int{400}, false},
		{"NUL in a header value", post("Content-Length: 5\r\nX-A: a\x00b\r\n") + "\r\nhello", []int{400}, false},
		{"Content-Length with a sign", post("Content-Length: +5\r\n") + "\r\nhello", []int{400}, false},
		{"Content-Length list", post("Content-Length: 5, 5\r\n") + "\r\nhello", []int{400}, false},
		{"chunk size with an extension and garbage", post("Transfer-Encoding: chunked\r\n") + "\r\n5;x=\"\r\nhello\r\n0\r\n\r\n", []int{400, 411}, false},
		{"GET with Content-Length 0 and a pipelined console request", secGET(redteamAgent, "Content-Length: 0\r\n") + smuggled, []int{200}, true},
		{"bare LF line endings", "GET " + redteamAgent + " HTTP/1.1\nHost: localhost\nUser-Agent: Smc\n\n", []int{200, 400}, true},
		{"HTTP/1.0 without Host", "GET " + redteamAgent + " HTTP/1.0\r\nUser-Agent: Smc\r\n\r\n", []int{400, 404}, false},
		{"HTTP/0.9-style request line", "GET " + redteamAgent + "\r\n\r\n", []int{400, 505}, false},
		{"HTTP/2.0 on an HTTP/1 connection", "GET " + redteamAgent + " HTTP/2.0\r\nHost: localhost\r\n\r\n", []int{400, 505}, false},
		{"lower-case get", "get " + redteamAgent + " HTTP/1.1\r\nHost: localhost\r\n\r\n", []int{400, 405}, false},
		{"mixed-case Get", "Get " + redteamAgent + " HTTP/1.1\r\nHost: localhost\r\n\r\n", []int{400, 405}, false},
		{"absolute form naming the site", "GET https://localhost" + redteamAgent + " HTTP/1.1\r\nHost: localhost\r\n\r\n", []int{400}, false},
		{"absolute form naming another host", "GET http://manager.internal/servlet/ConsoleServlet HTTP/1.1\r\nHost: localhost\r\n\r\n", []int{400, 404}, false},
		// Go's server answers OPTIONS * itself (an empty 200).
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", []int{200, 400, 404, 405}, false},
		{"CONNECT", "CONNECT manager.internal:8443 HTTP/1.1\r\nHost: manager.internal:8443\r\n\r\n", []int{400, 404, 405}, false},
		{"Expect other than 100-continue", post("Content-Length: 5\r\nExpect: 102-processing\r\n") + "\r\nhello", []int{400, 417}, false},
		{"Host with a trailing dot", "GET " + redteamAgent + " HTTP/1.1\r\nHost: localhost.\r\n\r\n", []int{400, 404}, false},
		{"Host with a port that is not a number", "GET " + redteamAgent + " HTTP/1.1\r\nHost: localhost:evil\r\n\r\n", []int{400, 404}, false},
		{"Host with user info", "GET " + redteamAgent + " HTTP/1.1\r\nHost: evil@localhost\r\n\r\n", []int{400, 404}, false},
		{"h2c upgrade", secGET(redteamAgent, "Connection: Upgrade, HTTP2-Settings\r\n", "Upgrade: h2c\r\n", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"), []int{400}, false},
		{"websocket upgrade", secGET(redteamAgent, "Connection: Upgrade\r\n", "Upgrade: websocket\r\n", "Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), []int{400}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := s.rawRequest(t, tc.req)
			if !slices.Contains(tc.want, r.status) {
				t.Errorf("status %d (%q), want one of %v", r.status, r.body, tc.want)
			}
			checkNoLeak(t, r)
			// A smuggled request would follow the first on the gateway's
			// connection to the manager.
			time.Sleep(200 * time.Millisecond)
			s.checkNoSmuggled(t)
			if !tc.sent {
				s.checkNothingSent(t)
				return
			}
			got := s.onlyRequest(t)
			if bytes.Contains(got.Head, []byte("Transfer-Encoding")) && !bytes.Contains(got.Head, []byte("X-A: a Transfer-Encoding")) {
				t.Errorf("the manager received a Transfer-Encoding field:\n%s", got.Head)
			}
			if got.Target() != redteamAgent || !bytes.HasSuffix(got.Head, []byte("\r\n\r\n")) || bytes.Contains(bytes.ReplaceAll(got.Head, []byte("\r\n"), nil), []byte("\n")) {
				t.Errorf("the manager received %q, want %s in CRLF lines", got.Head, redteamAgent)
			}
		})
	}

	t.Run("Expect 100-continue on an upload reaches the manager once with its body", func(t *testing.T) {
		s.up.Reset()
		_, r := s.rawExchange(t, post("Content-Length: 5\r\nExpect: 100-continue\r\n")+"\r\nhello")
		if r.status != http.StatusOK {
			t.Fatalf("status %d (%q), want 200", r.status, r.body)
		}
		if got := s.onlyRequest(t); string(got.Body) != "hello" {
			t.Fatalf("the manager received body %q, want hello", got.Body)
		}
	})

	t.Run("Host with the site's port reaches the manager as the site's name", func(t *testing.T) {
		s.up.Reset()
		r := s.rawRequest(t, "GET "+redteamAgent+" HTTP/1.1\r\nHost: LOCALHOST:"+strconv.Itoa(s.g.HTTPSPort)+"\r\n\r\n")
		if r.status != http.StatusOK {
			t.Fatalf("status %d (%q), want 200", r.status, r.body)
		}
		if got := s.onlyRequest(t).Header("Host"); len(got) != 1 {
			t.Fatalf("the manager received Host %q, want one field", got)
		}
	})
}

// TestRedteamHeaderTwinsWithUnderscoresNeverReachTheManager: IIS (ISAPI
// and CGI server variables) and other CGI-style servers read "X_Real_IP"
// and "X-Real-IP", "Content_Type" and "Content-Type" as one variable, so a
// client could send the manager a second value of a field the gateway
// judged (or stripped) under its hyphenated name. Fields whose name holds
// an underscore never reach the manager, as in Apache 2.4 and nginx.
func TestRedteamHeaderTwinsWithUnderscoresNeverReachTheManager(t *testing.T) {
	s := startSecGateway(t)
	for _, field := range []string{"Content_Type: text/xml", "Transfer_Encoding: chunked", "X_Endpoint_Id: other", "Host_: manager.internal", "Authorization_X: Basic YWRtaW46YWRtaW4="} {
		t.Run(field, func(t *testing.T) {
			s.up.Reset()
			r := s.rawRequest(t, "POST "+redteamAgent+" HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"+field+"\r\n\r\nhello")
			if r.status != http.StatusOK && r.status != http.StatusBadRequest {
				t.Fatalf("status %d (%q), want 200 (field dropped) or 400", r.status, r.body)
			}
			checkNoLeak(t, r)
			for _, got := range s.up.Requests() {
				if bytes.Contains(got.Head, []byte("_")) && bytes.Contains(bytes.ToLower(got.Head), []byte(strings.ToLower(strings.SplitN(field, ":", 2)[0]))) {
					t.Fatalf("the manager received the underscore twin:\n%s", got.Head)
				}
			}
		})
	}
}

// TestRedteamQueryValuesAWindowsManagerReadsDifferently: a query key or a
// decision value in full-width or other non-ASCII letters is not the key
// or value the gateway decided on, but a manager converting the query to
// its ANSI code page "best fit" reads it as the ASCII one (ａction → action,
// ｉndex → index): a second action, or a heartbeat past the limiter. These
// are refused. Encoded separators in query values are not paths and pass
// byte for byte; very long values are bounded by the URI limit.
func TestRedteamQueryValuesAWindowsManagerReadsDifferently(t *testing.T) {
	s := startSecGateway(t)
	const agent = "/secars/secars.dll"
	refused := []struct {
		name, query string
		want        int
	}{
		{"full-width key twin of action", "action=index&%EF%BD%81ction=log&hostid=" + secHostID, 400},
		{"raw UTF-8 full-width key", "action=index&\xef\xbd\x81ction=log&hostid=" + secHostID, 400},
		{"full-width letters in the action value", "action=%EF%BD%89ndex&hostid=" + secHostID, 400},
		{"non-ASCII host id", "action=index&hostid=0123456789abcdef0123456789abcde%EF%BD%86", 400},
		{"IIS %u escape in a value", "action=%u0069ndex&hostid=" + secHostID, 400},
		{"decision value over the URI limit", "action=index&hostid=" + strings.Repeat("a", 2100), 414},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := s.rawRequest(t, secGET(agent+"?"+tc.query))
			if r.status != tc.want {
				t.Errorf("status %d (%q), want %d", r.status, r.body, tc.want)
			}
			checkNoLeak(t, r)
			s.checkNothingSent(t)
		})
	}

	passed := []struct{ name, query string }{
		{"encoded slash and backslash in a value", "action=log&hostid=" + secHostID + "&file=..%2F..%5Cservlet%5CConsoleServlet"},
		{"non-ASCII in a value no decision reads", "action=log&hostid=" + secHostID + "&computer=M%C3%BCller"},
		{"long host id within the URI limit", "action=log&hostid=" + strings.Repeat("a", 1900)},
	}
	for _, tc := range passed {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := s.rawRequest(t, secGET(agent+"?"+tc.query))
			if r.status != http.StatusOK {
				t.Fatalf("status %d (%q), want 200", r.status, r.body)
			}
			if got, want := s.onlyRequest(t).Target(), agent+"?"+tc.query; got != want {
				t.Fatalf("the manager received %q, want %q byte for byte", got, want)
			}
		})
	}
}

// h2Result is what a raw HTTP/2 stream got: the status, or reset/goaway.
type h2Result struct {
	status int
	reset  bool
	header http.Header
}

// rawH2 opens an HTTP/2 connection to the gateway and sends one HEADERS
// frame holding fields exactly as given (pseudo-fields included, in order,
// unchecked), with endStream; it reads until the stream's answer, its
// reset or the connection's end.
func (s *secGateway) rawH2(t *testing.T, fields [][2]string, endStream bool, data []byte) h2Result {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "127.0.0.1:"+strconv.Itoa(s.g.HTTPSPort),
		&tls.Config{RootCAs: s.roots, ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if conn.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatalf("negotiated %q, want h2", conn.ConnectionState().NegotiatedProtocol)
	}
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: endStream, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if data != nil {
		if err := fr.WriteData(1, true, data); err != nil {
			t.Fatal(err)
		}
	}
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return h2Result{reset: true}
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			return h2Result{reset: true}
		case *http2.GoAwayFrame:
			return h2Result{reset: true}
		case *http2.HeadersFrame:
			hf, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			res := h2Result{header: http.Header{}}
			for _, h := range hf {
				if h.Name == ":status" {
					res.status, _ = strconv.Atoi(h.Value)
				} else {
					res.header.Add(h.Name, h.Value)
				}
			}
			if res.status >= 200 {
				return res
			}
		}
	}
}

// TestRedteamHTTP2ShapesNeverReachTheManager: HTTP/2-only request shapes
// (pseudo-header oddities, CONNECT, connection-specific fields) are refused
// by the gateway's HTTP/2 server or by manager_request, and none reaches
// the manager.
func TestRedteamHTTP2ShapesNeverReachTheManager(t *testing.T) {
	s := startSecGateway(t)
	req := func(method, path string, extra ...[2]string) [][2]string {
		f := [][2]string{{":method", method}, {":scheme", "https"}, {":authority", "localhost"}, {":path", path}}
		return append(f, extra...)
	}
	tests := []struct {
		name      string
		fields    [][2]string
		endStream bool
		data      []byte
	}{
		{":path without a leading slash", req("GET", "secars/secars.dll?action=log"), true, nil},
		{":path * on GET", req("GET", "*"), true, nil},
		{":path absolute", req("GET", "https://manager.internal/servlet/ConsoleServlet"), true, nil},
		{":path with a backslash", req("GET", `/secars/..\servlet\ConsoleServlet`), true, nil},
		{":path with a space", req("GET", "/secars/secars.dll /servlet/ConsoleServlet"), true, nil},
		{":path with a CR LF", req("GET", "/secars/secars.dll\r\nX: /servlet/ConsoleServlet"), true, nil},
		{"empty :path", req("GET", ""), true, nil},
		{"two :path fields", append(req("GET", "/secars/secars.dll"), [2]string{":path", "/servlet/ConsoleServlet"}), true, nil},
		{"pseudo-field after a regular field", [][2]string{{":method", "GET"}, {":scheme", "https"}, {"user-agent", "Smc"}, {":authority", "localhost"}, {":path", "/servlet/ConsoleServlet"}}, true, nil},
		{"unknown pseudo-field", req("GET", "/secars/secars.dll", [2]string{":protocol", "websocket"}), true, nil},
		{"CONNECT", [][2]string{{":method", "CONNECT"}, {":authority", "manager.internal:8443"}}, false, []byte("GET /servlet/ConsoleServlet HTTP/1.1\r\n\r\n")},
		{"extended CONNECT", req("CONNECT", "/secars/secars.dll", [2]string{":protocol", "websocket"}), false, []byte("x")},
		{"te: gzip", req("GET", "/servlet/ConsoleServlet", [2]string{"te", "gzip"}), true, nil},
		{"connection field", req("GET", "/servlet/ConsoleServlet", [2]string{"connection", "keep-alive"}), true, nil},
		{"transfer-encoding field", req("POST", "/servlet/ConsoleServlet", [2]string{"transfer-encoding", "chunked"}), false, []byte("0\r\n\r\n")},
		{"upgrade field", req("GET", "/servlet/ConsoleServlet", [2]string{"upgrade", "h2c"}), true, nil},
		{"upper-case field name", req("GET", "/servlet/ConsoleServlet", [2]string{"X-Upper", "1"}), true, nil},
		{"lower-case method", req("get", "/secars/secars.dll?action=log"), true, nil},
		{"GET with a DATA frame", req("GET", "/secars/secars.dll?action=log"), false, []byte("hello")},
		{"authority naming another host", [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "manager.internal"}, {":path", "/secars/secars.dll?action=log"}}, true, nil},
		{"authority and host disagreeing", req("GET", "/servlet/ConsoleServlet", [2]string{"host", "manager.internal"}), true, nil},
		{"trailers after the body", req("POST", "/secars/secars.dll?action=log", [2]string{"content-length", "5"}, [2]string{"trailer", "x-a"}), false, []byte("hello")},
		{":scheme http", [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "localhost"}, {":path", "/servlet/ConsoleServlet"}}, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := s.rawH2(t, tc.fields, tc.endStream, tc.data)
			if !r.reset && (r.status < 400 || r.status >= 500) {
				t.Errorf("status %d, want a 4xx or a reset stream", r.status)
			}
			if r.header != nil {
				checkNoLeak(t, secResponse{proto: "h2", status: r.status, header: r.header})
			}
			time.Sleep(100 * time.Millisecond)
			s.checkNothingSent(t)
		})
	}

	t.Run("the canonical request over raw HTTP/2 reaches the manager once", func(t *testing.T) {
		s.up.Reset()
		r := s.rawH2(t, req("GET", redteamAgent, [2]string{"user-agent", "Smc"}, [2]string{"te", "trailers"}), true, nil)
		if r.status != http.StatusOK {
			t.Fatalf("status %d (reset %v), want 200", r.status, r.reset)
		}
		if got := s.onlyRequest(t); got.Target() != redteamAgent || len(got.Header("Upgrade")) != 0 {
			t.Fatalf("the manager received %q", got.Head)
		}
	})
}

// TestRedteamManagerAnswersNeverCarryWhatTheClientWouldObey: a hostile
// manager's informational and upgrade answers, encodings on bodiless
// answers, trailers and redirects reach the client cleaned or not at all.
func TestRedteamManagerAnswersNeverCarryWhatTheClientWouldObey(t *testing.T) {
	s := startSecGateway(t)
	profile := []byte(`<?xml version="1.0"?><Profile SerialNumber="EVIL"><Setting Name="AutoProtect" Value="0"/></Profile>`)
	packed := string(gzipped(t, profile))
	const policy = "/secars/secars.dll?action=profile&hostid=" + secHostID
	const content = "/content/{535CB6A4-441F-4e8a-A897-804CD859100E}/190101001/full.zip"
	chunked := func(header, body, trailer string) []byte {
		return []byte("HTTP/1.1 200 OK\r\n" + header + "Transfer-Encoding: chunked\r\n\r\n" +
			strconv.FormatInt(int64(len(body)), 16) + "\r\n" + body + "\r\n0\r\n" + trailer + "\r\n")
	}
	tests := []struct {
		name   string
		target string
		answer []byte
		check  func(t *testing.T, r secResponse, raw []byte)
	}{
		{"101 Switching Protocols to a plain GET", policy, []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n" + string(profile)),
			func(t *testing.T, r secResponse, raw []byte) {
				if r.status == http.StatusSwitchingProtocols || bytes.Contains(raw, []byte("<Profile")) {
					t.Fatalf("the client got %d %q", r.status, raw)
				}
			}},
		{"103 Early Hints carrying banners and a cookie", policy, append([]byte("HTTP/1.1 103 Early Hints\r\nServer: Microsoft-IIS/7.5\r\nSet-Cookie: s=1\r\nX-Powered-By: ASP.NET\r\nLink: </x>; rel=preload\r\n\r\n"), secIndexAnswer...),
			func(t *testing.T, r secResponse, raw []byte) {
				for _, leak := range []string{"Microsoft-IIS", "Set-Cookie", "ASP.NET"} {
					if bytes.Contains(raw, []byte(leak)) {
						t.Fatalf("an informational answer carried %s:\n%s", leak, raw)
					}
				}
			}},
		{"304 with Content-Encoding gzip on the policy path", policy, harness.RawAnswer("304 Not Modified", []string{"Content-Encoding: gzip", "Content-Type: text/xml"}, ""),
			func(t *testing.T, r secResponse, raw []byte) {
				if r.status != http.StatusNotModified && r.status != http.StatusBadGateway || len(r.body) != 0 {
					t.Fatalf("status %d body %q, want 304 or 502 with no body", r.status, r.body)
				}
			}},
		{"204 with Content-Encoding gzip and a body", policy, []byte("HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\nContent-Type: text/xml\r\n\r\n" + packed),
			func(t *testing.T, r secResponse, raw []byte) {
				checkNoProfile(t, r.body)
			}},
		{"chunked Profile with a Content-Encoding trailer", policy, chunked("Content-Type: text/xml\r\nTrailer: Content-Encoding\r\n", packed, "Content-Encoding: gzip\r\n"),
			func(t *testing.T, r secResponse, raw []byte) {
				if r.status != http.StatusBadGateway {
					t.Errorf("status %d, want 502", r.status)
				}
				checkNoProfile(t, r.body)
			}},
		{"chunked content with a Content-Encoding trailer", content, chunked("Content-Type: application/zip\r\nTrailer: Content-Encoding, Set-Cookie\r\n", "PK\x03\x04", "Content-Encoding: gzip\r\nSet-Cookie: s=1\r\n"),
			func(t *testing.T, r secResponse, raw []byte) {
				for _, leak := range []string{"Content-Encoding", "Set-Cookie"} {
					if bytes.Contains(raw, []byte(leak)) {
						t.Fatalf("a trailer %s reached the client:\n%q", leak, raw)
					}
				}
			}},
		{"redirect to a third-party host", content, harness.RawAnswer("302 Found", []string{"Location: https://evil.example/payload.exe"}, ""),
			func(t *testing.T, r secResponse, raw []byte) {
				if loc := r.header.Get("Location"); strings.Contains(loc, "evil") {
					t.Fatalf("Location %q", loc)
				}
			}},
		{"scheme-relative redirect", content, harness.RawAnswer("301 Moved Permanently", []string{"Location: //evil.example/payload.exe"}, ""),
			func(t *testing.T, r secResponse, raw []byte) {
				if loc := r.header.Get("Location"); strings.Contains(loc, "evil") {
					t.Fatalf("Location %q", loc)
				}
			}},
		{"backslash redirect", content, harness.RawAnswer("302 Found", []string{`Location: /\evil.example/payload.exe`}, ""),
			func(t *testing.T, r secResponse, raw []byte) {
				if loc := r.header.Get("Location"); strings.Contains(loc, "evil") {
					t.Fatalf("Location %q", loc)
				}
			}},
		{"tab in a redirect", content, harness.RawAnswer("302 Found", []string{"Location: /\t/evil.example/payload.exe"}, ""),
			func(t *testing.T, r secResponse, raw []byte) {
				if loc := r.header.Get("Location"); strings.Contains(loc, "evil") {
					t.Fatalf("Location %q", loc)
				}
			}},
		{"opaque redirect", content, harness.RawAnswer("302 Found", []string{"Location: https:evil.example/payload.exe"}, ""),
			func(t *testing.T, r secResponse, raw []byte) {
				if loc := r.header.Get("Location"); strings.Contains(loc, "evil") {
					t.Fatalf("Location %q", loc)
				}
			}},
		{"Location with a bare CR and a cookie", content, harness.RawAnswer("302 Found", []string{"Location: /a\rSet-Cookie: s=1"}, ""),
			func(t *testing.T, r secResponse, raw []byte) {
				if bytes.Contains(raw, []byte("Set-Cookie")) || bytes.Contains(raw, []byte("\r\r")) {
					t.Fatalf("the client got %q", raw)
				}
			}},
		{"Location split over two lines", content, harness.RawAnswer("302 Found", []string{"Location: /secars/secars.dll", "Location: https://evil.example/"}, ""),
			func(t *testing.T, r secResponse, raw []byte) {
				if r.status != http.StatusBadGateway || bytes.Contains(raw, []byte("evil")) {
					t.Fatalf("status %d %q, want 502", r.status, raw)
				}
			}},
		// /content carries definition packages, which the SEP client checks
		// against their own signature; it never reads a policy from there,
		// so a Profile under /content is passed like any other content.
		{"gzipped Profile under /content passes as content", content, harness.RawAnswer("200 OK", []string{"Content-Type: text/xml", "Content-Encoding: gzip"}, packed),
			func(t *testing.T, r secResponse, raw []byte) {
				// The gateway's transport may decode it: either way it is
				// delivered as content, the one thing /content carries.
				if r.status != http.StatusOK || string(r.body) != packed && !bytes.Equal(r.body, profile) {
					t.Fatalf("status %d, Content-Encoding %q, %d bytes: want the content as sent or decoded", r.status, r.header.Get("Content-Encoding"), len(r.body))
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.setAnswer(t, tc.answer)
			s.up.Reset()
			raw, r := s.rawExchange(t, secGET(tc.target))
			checkNoLeak(t, r)
			tc.check(t, r, raw)
		})
	}
}

// rawExchange is rawRequest that also returns every byte of the answer, so
// informational answers and trailers can be inspected; the final answer is
// parsed from what follows any 1xx.
func (s *secGateway) rawExchange(t *testing.T, req string) ([]byte, secResponse) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "127.0.0.1:"+strconv.Itoa(s.g.HTTPSPort),
		&tls.Config{RootCAs: s.roots, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, strings.Replace(req, "\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)); err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	raw, _ := io.ReadAll(conn)
	rest := raw
	for bytes.HasPrefix(rest, []byte("HTTP/1.1 1")) {
		i := bytes.Index(rest, []byte("\r\n\r\n"))
		if i < 0 {
			break
		}
		rest = rest[i+4:]
	}
	return raw, readSecResponse(t, &bytesConn{Reader: bytes.NewReader(rest)}, req)
}

// bytesConn is a net.Conn reading from a buffer, for readSecResponse.
type bytesConn struct {
	net.Conn
	*bytes.Reader
}

func (c *bytesConn) Read(p []byte) (int, error) { return c.Reader.Read(p) }

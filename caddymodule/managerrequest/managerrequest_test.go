package managerrequest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// exampleConfig is the documented example.
func exampleConfig() *ManagerRequest {
	return &ManagerRequest{
		Allow: []AllowRule{
			{Path: "/secars/secars.dll", Methods: []string{"GET", "POST"}},
			{Path: "/secreg/secreg.dll", Methods: []string{"POST"}},
			{Path: "/content/*", Methods: []string{"GET", "HEAD"}},
			{Path: "/probe", Methods: []string{"OPTIONS"}},
		},
		DecisionKeys: []string{"action", "hostid"},
	}
}

// provision provisions m and swaps its logger for one the test reads.
func provision(t testing.TB, m *ManagerRequest) *observer.ObservedLogs {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := m.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	m.logger = zap.New(core)
	return logs
}

// seen is what the next handler was given.
type seen struct {
	called                              bool
	path, rawPath, rawQuery, requestURI string
	header                              http.Header
}

// serve runs r through m with Caddy's request context (replacer, vars),
// Caddy's Server header pre-set, and a next handler that records the
// request and then runs answer (when not nil).
func serve(t testing.TB, m *ManagerRequest, r *http.Request, trusted bool, answer func(w http.ResponseWriter, r *http.Request)) (*httptest.ResponseRecorder, *seen) {
	t.Helper()
	w := httptest.NewRecorder()
	w.Header().Set("Server", "Caddy")
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, srv)
	if trusted {
		caddyhttp.SetVar(r.Context(), caddyhttp.TrustedProxyVarKey, true)
	}
	s := &seen{}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		*s = seen{true, r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.RequestURI, r.Header.Clone()}
		if answer != nil {
			answer(w, r)
		}
		return nil
	})
	if err := m.ServeHTTP(w, r, next); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	return w, s
}

// proxied sets what reverse_proxy sets before writing the manager's status.
func proxied(r *http.Request, status int) {
	r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Set("http.reverse_proxy.status_code", status)
}

func TestServeHTTPRefusesIssue11PathsWithoutCallingNext(t *testing.T) {
	m := exampleConfig()
	logs := provision(t, m)
	tests := []struct {
		target, reason string
		status         int
	}{
		{"/secars/..%5c..%5cadmin", "backslash", 400},
		{`/secars/..\..\sepm`, "backslash", 400},
		{"/secars/%2e%2e%5cx", "backslash", 400},
		{"/secars/secars.dll%00", "nul_or_control", 400},
		{"/secars/..%c0%af..%c0%afadmin", "invalid_utf8", 400},
		{"/secars/%252e%252e/admin", "double_encoding", 400},
		{"/secars/secars.dll/", "empty_segment", 400},
		{"/secars/secars.dll.", "trailing_dot_or_space", 400},
		{"/secars/secars.dll%20", "trailing_dot_or_space", 400},
		{"/secars/SECARS~1.DLL", "short_name", 400},
		{"/secars/secars.dll::$DATA", "alternate_stream", 400},
		{"/content/..;/servlet/ConsoleServlet", "semicolon", 400},
		{"/secars/..%ef%bc%8fadmin", "non_ascii", 400},
		{"/secars%2fsecars.dll", "encoded_separator", 400},
		{"/secars/secars.dll?action=index&action=log", "duplicate_key", 400},
		{"/secars/secars.dll?action=index&ACTION=log", "duplicate_key", 400},
		{"/secars/secars.dll?action=index;action=log", "semicolon", 400},
		{"/secars/secars.dll?hostid=%00", "nul_or_control", 400},
		{"/secars/secars.dll/x", "path_not_allowed", 404},
		{"/servlet/ConsoleServlet", "path_not_allowed", 404},
		{"/secars/", "empty_segment", 400},
		{"/content", "path_not_allowed", 404},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			logs.TakeAll()
			before := testutil.ToFloat64(m.refusals[tc.reason])
			w, s := serve(t, m, httptest.NewRequest("GET", tc.target, nil), false, nil)
			if s.called {
				t.Fatalf("next handler called with %q", s.path)
			}
			wantBody := strconv.Itoa(tc.status) + " " + http.StatusText(tc.status) + "\n"
			if w.Code != tc.status || w.Body.String() != wantBody {
				t.Errorf("answer %d %q, want %d %q", w.Code, w.Body, tc.status, wantBody)
			}
			if v := w.Header().Values("Server"); len(v) != 0 {
				t.Errorf("Server header %q on a refusal", v)
			}
			if got := testutil.ToFloat64(m.refusals[tc.reason]) - before; got != 1 {
				t.Errorf("refusals{reason=%q} grew by %v, want 1", tc.reason, got)
			}
			entries := logs.FilterMessage("manager request refused").All()
			if len(entries) != 1 {
				t.Fatalf("%d log lines, want 1", len(entries))
			}
			f := entries[0].ContextMap()
			if f["reason"] != tc.reason || f["method"] != "GET" || f["remote"] != "192.0.2.1:1234" || f["path"] == "" {
				t.Errorf("log fields %v", f)
			}
		})
	}
}

func TestServeHTTPRewritesToTheListedSpelling(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	tests := []struct {
		target, path, query, requestURI string
	}{
		{"/secars/secars.dll?action=index&hostid=AB", "/secars/secars.dll", "action=index&hostid=AB", "/secars/secars.dll?action=index&hostid=AB"},
		{"/SECARS/SecArs.DLL", "/secars/secars.dll", "", "/secars/secars.dll"},
		{"/secars/secars%2edll", "/secars/secars.dll", "", "/secars/secars.dll"},
		{"/secars/secars.dll?Action=index&HOSTID=AB&x=%41", "/secars/secars.dll", "action=index&hostid=AB&x=%41", "/secars/secars.dll?action=index&hostid=AB&x=%41"},
		{"/CONTENT/A1/Full.zip", "/content/A1/Full.zip", "", "/content/A1/Full.zip"},
		{"/content/%7BA1%7D/full.zip", "/content/{A1}/full.zip", "", "/content/%7BA1%7D/full.zip"},
		{"/secars/secars.dll?hello,secars", "/secars/secars.dll", "hello,secars", "/secars/secars.dll?hello,secars"},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			w, s := serve(t, m, httptest.NewRequest("GET", tc.target, nil), false, nil)
			if !s.called {
				t.Fatalf("refused: %d %q", w.Code, w.Body)
			}
			if s.path != tc.path || s.rawPath != "" || s.rawQuery != tc.query || s.requestURI != tc.requestURI {
				t.Errorf("next saw path %q raw %q query %q uri %q; want %q \"\" %q %q", s.path, s.rawPath, s.rawQuery, s.requestURI, tc.path, tc.query, tc.requestURI)
			}
		})
	}
}

func TestServeHTTPAllowsOnlyListedMethodsWith405AndAllow(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	for _, method := range []string{"TRACE", "PUT", "DELETE", "PROPFIND", "MOVE", "FOO", "OPTIONS", "CONNECT", "HEAD", "PATCH"} {
		t.Run(method, func(t *testing.T) {
			r := httptest.NewRequest(method, "/secars/secars.dll", nil)
			w, s := serve(t, m, r, false, nil)
			if s.called || w.Code != http.StatusMethodNotAllowed {
				t.Fatalf("%s: called=%v status %d, want 405 and not called", method, s.called, w.Code)
			}
			if got := w.Header().Get("Allow"); got != "GET, POST" {
				t.Errorf("Allow = %q, want \"GET, POST\"", got)
			}
		})
	}
	for _, tc := range []struct{ method, path string }{{"POST", "/secars/secars.dll"}, {"POST", "/secreg/secreg.dll"}, {"HEAD", "/content/a.zip"}, {"OPTIONS", "/probe"}} {
		if _, s := serve(t, m, httptest.NewRequest(tc.method, tc.path, nil), false, nil); !s.called {
			t.Errorf("%s %s refused", tc.method, tc.path)
		}
	}
}

func TestServeHTTPRefusesBodiesOnGetHeadOptions(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	tests := []struct {
		name    string
		method  string
		path    string
		length  int64
		chunked bool
	}{
		{"GET with Content-Length", "GET", "/secars/secars.dll", 5, false},
		{"GET chunked", "GET", "/secars/secars.dll", -1, true},
		{"HEAD with Content-Length", "HEAD", "/content/a.zip", 3, false},
		{"OPTIONS chunked", "OPTIONS", "/probe", -1, true},
		{"GET of unknown length", "GET", "/secars/secars.dll", -1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.path, strings.NewReader("hello"))
			r.ContentLength = tc.length
			if tc.chunked {
				r.TransferEncoding = []string{"chunked"}
			}
			w, s := serve(t, m, r, false, nil)
			if s.called || w.Code != http.StatusBadRequest || w.Header().Get("Connection") != "close" {
				t.Errorf("called=%v status %d Connection %q, want 400, close, not called", s.called, w.Code, w.Header().Get("Connection"))
			}
		})
	}
	r := httptest.NewRequest("POST", "/secars/secars.dll", strings.NewReader("hello"))
	if _, s := serve(t, m, r, false, nil); !s.called {
		t.Error("POST with a body refused")
	}
}

// streamBody is an HTTP/2 or HTTP/3 request body: what the client sends
// on the stream, then its end (io.EOF), a reset (err) or nothing yet.
type streamBody struct {
	data  string
	err   error
	block chan struct{} // closed by the test's cleanup
}

func (b *streamBody) Read(p []byte) (int, error) {
	if b.block != nil {
		<-b.block
		return 0, io.ErrClosedPipe
	}
	if b.data != "" {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	if b.err != nil {
		return 0, b.err
	}
	return 0, io.EOF
}

func (b *streamBody) Close() error { return nil }

// deadlineRecorder is a response writer that, like HTTP/2's and HTTP/3's,
// takes a read deadline for the request's stream.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	deadline time.Time
}

func (w *deadlineRecorder) SetReadDeadline(t time.Time) error {
	w.deadline = t
	return nil
}

func TestServeHTTPJudgesBodiesByEachProtocolsFraming(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	m.bodyWait = time.Second // the stream left open waits this long
	tests := []struct {
		name    string
		proto   int
		method  string
		path    string
		length  int64
		chunked bool
		body    func(t *testing.T) io.ReadCloser
		refused bool
	}{
		{"HTTP/3 GET of unknown length that ends at once", 3, "GET", "/secars/secars.dll", -1, false, ended(""), false},
		{"HTTP/3 HEAD of unknown length that ends at once", 3, "HEAD", "/content/a.zip", -1, false, ended(""), false},
		{"HTTP/3 OPTIONS of unknown length that ends at once", 3, "OPTIONS", "/probe", -1, false, ended(""), false},
		{"HTTP/3 GET with Content-Length: 0", 3, "GET", "/secars/secars.dll", 0, false, ended(""), false},
		{"HTTP/3 GET with NoBody", 3, "GET", "/secars/secars.dll", -1, false, func(*testing.T) io.ReadCloser { return http.NoBody }, false},
		{"HTTP/2 GET whose header block ended the stream", 2, "GET", "/secars/secars.dll", 0, false, ended(""), false},
		{"HTTP/2 GET ended by an empty DATA frame", 2, "GET", "/secars/secars.dll", -1, false, ended(""), false},
		{"HTTP/3 GET of unknown length with data", 3, "GET", "/secars/secars.dll", -1, false, ended("x"), true},
		{"HTTP/2 GET of unknown length with data", 2, "GET", "/secars/secars.dll", -1, false, ended("hello"), true},
		{"HTTP/3 HEAD of unknown length with data", 3, "HEAD", "/content/a.zip", -1, false, ended("x"), true},
		{"HTTP/3 GET with Content-Length", 3, "GET", "/secars/secars.dll", 5, false, ended("hello"), true},
		{"HTTP/2 GET with Content-Length", 2, "GET", "/secars/secars.dll", 5, false, ended("hello"), true},
		{"HTTP/2 OPTIONS with Transfer-Encoding", 2, "OPTIONS", "/probe", -1, true, ended(""), true},
		{"HTTP/3 GET reset before its end", 3, "GET", "/secars/secars.dll", -1, false, func(*testing.T) io.ReadCloser {
			return &streamBody{err: errors.New("stream reset")}
		}, true},
		{"HTTP/3 GET whose stream stays open past the wait", 3, "GET", "/secars/secars.dll", -1, false, func(t *testing.T) io.ReadCloser {
			b := &streamBody{block: make(chan struct{})}
			t.Cleanup(func() { close(b.block) })
			return b
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.path, nil)
			r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/"+strconv.Itoa(tc.proto)+".0", tc.proto, 0
			r.Body, r.ContentLength = tc.body(t), tc.length
			if tc.chunked {
				r.TransferEncoding = []string{"chunked"}
			}
			var body io.ReadCloser
			var length int64
			w, s := serve(t, m, r, false, func(w http.ResponseWriter, r *http.Request) {
				body, length = r.Body, r.ContentLength
				w.WriteHeader(http.StatusOK)
			})
			if tc.refused {
				if s.called || w.Code != http.StatusBadRequest {
					t.Fatalf("called=%v status %d, want 400 and not called", s.called, w.Code)
				}
				if v, ok := w.Header()["Connection"]; ok {
					t.Errorf("Connection %q on an HTTP/%d answer, where the field is forbidden", v, tc.proto)
				}
				return
			}
			if !s.called || w.Code != http.StatusOK {
				t.Fatalf("called=%v status %d, want passed on", s.called, w.Code)
			}
			if tc.length < 0 && (body != http.NoBody || length != 0) {
				t.Errorf("passed on with body %T length %d, want http.NoBody and 0", body, length)
			}
		})
	}
}

func ended(data string) func(*testing.T) io.ReadCloser {
	return func(*testing.T) io.ReadCloser { return &streamBody{data: data} }
}

func TestServeHTTPBoundsTheEmptyBodyReadWithTheStreamsDeadline(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	r := httptest.NewRequest("GET", "/secars/secars.dll", nil)
	r.ProtoMajor, r.Body, r.ContentLength = 3, &streamBody{}, -1
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
	w := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
	before := time.Now()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { return nil })
	if err := m.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if w.deadline.Before(before.Add(emptyBodyWait)) || w.deadline.After(time.Now().Add(emptyBodyWait)) {
		t.Errorf("read deadline %v, want %v after the request started", w.deadline, emptyBodyWait)
	}
}

func TestServeHTTPRefusesGetsWhoseRequestEndsWhileWaitingForTheBody(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := &streamBody{block: make(chan struct{})}
	t.Cleanup(func() { close(b.block) })
	r := httptest.NewRequestWithContext(ctx, "GET", "/secars/secars.dll", nil)
	r.ProtoMajor, r.Body, r.ContentLength = 3, b, -1
	start := time.Now()
	w, s := serve(t, m, r, false, nil)
	if s.called || w.Code != http.StatusBadRequest {
		t.Errorf("called=%v status %d, want 400 and not called", s.called, w.Code)
	}
	if d := time.Since(start); d > emptyBodyWait/2 {
		t.Errorf("took %v: the request's end did not stop the wait", d)
	}
}

func TestRefusalsSayConnectionCloseOnlyOverHTTP1(t *testing.T) {
	m := exampleConfig()
	m.MaxHeaderSize = 64
	provision(t, m)
	for _, tc := range []struct {
		proto     int
		bigHeader bool
		want      []string
	}{
		{1, false, []string{"close"}},
		{1, true, []string{"close"}},
		{2, false, nil},
		{2, true, nil},
		{3, false, nil},
		{3, true, nil},
	} {
		r := httptest.NewRequest("GET", "/secars/secars.dll", strings.NewReader("hello"))
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/"+strconv.Itoa(tc.proto)+".0", tc.proto, 0
		wantStatus := http.StatusBadRequest
		if tc.bigHeader {
			r.Header.Set("X-Big", strings.Repeat("a", 100))
			wantStatus = http.StatusRequestHeaderFieldsTooLarge
		}
		w, _ := serve(t, m, r, false, nil)
		if got := w.Header()["Connection"]; w.Code != wantStatus || !slices.Equal(got, tc.want) {
			t.Errorf("HTTP/%d: status %d Connection %q, want %d and %q", tc.proto, w.Code, got, wantStatus, tc.want)
		}
	}
}

func TestServeHTTPRefusesRepeatedSingletonHeaders(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	for _, name := range singletonRequestHeaders {
		t.Run(name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/secars/secars.dll", nil)
			r.Header[name] = []string{"a", "b"}
			w, s := serve(t, m, r, false, nil)
			if s.called || w.Code != http.StatusBadRequest {
				t.Errorf("called=%v status %d, want 400", s.called, w.Code)
			}
		})
	}
}

func TestServeHTTPHoldsTheHeaderSizeExactly(t *testing.T) {
	r := func() *http.Request {
		r := httptest.NewRequest("GET", "http://gw.example/secars/secars.dll?action=index", nil)
		r.RequestURI = "/secars/secars.dll?action=index"
		r.Proto = "HTTP/1.1"
		r.Header.Set("User-Agent", "Smc")
		return r
	}
	// "GET /secars/secars.dll?action=index HTTP/1.1\r\n" + "Host: gw.example\r\n" + "User-Agent: Smc\r\n"
	exact := len("GET /secars/secars.dll?action=index HTTP/1.1\r\n") + len("Host: gw.example\r\n") + len("User-Agent: Smc\r\n")
	for _, tc := range []struct {
		limit int
		want  int
	}{{exact, 200}, {exact - 1, 431}, {exact + 1, 200}} {
		m := exampleConfig()
		m.MaxHeaderSize = tc.limit
		provision(t, m)
		w, _ := serve(t, m, r(), false, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
		if w.Code != tc.want {
			t.Errorf("limit %d for a %d-byte head: %d, want %d", tc.limit, exact, w.Code, tc.want)
		}
	}
}

func TestServeHTTPDefaultsToTheServersMaxHeaderBytes(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	r := httptest.NewRequest("GET", "/secars/secars.dll", nil)
	r.Header.Set("X-Big", strings.Repeat("a", 17<<10))
	if w, _ := serve(t, m, r, false, nil); w.Code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("17 KiB head with no server: %d, want 431 (Caddy's 16 KiB default)", w.Code)
	}
	r = httptest.NewRequest("GET", "/secars/secars.dll", nil)
	r.Header.Set("X-Big", strings.Repeat("a", 17<<10))
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.ServerCtxKey, &caddyhttp.Server{MaxHeaderBytes: 32 << 10}))
	if w, _ := serve(t, m, r, false, nil); w.Code != http.StatusOK {
		t.Errorf("17 KiB head with a 32 KiB server limit: %d, want 200", w.Code)
	}
}

func TestServeHTTPStripsForwardingHeadersFromUntrustedPeers(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	all := []string{"X-Real-Ip", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
		"X-Forwarded-Server", "X-Client-Ip", "True-Client-Ip", "X-Original-Url", "X-Rewrite-Url", "X_forwarded_for", "x-real-ip"}
	tests := []struct {
		name    string
		trusted bool
		kept    []string
	}{
		{"untrusted", false, nil},
		{"trusted proxy", true, []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/secars/secars.dll", nil)
			for _, name := range all {
				r.Header[name] = []string{"10.0.0.5"}
			}
			r.Header.Set("User-Agent", "Smc")
			_, s := serve(t, m, r, tc.trusted, nil)
			for _, name := range all {
				_, got := s.header[name]
				want := false
				for _, k := range tc.kept {
					want = want || k == name
				}
				if got != want {
					t.Errorf("%s reached next: %v, want %v", name, got, want)
				}
			}
			if s.header.Get("User-Agent") != "Smc" {
				t.Error("User-Agent was stripped")
			}
		})
	}
}

func TestServeHTTPDropsManagerBannersAndCookies(t *testing.T) {
	banners := map[string]string{
		"Server": "Microsoft-IIS/10.0", "Via": "1.1 Caddy", "X-Powered-By": "ASP.NET",
		"X-Aspnet-Version": "4.0.30319", "X-Aspnetmvc-Version": "5.2", "X-Aspnet-Custom": "x",
		"Microsoftofficewebserver": "5.0_Pub", "Microsoftsharepointteamservices": "15.0",
		"X-Sourcefiles": "=?UTF-8?B?Qzpc?=", "Set-Cookie": "ASP.NET_SessionId=abc",
	}
	tests := []struct {
		name string
		keep []string
	}{{"defaults", nil}, {"keep_header Set-Cookie", []string{"Set-Cookie"}}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := exampleConfig()
			m.KeepHeaders = tc.keep
			provision(t, m)
			w, _ := serve(t, m, httptest.NewRequest("GET", "/secars/secars.dll", nil), false, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range banners {
					w.Header().Set(k, v)
				}
				w.Header().Set("Content-Type", "text/xml")
				_, _ = io.WriteString(w, "<Index/>")
			})
			for k := range banners {
				kept := len(tc.keep) > 0 && k == "Set-Cookie"
				if got := w.Header().Get(k) != ""; got != kept {
					t.Errorf("%s present: %v, want %v", k, got, kept)
				}
			}
			if w.Header().Get("Content-Type") != "text/xml" || w.Body.String() != "<Index/>" {
				t.Errorf("answer changed: %v %q", w.Header(), w.Body)
			}
		})
	}
}

func TestServeHTTPReducesAbsoluteLocationToPathAndQuery(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	tests := []struct {
		location, want string
	}{
		{"http://10.0.0.5:8014/secars/x", "/secars/x"},
		{"https://manager.internal/secars/x?a=1&b=%41#frag", "/secars/x?a=1&b=%41"},
		{"//10.0.0.5/x", "/x"},
		{"http://10.0.0.5:8014", "/"},
		{"/secars/x?a=1", "/secars/x?a=1"},
		{"x/y", "x/y"},
		{"http://[::1", ""},
		{"/\\10.0.0.5/x", ""},
		{"mailto:admin@manager", ""},
	}
	for _, tc := range tests {
		t.Run(tc.location, func(t *testing.T) {
			w, _ := serve(t, m, httptest.NewRequest("GET", "/secars/secars.dll", nil), false, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Location", tc.location)
				w.WriteHeader(http.StatusFound)
			})
			got := w.Header().Values("Location")
			if tc.want == "" && len(got) != 0 || tc.want != "" && (len(got) != 1 || got[0] != tc.want) {
				t.Errorf("Location %q → %q, want %q", tc.location, got, tc.want)
			}
			if w.Code != http.StatusFound {
				t.Errorf("status %d, want 302", w.Code)
			}
		})
	}
}

func TestServeHTTPReplacesAnswersWithRepeatedSingletonHeadersBy502(t *testing.T) {
	m := exampleConfig()
	logs := provision(t, m)
	for _, name := range singletonResponseHeaders {
		t.Run(name, func(t *testing.T) {
			logs.TakeAll()
			before := testutil.ToFloat64(m.replaced[reasonDuplicateResponseHeader])
			w, _ := serve(t, m, httptest.NewRequest("GET", "/secars/secars.dll", nil), false, func(w http.ResponseWriter, r *http.Request) {
				proxied(r, 200)
				w.Header()[name] = []string{"identity", "gzip"}
				w.Header().Set("X-Manager", "1")
				w.WriteHeader(200)
				_, _ = io.WriteString(w, "<Profile>unsigned</Profile>")
			})
			if w.Code != 502 || w.Body.String() != "502 Bad Gateway\n" {
				t.Errorf("answer %d %q, want 502 with the fixed body", w.Code, w.Body)
			}
			if w.Header().Get("X-Manager") != "" || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" || w.Header().Get("Content-Length") != "16" {
				t.Errorf("header %v, want only the fixed body's", w.Header())
			}
			if got := testutil.ToFloat64(m.replaced[reasonDuplicateResponseHeader]) - before; got != 1 {
				t.Errorf("counter grew by %v, want 1", got)
			}
			if e := logs.FilterMessage("manager answer replaced").All(); len(e) != 1 || e[0].ContextMap()["header"] != name {
				t.Errorf("log lines %v", e)
			}
		})
	}
}

func TestServeHTTPReplacesOnlyTheManagers5xxBodies(t *testing.T) {
	off := false
	tests := []struct {
		name      string
		fixedOff  bool
		proxied   int // the placeholder reverse_proxy would have set; 0 for none
		status    int
		wantBody  string
		wantFixed bool
	}{
		{"manager 500", false, 500, 500, "500 Internal Server Error\n", true},
		{"manager 503", false, 503, 503, "503 Service Unavailable\n", true},
		{"gateway's own 503 (heartbeat_limit)", false, 0, 503, "come back later", false},
		{"gateway's own 502 over a manager 200 (policy_guard)", false, 200, 502, "come back later", false},
		{"manager 404 untouched", false, 404, 404, "come back later", false},
		{"fixed_error_body off", true, 500, 500, "come back later", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := exampleConfig()
			if tc.fixedOff {
				m.FixedErrorBody = &off
			}
			provision(t, m)
			w, _ := serve(t, m, httptest.NewRequest("GET", "/secars/secars.dll", nil), false, func(w http.ResponseWriter, r *http.Request) {
				if tc.proxied != 0 {
					proxied(r, tc.proxied)
				}
				w.Header().Set("Content-Type", "text/html")
				w.Header().Set("Retry-After", "60")
				w.WriteHeader(tc.status)
				if tc.wantFixed {
					_, _ = io.WriteString(w, "System.NullReferenceException at Sem.Secars.Handle() in C:\\src\\secars.cs:line 42")
				} else {
					_, _ = io.WriteString(w, "come back later")
				}
			})
			if w.Code != tc.status || w.Body.String() != tc.wantBody {
				t.Errorf("answer %d %q, want %d %q", w.Code, w.Body, tc.status, tc.wantBody)
			}
			if tc.wantFixed {
				if w.Header().Get("Content-Type") != "text/plain; charset=utf-8" || w.Header().Get("Content-Length") != strconv.Itoa(len(tc.wantBody)) {
					t.Errorf("header %v, want the fixed body's type and length", w.Header())
				}
			}
			if w.Header().Get("Retry-After") != "60" {
				t.Error("Retry-After was dropped")
			}
		})
	}
}

func TestServeHTTPCleansHeadersWrittenByFlushOrReadFrom(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	tests := map[string]func(w http.ResponseWriter){
		"Flush":     func(w http.ResponseWriter) { _ = http.NewResponseController(w).Flush() },
		"ReadFrom":  func(w http.ResponseWriter) { _, _ = io.Copy(w, strings.NewReader("x")) },
		"Write":     func(w http.ResponseWriter) { _, _ = w.Write([]byte("x")) },
		"no writes": func(w http.ResponseWriter) {},
	}
	for name, write := range tests {
		t.Run(name, func(t *testing.T) {
			w, _ := serve(t, m, httptest.NewRequest("GET", "/secars/secars.dll", nil), false, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Server", "Microsoft-IIS/10.0")
				w.Header().Set("Location", "http://10.0.0.5:8014/x")
				write(w)
			})
			if w.Header().Get("Server") != "" || w.Header().Get("Location") != "/x" {
				t.Errorf("header %v, want no Server and Location /x", w.Header())
			}
		})
	}
}

func TestServeHTTPDiscardsTheManagersBodyAfterReplacingIt(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	w, _ := serve(t, m, httptest.NewRequest("GET", "/secars/secars.dll", nil), false, func(w http.ResponseWriter, r *http.Request) {
		proxied(r, 500)
		w.WriteHeader(500)
		_, _ = io.Copy(w, strings.NewReader("stack trace via ReadFrom"))
		_, _ = w.Write([]byte("more"))
		_ = http.NewResponseController(w).Flush()
	})
	if w.Body.String() != "500 Internal Server Error\n" {
		t.Errorf("body %q", w.Body)
	}
}

func TestServeHTTPCountsPassedRequests(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	before := testutil.ToFloat64(m.passed)
	serve(t, m, httptest.NewRequest("GET", "/secars/secars.dll", nil), false, nil)
	if got := testutil.ToFloat64(m.passed) - before; got != 1 {
		t.Errorf("passed grew by %v, want 1", got)
	}
}

func TestRefusalLogEscapesAndTruncatesThePath(t *testing.T) {
	m := exampleConfig()
	logs := provision(t, m)
	target := "/secars/\xff" + strings.Repeat("a", 400)
	serve(t, m, httptest.NewRequest("GET", target, nil), false, nil)
	entries := logs.FilterMessage("manager request refused").All()
	if len(entries) != 1 {
		t.Fatalf("%d log lines", len(entries))
	}
	path := entries[0].ContextMap()["path"].(string)
	if !strings.HasPrefix(path, "/secars/%FFaaa") || len(path) != 256 {
		t.Errorf("logged path %q (%d bytes), want escaped and cut at 256", path, len(path))
	}
}

// nopWriter is a ResponseWriter that keeps no state, for counting the
// handler's own allocations.
type nopWriter struct{ h http.Header }

func (w nopWriter) Header() http.Header         { return w.h }
func (w nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w nopWriter) WriteHeader(int)             {}

func allowedRequest() (*http.Request, caddyhttp.Handler) {
	r := httptest.NewRequest("GET", "/secars/secars.dll?action=index&hostid=0A1B2C3D4E5F", nil)
	r.Header.Set("User-Agent", "Smc")
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(200)
		return nil
	})
	return r, next
}

func TestServeHTTPAllocatesOnlyItsResponseWriterOnTheHappyPath(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	r, next := allowedRequest()
	w := nopWriter{h: http.Header{}}
	allocs := testing.AllocsPerRun(200, func() {
		if err := m.ServeHTTP(w, r, next); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("ServeHTTP allocated %v times per allowed request, want at most 1 (the response writer)", allocs)
	}
}

func BenchmarkServeHTTPAllowed(b *testing.B) {
	m := exampleConfig()
	provision(b, m)
	r, next := allowedRequest()
	w := nopWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		_ = m.ServeHTTP(w, r, next)
	}
}

func TestServeHTTPRefusesUpgradesTrailersAndJunkHostPorts(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	tests := []struct {
		name, reason string
		set          func(r *http.Request)
	}{
		{"h2c upgrade", reasonUpgrade, func(r *http.Request) { r.Header.Set("Upgrade", "h2c") }},
		{"empty Upgrade", reasonUpgrade, func(r *http.Request) { r.Header["Upgrade"] = []string{""} }},
		{"HTTP2-Settings alone", reasonUpgrade, func(r *http.Request) { r.Header.Set("Http2-Settings", "AAMAAABk") }},
		{"Connection: upgrade in a list", reasonUpgrade, func(r *http.Request) { r.Header.Set("Connection", "keep-alive, Upgrade") }},
		{"declared trailer", reasonTrailer, func(r *http.Request) { r.Header.Set("Trailer", "X-A") }},
		{"trailer map", reasonTrailer, func(r *http.Request) { r.Trailer = http.Header{"X-A": nil} }},
		{"port not a number", reasonBadHost, func(r *http.Request) { r.Host = "localhost:evil" }},
		{"empty port", reasonBadHost, func(r *http.Request) { r.Host = "localhost:" }},
		{"two colons", reasonBadHost, func(r *http.Request) { r.Host = "localhost:443:1" }},
		{"long port", reasonBadHost, func(r *http.Request) { r.Host = "localhost:000443" }},
		{"port alone", reasonBadHost, func(r *http.Request) { r.Host = ":443" }},
		{"IPv6 without the bracket's end", reasonBadHost, func(r *http.Request) { r.Host = "[::1" }},
		{"IPv6 with junk after the bracket", reasonBadHost, func(r *http.Request) { r.Host = "[::1]x" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/secars/secars.dll", nil)
			tc.set(r)
			before := testutil.ToFloat64(m.refusals[tc.reason])
			w, s := serve(t, m, r, false, nil)
			if s.called || w.Code != http.StatusBadRequest {
				t.Errorf("called=%v status %d, want 400", s.called, w.Code)
			}
			if got := testutil.ToFloat64(m.refusals[tc.reason]) - before; got != 1 {
				t.Errorf("refusals{reason=%q} grew by %v, want 1", tc.reason, got)
			}
		})
	}
	for _, host := range []string{"", "localhost", "localhost:443", "sepm.example.com:8443", "192.0.2.1:443", "[::1]", "[::1]:443"} {
		t.Run("accepts "+host, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/secars/secars.dll", nil)
			r.Host = host
			if w, s := serve(t, m, r, false, nil); !s.called {
				t.Errorf("Host %q refused with %d", host, w.Code)
			}
		})
	}
}

func TestServeHTTPDropsHeaderNamesWithUnderscores(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	r := httptest.NewRequest("GET", "/secars/secars.dll", nil)
	r.Header["Content_type"] = []string{"text/xml"}
	r.Header["X_endpoint_id"] = []string{"other"}
	r.Header.Set("X-Endpoint-Id", "mine")
	_, s := serve(t, m, r, false, nil)
	if !s.called {
		t.Fatal("next not called")
	}
	for name := range s.header {
		if strings.Contains(name, "_") {
			t.Errorf("%s reached the next handler", name)
		}
	}
	if s.header.Get("X-Endpoint-Id") != "mine" {
		t.Errorf("X-Endpoint-Id %q, want the hyphenated field kept", s.header.Get("X-Endpoint-Id"))
	}
}

func TestServeHTTPDropsTheManagersTrailers(t *testing.T) {
	m := exampleConfig()
	provision(t, m)
	w, _ := serve(t, m, httptest.NewRequest("GET", "/content/x", nil), false, func(w http.ResponseWriter, r *http.Request) {
		// As reverse_proxy does: announced before, values after the body,
		// and unannounced ones with TrailerPrefix.
		w.Header().Set("Trailer", "Content-Encoding, Set-Cookie")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "PK")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Set-Cookie", "s=1")
		w.Header().Set(http.TrailerPrefix+"Server", "IIS")
	})
	res := w.Result()
	_, _ = io.ReadAll(res.Body)
	if len(res.Trailer) != 0 || res.Header.Get("Trailer") != "" {
		t.Errorf("trailers reached the client: Trailer %q, %v", res.Header.Get("Trailer"), res.Trailer)
	}
	for name := range w.Header() {
		if strings.HasPrefix(name, http.TrailerPrefix) || name == "Content-Encoding" || name == "Set-Cookie" {
			t.Errorf("%s left in the answer's header map", name)
		}
	}
}

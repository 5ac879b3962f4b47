package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
)

// The tests in this file attack Caddyfile.example as shipped (issue 11): a
// real gateway process in front of a raw-socket manager that records every
// request head it receives, so the manager's own log proves what did and did
// not reach it, and answers with whatever bytes a hostile manager would send.

// secHostID is a SEPM-style host id (32 hex digits).
const secHostID = "0123456789abcdef0123456789abcdef"

// secGateway is Caddyfile.example running in front of a RawUpstream.
type secGateway struct {
	g     *harness.Gateway
	up    *harness.RawUpstream
	roots *x509.CertPool
	// answer is what the manager answers next; nil means secIndexAnswer.
	answer atomic.Pointer[[]byte]
}

// secIndexAnswer is an ordinary index answer: XML that policy_guard passes.
var secIndexAnswer = harness.RawAnswer("200 OK", []string{"Content-Type: text/xml"}, `<Index><Profile SerialNumber="A"/></Index>`)

// startSecGateway runs Caddyfile.example as shipped with its environment
// pointing at a raw upstream behind a TLS relay pinned by legacy_tls. The
// site is "localhost" without a port, so it shares the gateway's HTTPS port
// with the example's catch-all site, as on a real 443.
func startSecGateway(t *testing.T) *secGateway {
	t.Helper()
	s := &secGateway{}
	s.up = harness.StartRawUpstream(t, func([]byte) []byte {
		if a := s.answer.Load(); a != nil {
			return *a
		}
		return secIndexAnswer
	})
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("LEGACYGATE_SITE", "localhost")
	t.Setenv("SEPM_MANAGER", startTLSRelay(t, pair, s.up.Addr))
	t.Setenv("SEPM_PIN", pair.Pin())
	t.Setenv("SEPM_SERVER_NAME", "manager.test")
	setExampleKeyFiles(t, pair)
	s.g = harness.StartGateway(t, exampleCaddyfile(t))
	s.g.WaitCertificate(t, "localhost")
	s.roots = s.g.RootCAs(t)
	return s
}

// setAnswer makes the manager answer every request with raw until the
// test ends.
func (s *secGateway) setAnswer(t *testing.T, raw []byte) {
	t.Helper()
	s.answer.Store(&raw)
	t.Cleanup(func() { s.answer.Store(nil) })
}

// startTLSRelay terminates TLS with pair's certificate (legacy_tls pins its
// key) and copies bytes both ways to target, unchanged: target records
// exactly what the gateway sent.
func startTLSRelay(t *testing.T, pair *certs.Pair, target string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair.TLS()}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			open[c] = true
		} else {
			delete(open, c)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				up, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					c.Close()
					return
				}
				track(c, true)
				track(up, true)
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, c); done <- struct{}{} }()
				go func() { io.Copy(c, up); done <- struct{}{} }()
				<-done
				c.Close()
				up.Close()
				<-done
				track(c, false)
				track(up, false)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// secResponse is one answer the gateway gave a client.
type secResponse struct {
	proto  string
	status int
	header http.Header
	body   []byte
}

// rawRequest writes req byte for byte on a TLS connection to the gateway's
// HTTPS port (SNI "localhost", HTTP/1.1), so no client library normalises
// the target, and reads one answer.
func (s *secGateway) rawRequest(t *testing.T, req string) secResponse {
	t.Helper()
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{
		RootCAs: s.roots, ServerName: "localhost", NextProtos: []string{"http/1.1"},
	}}
	conn, err := dialer.Dial("tcp", "127.0.0.1:"+strconv.Itoa(s.g.HTTPSPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	return readSecResponse(t, conn, req)
}

// readSecResponse reads one HTTP/1.1 answer to req from conn.
func readSecResponse(t *testing.T, conn net.Conn, req string) secResponse {
	t.Helper()
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the answer to %.80q: %v", req, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body of the answer to %.80q: %v", req, err)
	}
	return secResponse{resp.Proto, resp.StatusCode, resp.Header, body}
}

// rawHTTPRequest is rawRequest on the gateway's plain HTTP port.
func (s *secGateway) rawHTTPRequest(t *testing.T, req string) secResponse {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.g.HTTPPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	return readSecResponse(t, conn, req)
}

// get is a request through Go's client over HTTP/2 or HTTP/3 (proto "h2",
// "h3"); the client never decompresses, so body is what went on the wire.
func (s *secGateway) get(t *testing.T, proto, target string) secResponse {
	t.Helper()
	r, err := s.tryGet(t, proto, target)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tryGet is get returning the error, for requests expected to fail.
func (s *secGateway) tryGet(t *testing.T, proto, target string) (secResponse, error) {
	t.Helper()
	tlsCfg := &tls.Config{RootCAs: s.roots, ServerName: "localhost"}
	port := strconv.Itoa(s.g.HTTPSPort)
	var rt http.RoundTripper
	switch proto {
	case "h2":
		tr := &http.Transport{
			TLSClientConfig:    tlsCfg,
			ForceAttemptHTTP2:  true,
			DisableCompression: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, "127.0.0.1:"+port)
			},
		}
		defer tr.CloseIdleConnections()
		rt = tr
	case "h3":
		tr := &http3.Transport{
			TLSClientConfig:    tlsCfg,
			DisableCompression: true,
			Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
				return quic.DialAddrEarly(ctx, "127.0.0.1:"+port, tlsCfg, cfg)
			},
		}
		defer tr.Close()
		rt = tr
	default:
		return secResponse{}, fmt.Errorf("unknown protocol %q", proto)
	}
	req, err := http.NewRequest(http.MethodGet, "https://localhost:"+port+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("User-Agent", "Smc")
	client := &http.Client{Transport: rt, Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return secResponse{}, fmt.Errorf("%s GET %s: %w", proto, target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return secResponse{}, fmt.Errorf("%s GET %s: reading: %w", proto, target, err)
	}
	return secResponse{resp.Proto, resp.StatusCode, resp.Header, body}, nil
}

// checkNoLeak fails when an answer carries a banner or a header that
// describes the gateway or the manager.
func checkNoLeak(t *testing.T, r secResponse) {
	t.Helper()
	for _, h := range []string{"Server", "Via", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version", "MicrosoftOfficeWebServer", "Set-Cookie", "X-SourceFiles", "Alt-Svc"} {
		if v, ok := r.header[http.CanonicalHeaderKey(h)]; ok {
			t.Errorf("%s answer %d carries %s: %q", r.proto, r.status, h, v)
		}
	}
}

// checkNothingSent fails when the manager received a request.
func (s *secGateway) checkNothingSent(t *testing.T) {
	t.Helper()
	for _, r := range s.up.Requests() {
		t.Errorf("the manager received %q", r.Line())
	}
}

// onlyRequest returns the single request the manager received; the test
// fails unless there is exactly one.
func (s *secGateway) onlyRequest(t *testing.T) harness.RawRequest {
	t.Helper()
	reqs := s.up.Requests()
	if len(reqs) != 1 {
		lines := make([]string, len(reqs))
		for i, r := range reqs {
			lines[i] = r.Line()
		}
		t.Fatalf("the manager received %d requests %q, want 1", len(reqs), lines)
	}
	return reqs[0]
}

func secGET(target string, extra ...string) string {
	return "GET " + target + " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Smc\r\n" + strings.Join(extra, "") + "\r\n"
}

// TestWindowsEquivalentPathsNeverReachTheManager sends, on raw sockets, every
// path issue 11 found forwarded verbatim to a Windows manager (traversal with
// \ and %5c, NUL, overlong UTF-8, double encoding, trailing dots and spaces,
// 8.3 names, alternate streams, extra segments): each is refused and the
// manager's own log is empty; the listed paths in other spellings reach it
// in exactly the listed spelling.
func TestWindowsEquivalentPathsNeverReachTheManager(t *testing.T) {
	s := startSecGateway(t)
	refused := []struct {
		name, target string
		want         []int
	}{
		{"encoded backslash traversal", "/secars/..%5c..%5cadmin", []int{400}},
		{"raw backslash traversal", `/secars/..\..\sepm`, []int{400}},
		{"encoded dots and backslash", "/secars/%2e%2e%5cx", []int{400}},
		{"upper-case encoded backslash", "/secars/secars.dll%5C..%5C..%5Cservlet%5CConsoleServlet", []int{400}},
		{"encoded NUL", "/secars/secars.dll%00", []int{400}},
		{"encoded NUL before an extension", "/secars/secars.dll%00.xml", []int{400}},
		{"overlong UTF-8 slash", "/secars/%c0%af..%c0%afadmin", []int{400}},
		{"double-encoded dot segment", "/secars/%252e%252e/admin", []int{400}},
		{"double-encoded backslash", "/secars/secars.dll%255c..%255cadmin", []int{400}},
		{"encoded slash", "/secars%2fsecars.dll", []int{400}},
		{"full-width solidus (IIS best fit)", "/secars%ef%bc%8fsecars.dll", []int{400}},
		{"trailing slash", "/secars/secars.dll/", []int{400, 404}},
		{"extra segment", "/secars/secars.dll/x", []int{400, 404}},
		{"trailing dot", "/secars/secars.dll.", []int{400}},
		{"trailing encoded space", "/secars/secars.dll%20", []int{400}},
		{"8.3 short name", "/secars/SECARS~1.DLL", []int{400}},
		{"alternate data stream", "/secars/secars.dll::$DATA", []int{400}},
		{"dot segment", "/secars/./secars.dll", []int{400}},
		{"parent segment", "/content/../secars/secars.dll", []int{400}},
		{"empty segment", "//secars/secars.dll", []int{400, 404}},
		{"bad escape", "/secars/secars.dll%zz", []int{400}},
		{"console servlet", "/servlet/ConsoleServlet?ActionType=ConfigServer", []int{404}},
		{"registration directory", "/secreg/", []int{400, 404}},
		{"other file in the agent directory", "/secars/secars.ini", []int{404}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := s.rawRequest(t, secGET(tc.target))
			if !slices.Contains(tc.want, r.status) {
				t.Errorf("%s: status %d (%q), want one of %v", tc.target, r.status, r.body, tc.want)
			}
			checkNoLeak(t, r)
			s.checkNothingSent(t)
		})
	}
	s.g.WaitLog(t, 5*time.Second, `"manager request refused"`, `"reason":"backslash"`, `"status":400`)
	s.g.WaitLog(t, 5*time.Second, `"manager request refused"`, `"reason":"short_name"`)
	s.g.WaitLog(t, 5*time.Second, `"manager request refused"`, `"reason":"path_not_allowed"`, `"status":404`)

	// The listed paths in other spellings are judged and forwarded in one
	// spelling: the listed one.
	passed := []struct {
		name, target, want string
	}{
		{"listed spelling", "/secars/secars.dll?action=index&hostid=" + secHostID, "/secars/secars.dll?action=index&hostid=" + secHostID},
		{"upper case", "/SECARS/SECARS.DLL?hello,secars", "/secars/secars.dll?hello,secars"},
		{"encoded letters", "/secars/secar%73.dll?hello,secars", "/secars/secars.dll?hello,secars"},
		// Braces leave the gateway percent-encoded (Go's one escaping of a
		// path); the manager decodes them once, as it must.
		{"definitions under the listed prefix", "/CONTENT/{535CB6A4-441F-4e8a-A897-804CD859100E}/190101001/full.zip", "/content/%7B535CB6A4-441F-4e8a-A897-804CD859100E%7D/190101001/full.zip"},
	}
	for _, tc := range passed {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := s.rawRequest(t, secGET(tc.target))
			if r.status != http.StatusOK {
				t.Errorf("%s: status %d (%q), want 200", tc.target, r.status, r.body)
			}
			checkNoLeak(t, r)
			if got := s.onlyRequest(t).Target(); got != tc.want {
				t.Fatalf("the manager received %q, want %q", got, tc.want)
			}
		})
	}
}

// TestOnlyListedMethodsAndBodiesReachTheManager: methods outside the
// allow-list get 405 with Allow, a body (length or chunked) on a method that
// has none gets 400, and neither reaches the manager; a log upload does.
func TestOnlyListedMethodsAndBodiesReachTheManager(t *testing.T) {
	s := startSecGateway(t)
	const agent = "/secars/secars.dll?action=log&hostid=" + secHostID
	head := func(method, target string, extra ...string) string {
		return method + " " + target + " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Smc\r\n" + strings.Join(extra, "")
	}
	tests := []struct {
		name      string
		req       string
		want      []int
		wantAllow string
	}{
		{"TRACE", head("TRACE", agent) + "\r\n", []int{405}, "GET, POST"},
		{"PUT", head("PUT", agent, "Content-Length: 4\r\n") + "\r\nevil", []int{405}, "GET, POST"},
		{"DELETE", head("DELETE", agent) + "\r\n", []int{405}, "GET, POST"},
		{"PROPFIND", head("PROPFIND", agent, "Depth: 1\r\n") + "\r\n", []int{405}, "GET, POST"},
		{"MOVE", head("MOVE", agent, "Destination: /secars/x.dll\r\n") + "\r\n", []int{405}, "GET, POST"},
		{"FOO", head("FOO", agent) + "\r\n", []int{405}, "GET, POST"},
		{"OPTIONS", head("OPTIONS", agent) + "\r\n", []int{405}, "GET, POST"},
		{"lower-case get", head("get", agent) + "\r\n", []int{400, 405}, ""},
		{"GET on registration", head("GET", "/secreg/secreg.dll?action=register") + "\r\n", []int{405}, "POST"},
		{"HEAD on the agent path", head("HEAD", agent) + "\r\n", []int{405}, "GET, POST"},
		{"GET with a body", head("GET", agent, "Content-Length: 5\r\n") + "\r\nhello", []int{400}, ""},
		{"GET chunked", head("GET", agent, "Transfer-Encoding: chunked\r\n") + "\r\n5\r\nhello\r\n0\r\n\r\n", []int{400}, ""},
		{"OPTIONS chunked", head("OPTIONS", agent, "Transfer-Encoding: chunked\r\n") + "\r\n5\r\nhello\r\n0\r\n\r\n", []int{400, 405}, ""},
		{"HEAD with a body", head("HEAD", "/content/x/1/full.zip", "Content-Length: 5\r\n") + "\r\nhello", []int{400, 405}, ""},
		{"POST chunked", head("POST", agent, "Transfer-Encoding: chunked\r\n") + "\r\n5\r\nhello\r\n0\r\n\r\n", []int{411}, ""},
		{"two different Content-Length fields", head("POST", agent, "Content-Length: 5\r\nContent-Length: 6\r\n") + "\r\nhello!", []int{400}, ""},
		{"two Content-Type fields", head("POST", agent, "Content-Length: 5\r\nContent-Type: text/plain\r\nContent-Type: text/xml\r\n") + "\r\nhello", []int{400}, ""},
		{"two Transfer-Encoding fields", head("POST", agent, "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n") + "\r\n5\r\nhello\r\n0\r\n\r\n", []int{400, 411, 501}, ""},
		{"two Host fields", "GET " + agent + " HTTP/1.1\r\nHost: localhost\r\nHost: manager.internal\r\n\r\n", []int{400}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := s.rawRequest(t, tc.req)
			if !slices.Contains(tc.want, r.status) {
				t.Errorf("status %d (%q), want one of %v", r.status, r.body, tc.want)
			}
			if tc.wantAllow != "" && r.status == http.StatusMethodNotAllowed {
				if got := strings.Join(r.header.Values("Allow"), ", "); got != tc.wantAllow {
					t.Errorf("Allow: %q, want %q", got, tc.wantAllow)
				}
			}
			checkNoLeak(t, r)
			s.checkNothingSent(t)
		})
	}

	t.Run("one Content-Length repeated identically reaches the manager once", func(t *testing.T) {
		s.up.Reset()
		r := s.rawRequest(t, head("POST", agent, "Content-Length: 5\r\nContent-Length: 5\r\n")+"\r\nhello")
		if r.status != http.StatusOK {
			t.Fatalf("status %d (%q), want 200", r.status, r.body)
		}
		if got := s.onlyRequest(t); len(got.Header("Content-Length")) != 1 || string(got.Body) != "hello" {
			t.Fatalf("the manager received Content-Length %q and body %q, want one field and hello", got.Header("Content-Length"), got.Body)
		}
	})

	t.Run("log upload reaches the manager with its body", func(t *testing.T) {
		s.up.Reset()
		r := s.rawRequest(t, head("POST", agent, "Content-Length: 9\r\n")+"\r\nlog=lines")
		if r.status != http.StatusOK {
			t.Fatalf("status %d (%q), want 200", r.status, r.body)
		}
		got := s.onlyRequest(t)
		if !strings.HasPrefix(got.Line(), "POST "+agent+" ") || string(got.Body) != "log=lines" {
			t.Fatalf("the manager received %q with body %q", got.Line(), got.Body)
		}
	})
}

// gzipped compresses b.
func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkNoProfile fails when body, as sent or after gunzip, holds the
// unsigned Profile.
func checkNoProfile(t *testing.T, body []byte) {
	t.Helper()
	if bytes.Contains(body, []byte("<Profile")) {
		t.Fatalf("the unsigned Profile reached the client: %q", body)
	}
	if zr, err := gzip.NewReader(bytes.NewReader(body)); err == nil {
		if plain, _ := io.ReadAll(zr); bytes.Contains(plain, []byte("<Profile")) {
			t.Fatalf("the unsigned Profile reached the client gzipped (%d bytes)", len(body))
		}
	}
}

// TestRepeatedOrForeignContentEncodingNeverDeliversAnUnsignedProfile: a
// manager answer that hides a gzipped, unsigned <Profile> behind repeated or
// non-identity Content-Encoding fields gets the client a 502, never the
// Profile, over HTTP/1.1 and HTTP/2; HTTP/3 is not offered at all.
func TestRepeatedOrForeignContentEncodingNeverDeliversAnUnsignedProfile(t *testing.T) {
	s := startSecGateway(t)
	profile := []byte(`<?xml version="1.0"?><Profile SerialNumber="EVIL"><Setting Name="AutoProtect" Value="0"/></Profile>`)
	packed := string(gzipped(t, profile))
	answers := []struct {
		name    string
		headers []string
		body    string
	}{
		{"identity then gzip", []string{"Content-Type: text/xml", "Content-Encoding: identity", "Content-Encoding: gzip"}, packed},
		{"empty then gzip", []string{"Content-Type: text/xml", "Content-Encoding:", "Content-Encoding: gzip"}, packed},
		{"gzip alone", []string{"Content-Type: text/xml", "Content-Encoding: gzip"}, packed},
		{"identity, gzip in one field", []string{"Content-Type: text/xml", "Content-Encoding: identity, gzip"}, packed},
		{"two Content-Type fields", []string{"Content-Type: text/plain", "Content-Type: text/xml"}, string(profile)},
	}
	target := "/secars/secars.dll?action=profile&hostid=" + secHostID
	for _, a := range answers {
		for _, proto := range []string{"HTTP/1.1", "h2"} {
			t.Run(a.name+" over "+proto, func(t *testing.T) {
				s.setAnswer(t, harness.RawAnswer("200 OK", a.headers, a.body))
				s.up.Reset()
				var r secResponse
				if proto == "HTTP/1.1" {
					r = s.rawRequest(t, secGET(target))
				} else {
					r = s.get(t, proto, target)
				}
				if r.status != http.StatusBadGateway {
					t.Errorf("%s: status %d, want 502", r.proto, r.status)
				}
				checkNoProfile(t, r.body)
				checkNoLeak(t, r)
				if got := s.onlyRequest(t).Target(); got != target {
					t.Fatalf("the manager received %q, want %q", got, target)
				}
			})
		}
	}

	t.Run("HTTP/3 is not offered", func(t *testing.T) {
		s.up.Reset()
		if r, err := s.tryGet(t, "h3", target); err == nil {
			t.Fatalf("an HTTP/3 request was answered: %d %q", r.status, r.body)
		}
		s.checkNothingSent(t)
	})
}

// TestDecisionKeysHaveOneValueAndOneSpelling: a request naming a decision key
// twice (in any case or encoding) is refused before the manager; key names
// reach the manager in their listed spelling; host ids differing only in
// case share one heartbeat bucket.
func TestDecisionKeysHaveOneValueAndOneSpelling(t *testing.T) {
	s := startSecGateway(t)
	const agent = "/secars/secars.dll"
	refused := []struct{ name, query string }{
		{"action twice", "action=index&action=log&hostid=" + secHostID},
		{"hostid twice", "action=index&hostid=" + secHostID + "&hostid=ffffffffffffffffffffffffffffffff"},
		{"action in two cases", "action=index&ACTION=log&hostid=" + secHostID},
		{"action once encoded", "action=index&%61ction=log&hostid=" + secHostID},
		{"semicolon separator", "action=index;action=log&hostid=" + secHostID},
		{"NUL in a value", "action=index%00&hostid=" + secHostID},
		{"bad escape", "action=ind%zzex&hostid=" + secHostID},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := s.rawRequest(t, secGET(agent+"?"+tc.query))
			if r.status != http.StatusBadRequest {
				t.Errorf("status %d (%q), want 400", r.status, r.body)
			}
			checkNoLeak(t, r)
			s.checkNothingSent(t)
		})
	}

	t.Run("key names forwarded in the listed spelling, the rest byte for byte", func(t *testing.T) {
		s.up.Reset()
		r := s.rawRequest(t, secGET(agent+"?ACTION=index&HostId="+secHostID+"&X=%41b"))
		if r.status != http.StatusOK {
			t.Fatalf("status %d (%q), want 200", r.status, r.body)
		}
		want := agent + "?action=index&hostid=" + secHostID + "&X=%41b"
		if got := s.onlyRequest(t).Target(); got != want {
			t.Fatalf("the manager received %q, want %q", got, want)
		}
	})

	t.Run("host id case variants share one heartbeat bucket", func(t *testing.T) {
		// The example allows a burst of 3 heartbeats per host id.
		ids := []string{"aaaabbbbccccddddeeeeffff00001111", "AAAABBBBCCCCDDDDEEEEFFFF00001111", "AaAaBbBbCcCcDdDdEeEeFfFf00001111", "aAaAbBbBcCcCdDdDeEeEfFfF00001111"}
		// The fourth is limited: the example answers it with the client's
		// last index (last_index) or 503, and it never reaches the manager.
		s.up.Reset()
		var answers []secResponse
		for _, id := range ids {
			answers = append(answers, s.rawRequest(t, secGET(agent+"?action=index&hostid="+id)))
		}
		var codes []int
		for _, r := range answers {
			codes = append(codes, r.status)
		}
		if sent := len(s.up.Requests()); sent != 3 || !slices.Equal(codes[:3], []int{200, 200, 200}) {
			t.Fatalf("4 heartbeats under one host id in 4 spellings: %v, %d reached the manager; want 3 (one bucket, burst 3)", codes, sent)
		}
		last := answers[3]
		if last.status != http.StatusServiceUnavailable && (last.status != http.StatusOK || !bytes.Equal(last.body, answers[2].body)) {
			t.Fatalf("the limited fourth heartbeat: %d %q, want 503 or the client's last index", last.status, last.body)
		}
	})
}

// TestAnswersLeakNothing: no banner, cookie or internal address from the
// manager or the gateway reaches a client (proxied answers, refusals, error
// pages, another Host, the port-80 redirect), a manager's 5xx body is
// replaced, client forwarding headers never reach the manager, and the
// configured header size limit holds exactly.
func TestAnswersLeakNothing(t *testing.T) {
	s := startSecGateway(t)
	// Definitions: proxied, and no guard looks at the answer. Each request
	// names a revision of its own, so content_cache never answers in the
	// manager's place.
	revision := 0
	content := func() string {
		revision++
		return fmt.Sprintf("/content/{535CB6A4-441F-4e8a-A897-804CD859100E}/1901%05d/full.zip", revision)
	}
	// A log upload: proxied, not a heartbeat.
	const agent = "/secars/secars.dll?action=log&hostid=" + secHostID
	banners := []string{
		"Content-Type: text/xml", "Server: Microsoft-IIS/7.5", "X-Powered-By: ASP.NET", "X-AspNet-Version: 4.0.30319",
		"X-AspNetMvc-Version: 3.0", "MicrosoftOfficeWebServer: 5.0_Pub", "X-SourceFiles: =?UTF-8?B?QzpcaW5ldHB1Yg==?=",
		"Set-Cookie: ASP.NET_SessionId=abc; path=/; HttpOnly", "Via: 1.1 sepm-internal",
	}
	answers := []struct {
		name   string
		answer []byte
		check  func(t *testing.T, r secResponse)
	}{
		{"banners and cookies", harness.RawAnswer("200 OK", banners, `<Index><Profile SerialNumber="A"/></Index>`), func(t *testing.T, r secResponse) {
			if r.status != http.StatusOK {
				t.Fatalf("status %d (%q), want 200", r.status, r.body)
			}
		}},
		{"internal Location", harness.RawAnswer("302 Found", []string{"Location: http://10.0.0.5:8014/secars/secars.dll?action=index"}, ""), func(t *testing.T, r secResponse) {
			for _, loc := range r.header.Values("Location") {
				if strings.Contains(loc, "10.0.0.5") || strings.Contains(loc, "8014") || strings.Contains(loc, "://") {
					t.Fatalf("Location %q names the manager", loc)
				}
			}
		}},
		{"500 with a stack trace", harness.RawAnswer("500 Internal Server Error", []string{"Content-Type: text/html", "X-AspNet-Version: 4.0.30319"},
			"<html>System.NullReferenceException: at Symantec.Sepm.Secars.Index() in C:\\Program Files\\Symantec\\secars.cs:line 42</html>"),
			func(t *testing.T, r secResponse) {
				if r.status != http.StatusInternalServerError || string(r.body) != "500 Internal Server Error\n" {
					t.Fatalf("status %d body %q, want 500 with the fixed body", r.status, r.body)
				}
			}},
		{"503 with an ASP.NET page", harness.RawAnswer("503 Service Unavailable", []string{"Content-Type: text/html"}, "<html>Server Error in '/' Application. Version Information: ASP.NET 4.0</html>"),
			func(t *testing.T, r secResponse) {
				if r.status != http.StatusServiceUnavailable || bytes.Contains(r.body, []byte("ASP.NET")) {
					t.Fatalf("status %d body %q, want 503 without the manager's page", r.status, r.body)
				}
			}},
		{"an answer that is not HTTP (the gateway's own 502)", []byte("SEPM says no\r\n\r\n"), func(t *testing.T, r secResponse) {
			if r.status != http.StatusBadGateway || len(r.body) > 100 {
				t.Fatalf("status %d body %q, want a short 502", r.status, r.body)
			}
		}},
	}
	for _, a := range answers {
		for _, proto := range []string{"HTTP/1.1", "h2"} {
			t.Run(a.name+" over "+proto, func(t *testing.T) {
				s.setAnswer(t, a.answer)
				var r secResponse
				if proto == "HTTP/1.1" {
					r = s.rawRequest(t, secGET(content()))
				} else {
					r = s.get(t, proto, content())
				}
				checkNoLeak(t, r)
				a.check(t, r)
			})
		}
	}

	// Answers the gateway writes itself.
	own := []struct {
		name string
		send func(t *testing.T) secResponse
		want int
	}{
		{"refused path", func(t *testing.T) secResponse { return s.rawRequest(t, secGET("/console/apps/sepm")) }, 404},
		{"refused method", func(t *testing.T) secResponse {
			return s.rawRequest(t, "TRACE /secars/secars.dll HTTP/1.1\r\nHost: localhost\r\n\r\n")
		}, 405},
		{"URI too long", func(t *testing.T) secResponse {
			return s.rawRequest(t, secGET("/secars/secars.dll?h="+strings.Repeat("A", 3000)))
		}, 414},
		{"chunked upload", func(t *testing.T) secResponse {
			return s.rawRequest(t, "POST "+agent+" HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
		}, 411},
		{"another Host on the site's port", func(t *testing.T) secResponse {
			return s.rawRequest(t, "GET /secars/secars.dll?hello,secars HTTP/1.1\r\nHost: evil.example\r\n\r\n")
		}, 404},
		{"an address as Host", func(t *testing.T) secResponse {
			return s.rawRequest(t, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		}, 404},
		{"port-80 redirect", func(t *testing.T) secResponse {
			return s.rawHTTPRequest(t, "GET /secars/secars.dll?hello,secars HTTP/1.1\r\nHost: evil.example\r\n\r\n")
		}, 308},
		{"port-80 redirect of an absolute-form request", func(t *testing.T) secResponse {
			return s.rawHTTPRequest(t, "GET http://evil.example/secars/secars.dll?hello,secars HTTP/1.1\r\nHost: evil.example\r\n\r\n")
		}, 308},
	}
	for _, tc := range own {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			r := tc.send(t)
			if r.status != tc.want {
				t.Errorf("status %d (%q), want %d", r.status, r.body, tc.want)
			}
			checkNoLeak(t, r)
			if loc := r.header.Get("Location"); tc.want == 308 && !strings.HasPrefix(loc, "https://localhost/secars/secars.dll?hello,secars") {
				t.Errorf("redirect to %q, want the configured site https://localhost/…", loc)
			}
			if strings.Contains(r.header.Get("Location"), "evil") {
				t.Errorf("Location %q names the request's Host", r.header.Get("Location"))
			}
			s.checkNothingSent(t)
		})
	}

	t.Run("client forwarding headers never reach the manager", func(t *testing.T) {
		s.up.Reset()
		r := s.rawRequest(t, secGET(content(),
			"X-Real-IP: 6.6.6.6\r\n", "X-Forwarded-For: 6.6.6.6\r\n", "X-Forwarded-Host: manager.internal\r\n",
			"X-Forwarded-Proto: http\r\n", "Forwarded: for=6.6.6.6\r\n", "X-Client-IP: 6.6.6.6\r\n",
			"True-Client-IP: 6.6.6.6\r\n", "X-Original-URL: /servlet/ConsoleServlet\r\n", "X-Rewrite-URL: /servlet/ConsoleServlet\r\n"))
		if r.status != http.StatusOK {
			t.Fatalf("status %d (%q), want 200", r.status, r.body)
		}
		got := s.onlyRequest(t)
		for _, h := range []string{"X-Real-IP", "Forwarded", "X-Client-IP", "True-Client-IP", "X-Original-URL", "X-Rewrite-URL", "Via"} {
			if v := got.Header(h); len(v) > 0 {
				t.Errorf("the manager received %s: %q", h, v)
			}
		}
		if bytes.Contains(got.Head, []byte("6.6.6.6")) || bytes.Contains(got.Head, []byte("manager.internal")) || bytes.Contains(got.Head, []byte("ConsoleServlet")) {
			t.Errorf("a client's forwarding header reached the manager:\n%s", got.Head)
		}
		if xff := got.Header("X-Forwarded-For"); !slices.Equal(xff, []string{"127.0.0.1"}) {
			t.Errorf("X-Forwarded-For %q, want only the gateway's own 127.0.0.1", xff)
		}
	})

	// The example limits the request line and header fields to 16KB
	// (16000 bytes); Go's server alone lets about 4 KB more through.
	for _, tc := range []struct {
		name  string
		total int
		want  int
	}{
		{"15 KB head passes", 15000, 200},
		{"head just over 16KB refused", 16100, 431},
		{"18 KB head refused", 18000, 431},
		{"20 KB head refused", 20000, 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.up.Reset()
			path := content()
			base := secGET(path)
			fill := tc.total - len(base) - len("X-Fill: \r\n")
			r := s.rawRequest(t, secGET(path, "X-Fill: "+strings.Repeat("B", fill)+"\r\n"))
			if r.status != tc.want {
				t.Fatalf("%d-byte head: status %d (%q), want %d", tc.total, r.status, r.body, tc.want)
			}
			checkNoLeak(t, r)
			if sent := len(s.up.Requests()); (tc.want == 200) != (sent == 1) {
				t.Fatalf("%d-byte head: the manager received %d requests", tc.total, sent)
			}
		})
	}
}

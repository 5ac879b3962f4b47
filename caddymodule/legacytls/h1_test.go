package legacytls

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/legacygate/legacygate/integration/certs"
)

func idleFastPathConns(l *LegacyTLS) int {
	l.h1.mu.Lock()
	defer l.h1.mu.Unlock()
	n := 0
	for _, stack := range l.h1.idle {
		n += len(stack)
	}
	return n
}

func TestH1ServesSequentialRequestsOnOneConnectionOfItsOwn(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, nil)
	if l.h1 == nil {
		t.Fatal("the fast path is off for a plain pinned HTTP/1.1 manager")
	}
	for i := range 20 {
		if status, _, err := get(l, context.Background(), m.addr); err != nil || status != http.StatusOK {
			t.Fatalf("request %d: %d %v", i, status, err)
		}
	}
	if got := m.handshakes.Load(); got != 1 {
		t.Errorf("20 sequential requests cost %d handshakes, want 1", got)
	}
	if got := idleFastPathConns(l); got != 1 {
		t.Errorf("the fast path holds %d idle connections, want 1 (Go's transport served the requests?)", got)
	}
}

func TestH1DropsConnectionsIdleLongerThanTheIdleTimeout(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, nil)
	l.h1.idleTimeout = 50 * time.Millisecond
	for range 2 {
		if _, _, err := get(l, context.Background(), m.addr); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := m.handshakes.Load(); got != 2 {
		t.Errorf("two requests 100 ms apart with a 50 ms idle timeout cost %d handshakes, want 2", got)
	}
}

func TestH1ResponseHeaderTimeoutFailsTheRequest(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, func(l *LegacyTLS) {
		l.ResponseHeaderTimeout = caddy.Duration(100 * time.Millisecond)
	})
	open := m.hold()
	defer open()
	start := time.Now()
	_, _, err := get(l, context.Background(), m.addr)
	if err == nil {
		t.Fatal("a manager that never answered gave a response")
	}
	if reason := failureReason(err); reason != "timeout" {
		t.Errorf("failure reason %q (%v), want timeout", reason, err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the request failed after %s, want about 100 ms", took)
	}
}

// closingManager answers one request per connection and then closes it,
// the way a manager whose keep-alive timeout is shorter than ours does.
type closingManager struct {
	addr, pin string
	mu        sync.Mutex
	bodies    []string
}

func newClosingManager(t *testing.T) *closingManager {
	t.Helper()
	m := &closingManager{}
	m.addr, m.pin = serveManager(t, managerListener{serve: m.serveOne})
	return m
}

// managerListener is how serveManager's emulated manager listens.
type managerListener struct {
	tls12      bool          // TLS 1.2 at most (else Go's default, 1.3)
	handshakes *atomic.Int64 // counts handshakes when set
	stop       func()        // runs first when the test ends
	serve      func(net.Conn)
}

// serveManager listens on 127.0.0.1 with a fresh manager certificate and
// serves each accepted connection with ml.serve on a goroutine of its own,
// until the test ends. It returns the address and the certificate's pin.
func serveManager(t *testing.T, ml managerListener) (addr, pin string) {
	t.Helper()
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair.TLS()}}
	if ml.tls12 {
		cfg.MaxVersion = tls.VersionTLS12
	}
	if ml.handshakes != nil {
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			ml.handshakes.Add(1)
			return nil, nil
		}
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() {
		if ml.stop != nil {
			ml.stop()
		}
		ln.Close()
		conns.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { ml.serve(c) })
		}
	}()
	return ln.Addr().String(), pair.Pin()
}

func (m *closingManager) serveOne(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return
	}
	body, _ := io.ReadAll(req.Body)
	m.mu.Lock()
	m.bodies = append(m.bodies, string(body))
	m.mu.Unlock()
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	time.Sleep(20 * time.Millisecond) // idle for a moment, then the close
}

func TestH1NeverWritesToAConnectionTheManagerClosedWhileIdle(t *testing.T) {
	m := newClosingManager(t)
	l := &LegacyTLS{Pins: []string{m.pin}}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(l.retries.WithLabelValues(retryClosedBeforeWrite))
	bodies := []string{"first", "second", "third"}
	for _, b := range bodies {
		roundTripOK(t, l, postRequest(m.addr, io.NopCloser(strings.NewReader(b)), int64(len(b)), nil))
		time.Sleep(100 * time.Millisecond) // the manager has closed it by now
	}
	m.mu.Lock()
	got := strings.Join(m.bodies, ",")
	m.mu.Unlock()
	if want := strings.Join(bodies, ","); got != want {
		t.Errorf("the manager received %q, want %q: each POST exactly once", got, want)
	}
	if after := testutil.ToFloat64(l.retries.WithLabelValues(retryClosedBeforeWrite)); after-before != 2 {
		t.Errorf("closed_before_write retries went up by %v, want 2 (one per closed connection found)", after-before)
	}
}

// scriptedManager is a TLS manager on 127.0.0.1 that answers each request
// with what answer writes on the raw connection (answer may block until
// quit closes). It records each request's headers, "(malformed)" for
// bytes that are not a request, and the connections it saw closed.
type scriptedManager struct {
	addr, pin  string
	handshakes atomic.Int64
	closes     atomic.Int64 // connections whose gateway side closed
	quit       chan struct{}

	mu       sync.Mutex
	requests []http.Header
}

func newScriptedManager(t *testing.T, answer func(c net.Conn, req *http.Request)) *scriptedManager {
	t.Helper()
	m := &scriptedManager{quit: make(chan struct{})}
	m.addr, m.pin = serveManager(t, managerListener{
		tls12: true, handshakes: &m.handshakes, stop: func() { close(m.quit) },
		serve: func(c net.Conn) { m.serve(c, answer) },
	})
	return m
}

func (m *scriptedManager) serve(c net.Conn, answer func(net.Conn, *http.Request)) {
	defer c.Close()
	stop := context.AfterFunc(contextOf(m.quit), func() { c.Close() })
	defer stop()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				m.closes.Add(1)
			} else if !errors.Is(err, net.ErrClosed) {
				m.record(http.Header{"Malformed": {err.Error()}})
			}
			return
		}
		m.record(req.Header)
		io.Copy(io.Discard, req.Body)
		answer(c, req)
	}
}

func (m *scriptedManager) record(h http.Header) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests = append(m.requests, h)
}

func (m *scriptedManager) received() []http.Header {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.requests)
}

// contextOf is a context that ends when quit closes.
func contextOf(quit chan struct{}) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-quit; cancel() }()
	return ctx
}

func scriptedTransport(t *testing.T, m *scriptedManager, opts func(*LegacyTLS)) *LegacyTLS {
	t.Helper()
	l := pinnedTransport(t, m.pin, opts)
	if l.h1 == nil {
		t.Fatal("the fast path is off for a plain pinned HTTP/1.1 manager")
	}
	return l
}

func gzipped(t *testing.T, s string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestH1BodyCloseDuringReadEndsTheRead(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header string
		first  func(t *testing.T) []byte // what the manager sends of the body
	}{
		{"plain", "", func(*testing.T) []byte { return []byte("abc") }},
		{"gzip", "Content-Encoding: gzip\r\n", func(t *testing.T) []byte {
			// A gzip stream cut short after its first, flushed, block.
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			io.WriteString(zw, "abc")
			if err := zw.Flush(); err != nil {
				t.Fatal(err)
			}
			return buf.Bytes()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := tc.first(t)
			m := newScriptedManager(t, func(c net.Conn, _ *http.Request) {
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sContent-Length: 100000\r\n\r\n", tc.header)
				c.Write(first)
				<-untilClosed(c) // the rest never comes
			})
			l := scriptedTransport(t, m, nil)
			resp, err := l.RoundTrip(getRequest(context.Background(), m.addr))
			if err != nil {
				t.Fatal(err)
			}
			var b [1]byte
			if _, err := io.ReadFull(resp.Body, b[:]); err != nil || b[0] != 'a' {
				t.Fatalf("first byte %q, %v; want a", b[0], err)
			}
			readErr := make(chan error, 1)
			go func() {
				_, err := io.ReadAll(resp.Body)
				readErr <- err
			}()
			time.Sleep(20 * time.Millisecond) // the Read waits for bytes that never come
			if err := resp.Body.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			select {
			case err := <-readErr:
				if err == nil {
					t.Error("the Read in progress ended without an error, as if the body were complete")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not end the Read in progress")
			}
			waitFor(t, "the manager to see the connection closed", func() bool { return m.closes.Load() == 1 })
			if n := idleFastPathConns(l); n != 0 {
				t.Errorf("%d idle connections after a body closed half read, want 0", n)
			}
		})
	}
}

// untilClosed is closed when the gateway closes c (or the test ends).
func untilClosed(c net.Conn) chan struct{} {
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(done)
	}()
	return done
}

func answerOK(c net.Conn, _ *http.Request) {
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
}

func TestH1RefusesInvalidHeadersBeforeSendingAnything(t *testing.T) {
	for _, tc := range []struct {
		name    string
		req     func(*http.Request)
		wantErr string // the error names the field
	}{
		{"name with a space", func(r *http.Request) { r.Header["Bad Name"] = []string{"v"} }, `"Bad Name"`},
		{"name with a colon", func(r *http.Request) { r.Header["X-A:b"] = []string{"v"} }, `"X-A:b"`},
		{"value with CRLF", func(r *http.Request) { r.Header.Set("X-Agent", "v\r\nX-Injected: 1") }, `"X-Agent"`},
		{"value with a bare LF", func(r *http.Request) { r.Header.Set("X-Agent", "v\nX-Injected: 1") }, `"X-Agent"`},
		{"value with NUL", func(r *http.Request) { r.Header.Set("X-Agent", "v\x00") }, `"X-Agent"`},
		{"trailer name", func(r *http.Request) { r.Trailer = http.Header{"Bad\rName": nil} }, `"Bad\rName"`},
		{"method", func(r *http.Request) { r.Method = "GET /x HTTP/1.1\r\n" }, "method"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newScriptedManager(t, answerOK)
			l := scriptedTransport(t, m, nil)
			if status, _, err := get(l, context.Background(), m.addr); err != nil || status != http.StatusOK {
				t.Fatalf("warm-up: %d %v", status, err)
			}
			req := getRequest(context.Background(), m.addr)
			tc.req(req)
			body := &opaqueBody{r: strings.NewReader("")}
			req.Body = body
			resp, err := l.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("RoundTrip succeeded (%d), want the invalid field refused", resp.StatusCode)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not name %s", err, tc.wantErr)
			}
			if !body.closed.Load() {
				t.Error("the request body was not closed")
			}
			// The connection the warm-up left idle is still usable: nothing
			// was written on it.
			if status, _, err := get(l, context.Background(), m.addr); err != nil || status != http.StatusOK {
				t.Fatalf("request after the refused one: %d %v", status, err)
			}
			if got := m.received(); len(got) != 2 {
				t.Errorf("the manager received %d requests (%v), want the two valid ones", len(got), got)
			}
			if got := m.handshakes.Load(); got != 1 {
				t.Errorf("%d handshakes, want 1: the refused request must not cost the idle connection", got)
			}
		})
	}
}

func TestH1HandshakeTimeoutIsANetErrorTimeoutNamingTheHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // accepted, never a TLS answer
			mu.Unlock()
		}
	}()
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	l := &LegacyTLS{Pins: []string{pair.Pin()}}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	l.h1.handshakeTimeout = 100 * time.Millisecond
	start := time.Now()
	resp, err := l.RoundTrip(getRequest(context.Background(), ln.Addr().String()))
	if err == nil {
		resp.Body.Close()
		t.Fatal("a manager that never finished the handshake gave a response")
	}
	// reverse_proxy answers 504 only when the error itself is a net.Error.
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Errorf("error %T %q is not a net.Error timeout (reverse_proxy would answer 502, not 504)", err, err)
	}
	if !strings.Contains(err.Error(), "TLS handshake") {
		t.Errorf("error %q does not say that the TLS handshake timed out", err)
	}
	if reason := failureReason(err); reason != "timeout" {
		t.Errorf("failure reason %q, want timeout", reason)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the handshake failed after %s, want about 100 ms", took)
	}
}

// openConns is how many connections l's pool counts open (what its
// connections gauge shows as active plus idle).
func openConns(l *LegacyTLS) int {
	l.pool.mu.Lock()
	defer l.pool.mu.Unlock()
	return l.pool.open
}

func TestH1ClosesIdleConnectionsAfterTheIdleTimeoutWithoutTraffic(t *testing.T) {
	const idleTimeout = 450 * time.Millisecond
	m := newScriptedManager(t, answerOK)
	l := scriptedTransport(t, m, func(l *LegacyTLS) {
		l.KeepAlive = &reverseproxy.KeepAlive{IdleConnTimeout: caddy.Duration(idleTimeout)}
	})
	// Two connections (the first response is held open while the second
	// is sent), then no traffic at all.
	var resps []*http.Response
	for range 2 {
		resp, err := l.RoundTrip(getRequest(context.Background(), m.addr))
		if err != nil {
			t.Fatal(err)
		}
		resps = append(resps, resp)
	}
	for _, resp := range resps {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := idleFastPathConns(l); n != 2 {
		t.Fatalf("%d idle connections after two concurrent requests, want 2", n)
	}
	waitFor(t, "the idle connections to be closed", func() bool {
		return idleFastPathConns(l) == 0 && openConns(l) == 0 && m.closes.Load() == 2
	})
	// A connection used again starts a new idle spell: the timer of the
	// spell before does not close it.
	for range 2 {
		if status, _, err := get(l, context.Background(), m.addr); err != nil || status != http.StatusOK {
			t.Fatalf("request after the idle close: %d %v", status, err)
		}
		time.Sleep(idleTimeout * 2 / 3)
	}
	if n := idleFastPathConns(l); n != 1 {
		t.Errorf("%d idle connections half way through an idle spell, want 1", n)
	}
	if got := m.handshakes.Load(); got != 3 {
		t.Errorf("%d handshakes, want 3 (two, then one after the idle close)", got)
	}
}

func TestH1DecompressesGzipOnlyWhenItAskedForIt(t *testing.T) {
	const text = "policy serial 42 " // repeated: compressible
	answer := gzipped(t, strings.Repeat(text, 100))
	for _, tc := range []struct {
		name           string
		acceptEncoding string // the client's own, "" for none
		wantBody       []byte
		wantEncoding   string // Content-Encoding the client sees
	}{
		{"client sent none: the gateway asks and decompresses", "", []byte(strings.Repeat(text, 100)), ""},
		{"client asked for gzip: the raw answer", "gzip", answer, "gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newScriptedManager(t, func(c net.Conn, req *http.Request) {
				if req.Header.Get("Accept-Encoding") != "gzip" {
					answerOK(c, req)
					return
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n", len(answer))
				c.Write(answer)
			})
			l := scriptedTransport(t, m, nil)
			for i := range 2 {
				req := getRequest(context.Background(), m.addr)
				if tc.acceptEncoding != "" {
					req.Header.Set("Accept-Encoding", tc.acceptEncoding)
				}
				resp, err := l.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("request %d: reading the body: %v", i, err)
				}
				if !bytes.Equal(body, tc.wantBody) {
					t.Errorf("request %d: body %.40q… (%d bytes), want %.40q… (%d bytes)", i, body, len(body), tc.wantBody, len(tc.wantBody))
				}
				if got := resp.Header.Get("Content-Encoding"); got != tc.wantEncoding {
					t.Errorf("request %d: Content-Encoding %q, want %q", i, got, tc.wantEncoding)
				}
				if resp.Uncompressed != (tc.acceptEncoding == "") {
					t.Errorf("request %d: Uncompressed %v", i, resp.Uncompressed)
				}
				if resp.Uncompressed && (resp.ContentLength != -1 || resp.Header.Get("Content-Length") != "") {
					t.Errorf("request %d: a decompressed body keeps the compressed length (%d, %q)", i, resp.ContentLength, resp.Header.Get("Content-Length"))
				}
				if got := req.Header.Get("Accept-Encoding"); got != tc.acceptEncoding {
					t.Errorf("request %d: the client's request now has Accept-Encoding %q, want %q", i, got, tc.acceptEncoding)
				}
			}
			for i, h := range m.received() {
				if got := h.Get("Accept-Encoding"); got != "gzip" {
					t.Errorf("request %d reached the manager with Accept-Encoding %q, want gzip", i, got)
				}
			}
			if got := m.handshakes.Load(); got != 1 {
				t.Errorf("%d handshakes for two requests, want 1: a body read to its end frees the connection", got)
			}
		})
	}
}

// closingBody is a request body that, as a server's request body, cannot
// be read once closed.
type closingBody struct {
	r      io.Reader
	closed atomic.Bool
}

func (b *closingBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errors.New("read on a closed request body")
	}
	return b.r.Read(p)
}

func (b *closingBody) Close() error { b.closed.Store(true); return nil }

// TestH1HandsAnHTTP2ManagersFirstRequestToGoWithItsBody: the fast path
// learns that the manager speaks HTTP/2 only from the handshake of its
// first connection; that request, body and all, must still reach the
// manager through Go's transport, and so must the next ones.
func TestH1HandsAnHTTP2ManagersFirstRequestToGoWithItsBody(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Proto, body)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	l := &LegacyTLS{Pins: []string{PinOf(srv.Certificate())}}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	if l.h1 == nil {
		t.Fatal("the fast path is off for this transport; the test would prove nothing")
	}
	for i, payload := range []string{"first heartbeat", "second heartbeat"} {
		body := &closingBody{r: strings.NewReader(payload)}
		resp, err := l.RoundTrip(postRequest(srv.Listener.Addr().String(), body, int64(len(payload)), nil))
		if err != nil {
			t.Fatalf("request %d to an HTTP/2 manager: %v", i+1, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "HTTP/2.0 " + payload; string(got) != want {
			t.Errorf("request %d: the manager answered %q, want %q", i+1, got, want)
		}
	}
}

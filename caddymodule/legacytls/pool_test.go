package legacytls

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/legacygate/legacygate/integration/certs"
)

// countingManager is a TLS upstream on 127.0.0.1 that counts handshakes
// and, while gate is set, holds every request until the gate closes.
type countingManager struct {
	addr       string
	pin        string
	handshakes atomic.Int64
	requests   atomic.Int64 // requests that reached the handler
	mu         sync.Mutex
	gate       chan struct{}
}

func newCountingManager(tb testing.TB) *countingManager {
	tb.Helper()
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		tb.Fatal(err)
	}
	m := &countingManager{pin: pair.Pin()}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()},
		MaxVersion:   tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m.handshakes.Add(1)
			return nil, nil
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		m.requests.Add(1)
		m.mu.Lock()
		gate := m.gate
		m.mu.Unlock()
		if gate != nil {
			<-gate
		}
		io.WriteString(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	m.addr = ln.Addr().String()
	return m
}

// hold makes requests wait until the returned function is called.
func (m *countingManager) hold() (open func()) {
	gate := make(chan struct{})
	m.mu.Lock()
	m.gate = gate
	m.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			m.gate = nil
			m.mu.Unlock()
			close(gate)
		})
	}
}

func poolTransport(tb testing.TB, m *countingManager, opts func(*LegacyTLS)) *LegacyTLS {
	tb.Helper()
	l := &LegacyTLS{Pins: []string{m.pin}}
	if opts != nil {
		opts(l)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(func() { cancel(); _ = l.Cleanup() })
	if err := l.Provision(ctx); err != nil {
		tb.Fatal(err)
	}
	return l
}

func getRequest(ctx context.Context, addr string) *http.Request {
	req := &http.Request{Method: http.MethodGet, URL: &url.URL{Host: addr, Path: "/heartbeat"}, Header: http.Header{}, Host: addr}
	return req.WithContext(ctx)
}

// get does one request and returns its status ("error" stands for none).
func get(l *LegacyTLS, ctx context.Context, addr string) (int, http.Header, error) {
	resp, err := l.RoundTrip(getRequest(ctx, addr))
	if err != nil {
		return 0, nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header, nil
}

// concurrently runs total requests over workers goroutines.
func concurrently(tb testing.TB, l *LegacyTLS, addr string, workers, total int) {
	tb.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(total) {
				status, _, err := get(l, context.Background(), addr)
				if err == nil && status != http.StatusOK {
					err = &statusError{status}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

type statusError struct{ status int }

func (e *statusError) Error() string { return http.StatusText(e.status) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPoolDefaultsKeepAsManyIdleConnectionsAsItOpens(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, nil)
	if l.MaxConns != DefaultMaxConns || time.Duration(l.MaxConnWait) != DefaultMaxConnWait {
		t.Fatalf("max_conns %d, max_conn_wait %s; want %d, %s", l.MaxConns, time.Duration(l.MaxConnWait), DefaultMaxConns, DefaultMaxConnWait)
	}
	rt := l.Transport
	if rt.MaxConnsPerHost != DefaultMaxConns || rt.MaxIdleConnsPerHost != DefaultMaxConns || rt.IdleConnTimeout != DefaultIdleTimeout {
		t.Fatalf("transport: max conns %d, idle per host %d, idle timeout %s", rt.MaxConnsPerHost, rt.MaxIdleConnsPerHost, rt.IdleConnTimeout)
	}
	explicit := poolTransport(t, m, func(l *LegacyTLS) {
		l.MaxConns = 10
		l.HTTPTransport.KeepAlive = &reverseproxy.KeepAlive{MaxIdleConnsPerHost: 3, IdleConnTimeout: caddy.Duration(4 * time.Second)}
	})
	if rt := explicit.Transport; rt.MaxConnsPerHost != 10 || rt.MaxIdleConnsPerHost != 3 || rt.IdleConnTimeout != 4*time.Second {
		t.Fatalf("explicit keepalive options overridden: max conns %d, idle per host %d, idle timeout %s", rt.MaxConnsPerHost, rt.MaxIdleConnsPerHost, rt.IdleConnTimeout)
	}
}

func TestPoolHandshakesNoMoreThanMaxConns(t *testing.T) {
	const maxConns = 8
	m := newCountingManager(t)
	l := poolTransport(t, m, func(l *LegacyTLS) { l.MaxConns = maxConns })
	active, idle, waiting := testutil.ToFloat64(l.pool.active), testutil.ToFloat64(l.pool.idle), testutil.ToFloat64(l.pool.waiting)

	concurrently(t, l, m.addr, 1, 200)
	if got := m.handshakes.Load(); got != 1 {
		t.Fatalf("200 sequential requests cost %d handshakes, want 1", got)
	}
	concurrently(t, l, m.addr, maxConns, 200)
	if got := m.handshakes.Load(); got > maxConns {
		t.Fatalf("200 requests %d at a time cost %d handshakes, want at most %d", maxConns, got, maxConns)
	}
	waitFor(t, "every connection idle", func() bool {
		return testutil.ToFloat64(l.pool.active) == active && testutil.ToFloat64(l.pool.idle)-idle == float64(m.handshakes.Load())
	})
	if got := testutil.ToFloat64(l.pool.waiting) - waiting; got != 0 {
		t.Fatalf("waiting gauge %v after the requests, want 0", got)
	}
}

func TestPoolQueuesBeyondMaxConnsThenAnswers503(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, func(l *LegacyTLS) {
		l.MaxConns = 2
		l.MaxConnWait = caddy.Duration(300 * time.Millisecond)
	})
	core, logs := observer.New(zapcore.ErrorLevel)
	l.logger = zap.New(core)
	waiting0, active0 := testutil.ToFloat64(l.pool.waiting), testutil.ToFloat64(l.pool.active)
	open := m.hold()
	defer open()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { get(l, context.Background(), m.addr) })
	}
	waitFor(t, "two active", func() bool { return testutil.ToFloat64(l.pool.active)-active0 == 2 })

	// The third waits, then gets the 503 without reaching the manager.
	start := time.Now()
	status, header, err := get(l, context.Background(), m.addr)
	if err != nil || status != http.StatusServiceUnavailable || header.Get("Retry-After") != "1" {
		t.Fatalf("beyond max_conns: status %d, Retry-After %q, err %v; want 503, 1", status, header.Get("Retry-After"), err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("503 after %s, want after max_conn_wait (300ms)", waited)
	}
	entries := logs.FilterMessage("request to the manager failed").All()
	if len(entries) != 1 || entries[0].ContextMap()["reason"] != poolExhaustedReason || entries[0].ContextMap()["path"] != "/heartbeat" {
		t.Fatalf("log lines %v, want one with reason pool_exhausted and the path", entries)
	}

	// A fourth one that waits less than max_conn_wait is served.
	done := make(chan int)
	go func() { s, _, _ := get(l, context.Background(), m.addr); done <- s }()
	waitFor(t, "one waiting", func() bool { return testutil.ToFloat64(l.pool.waiting)-waiting0 == 1 })
	open()
	if s := <-done; s != http.StatusOK {
		t.Fatalf("request that waited for a free connection: %d, want 200", s)
	}
	wg.Wait()
	if got := m.handshakes.Load(); got > 2 {
		t.Fatalf("%d handshakes, want at most max_conns (2)", got)
	}
}

func TestPoolQueueIsBoundedAt4xMaxConns(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, func(l *LegacyTLS) {
		l.MaxConns = 1
		l.MaxConnWait = caddy.Duration(time.Minute)
	})
	waiting0 := testutil.ToFloat64(l.pool.waiting)
	open := m.hold()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 1 + queueLengthPerConn {
		wg.Go(func() { get(l, ctx, m.addr) })
	}
	waitFor(t, "a full queue", func() bool { return testutil.ToFloat64(l.pool.waiting)-waiting0 == queueLengthPerConn })
	start := time.Now()
	status, _, err := get(l, context.Background(), m.addr)
	if err != nil || status != http.StatusServiceUnavailable || time.Since(start) > time.Second {
		t.Fatalf("with a full queue: status %d, err %v after %s; want 503 at once", status, err, time.Since(start))
	}
	cancel()
	open()
	wg.Wait()
}

func TestFailuresAreLoggedOnceWithReasonUpstreamAndPath(t *testing.T) {
	m := newCountingManager(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()
	tests := []struct {
		name, addr, reason string
		opts               func(*LegacyTLS)
		ctx                func() (context.Context, context.CancelFunc)
	}{
		{"dial refused", refused, "dial_refused", nil, nil},
		{"pin mismatch", m.addr, "pin_mismatch", func(l *LegacyTLS) { l.Pins = []string{testPin} }, nil},
		{"handshake", m.addr, "handshake", func(l *LegacyTLS) { l.MinVersion, l.MaxVersion = "tls1.3", "tls1.3" }, nil},
		{"timeout", m.addr, "timeout", func(l *LegacyTLS) { l.ResponseHeaderTimeout = caddy.Duration(50 * time.Millisecond) }, nil},
		{"client gone is no failure", m.addr, "", func(l *LegacyTLS) { l.abandonedLimit = 100 * time.Millisecond }, func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := poolTransport(t, m, tc.opts)
			core, logs := observer.New(zapcore.DebugLevel)
			l.logger = zap.New(core)
			open := m.hold()
			if tc.reason != "timeout" && tc.ctx == nil {
				open()
			}
			defer open()
			ctx, cancel := context.Background(), context.CancelFunc(func() {})
			if tc.ctx != nil {
				ctx, cancel = tc.ctx()
			}
			defer cancel()
			if _, _, err := get(l, ctx, tc.addr); err == nil {
				t.Fatal("RoundTrip succeeded, want an error")
			}
			all := logs.All()
			if tc.reason == "" {
				if len(all) != 0 {
					t.Fatalf("log lines %v, want none (the client gave up)", all)
				}
				return
			}
			if len(all) != 1 || all[0].Level != zapcore.ErrorLevel {
				t.Fatalf("log lines %v, want exactly one at error level", all)
			}
			fields := all[0].ContextMap()
			if fields["reason"] != tc.reason || fields["upstream"] != tc.addr || fields["path"] != "/heartbeat" {
				t.Fatalf("log fields %v, want reason %q, upstream %q, path /heartbeat", fields, tc.reason, tc.addr)
			}
		})
	}
}

func TestABodyTheManagerBreaksOffIsLoggedOnceAndAClosedOneNever(t *testing.T) {
	for _, tc := range []struct {
		name       string
		goPath     bool // Go's transport instead of the HTTP/1.1 client
		closeEarly bool // the client closes the body before its end
	}{
		{"broken off, HTTP/1.1 client", false, false},
		{"broken off, Go's transport", true, false},
		{"closed by the client, HTTP/1.1 client", false, true},
		{"closed by the client, Go's transport", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newScriptedManager(t, func(c net.Conn, _ *http.Request) {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nshort")
				if tc.closeEarly {
					<-untilClosed(c)
					return
				}
				c.Close() // 995 bytes short
			})
			l := scriptedTransport(t, m, nil)
			if tc.goPath {
				l.h1 = nil
			}
			core, logs := observer.New(zapcore.DebugLevel)
			l.logger = zap.New(core)
			resp, err := l.RoundTrip(getRequest(context.Background(), m.addr))
			if err != nil {
				t.Fatal(err)
			}
			var b [5]byte
			if _, err := io.ReadFull(resp.Body, b[:]); err != nil {
				t.Fatalf("reading the first bytes: %v", err)
			}
			if tc.closeEarly {
				resp.Body.Close()
				if all := logs.All(); len(all) != 0 {
					t.Fatalf("log lines %v after the client closed the body, want none", all)
				}
				return
			}
			for range 2 { // a second Read after the error adds no line
				if _, err := io.ReadAll(resp.Body); err == nil {
					t.Fatal("the rest of a body cut at 5 of 1,000 bytes read without an error")
				}
			}
			resp.Body.Close()
			all := logs.All()
			if len(all) != 1 || all[0].Level != zapcore.ErrorLevel || all[0].Message != "the manager's response broke off" {
				t.Fatalf("log lines %v, want exactly one error: the manager's response broke off", all)
			}
			fields := all[0].ContextMap()
			if fields["reason"] != "upstream_error" || fields["upstream"] != m.addr || fields["path"] != "/heartbeat" {
				t.Fatalf("log fields %v, want reason upstream_error, upstream %q, path /heartbeat", fields, m.addr)
			}
		})
	}
}

// BenchmarkPoolHandshakes: 128 clients at once through legacy_tls with its
// default pool, and through Caddy's http transport with its defaults (32
// idle connections per host), reporting the manager's handshakes per 1,000
// requests.
func BenchmarkPoolHandshakes(b *testing.B) {
	const clients = 128
	for _, name := range []string{"legacy_tls_default", "legacy_tls_keepalive_idle_32"} {
		b.Run(name, func(b *testing.B) {
			m := newCountingManager(b)
			l := poolTransport(b, m, func(l *LegacyTLS) {
				if name == "legacy_tls_keepalive_idle_32" {
					l.HTTPTransport.KeepAlive = &reverseproxy.KeepAlive{MaxIdleConnsPerHost: 32}
				}
			})
			b.ResetTimer()
			concurrently(b, l, m.addr, clients, b.N)
			b.StopTimer()
			b.ReportMetric(float64(m.handshakes.Load())*1000/float64(b.N), "handshakes/1000req")
		})
	}
}

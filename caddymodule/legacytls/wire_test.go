package legacytls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/internal/pacer"
)

// leaveAfterArrival sends a request, cancels its context (the client hangs
// up) once the manager has it, lets the manager answer, and returns what
// RoundTrip returned.
func leaveAfterArrival(t *testing.T, l *LegacyTLS, m *countingManager, answer bool) error {
	t.Helper()
	open := m.hold()
	defer open()
	before := m.requests.Load()
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() {
		resp, err := l.RoundTrip(getRequest(ctx, m.addr))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		result <- err
	}()
	waitFor(t, "the request to reach the manager", func() bool { return m.requests.Load() > before })
	cancel()
	if answer {
		time.Sleep(20 * time.Millisecond) // the client is gone before the answer
		open()
	}
	select {
	case err := <-result:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("RoundTrip did not return")
		return nil
	}
}

func TestClientThatLeavesAfterTheWriteCostsTheManagerNoHandshake(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, nil)
	if status, _, err := get(l, context.Background(), m.addr); err != nil || status != http.StatusOK {
		t.Fatalf("warm-up: %d %v", status, err)
	}
	warm := m.handshakes.Load()
	for i := range 5 {
		if err := leaveAfterArrival(t, l, m, true); err != nil {
			t.Fatalf("client %d left after the write: the manager's answer was not read: %v", i, err)
		}
	}
	if status, _, err := get(l, context.Background(), m.addr); err != nil || status != http.StatusOK {
		t.Fatalf("after the departures: %d %v", status, err)
	}
	if got := m.handshakes.Load() - warm; got != 0 {
		t.Errorf("5 clients that hung up after their request was written cost the manager %d new TLS handshakes, want 0", got)
	}
}

func TestClientThatLeftBeforeTheWriteSendsNothing(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := get(l, ctx, m.addr); !errors.Is(err, context.Canceled) {
		t.Errorf("RoundTrip for a client already gone: %v, want context.Canceled", err)
	}
	if got := m.requests.Load(); got != 0 {
		t.Errorf("the manager received %d requests from a client that had left", got)
	}
}

func TestAbandonedRequestRunsAtMostTheLimit(t *testing.T) {
	m := newCountingManager(t)
	l := poolTransport(t, m, func(l *LegacyTLS) { l.abandonedLimit = 200 * time.Millisecond })
	start := time.Now()
	err := leaveAfterArrival(t, l, m, false)
	if !errors.Is(err, errAbandoned) {
		t.Errorf("a manager that never answers an abandoned request: %v, want errAbandoned", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("the abandoned request ran %v, limit 200ms", elapsed)
	}
	waitFor(t, "the pool slot to be released", func() bool {
		l.pool.mu.Lock()
		defer l.pool.mu.Unlock()
		return l.pool.inUse == 0
	})
}

// BenchmarkAtTheWire is the wire's cost on a request that completes: a
// parent context shaped like a Caddy request's (a cancellable context under
// a few values and the request variables), the hooks the transport calls,
// and done; for Go's transport (atTheWire: a context and a trace) and for
// the HTTP/1.1 client (onTheWire: direct calls).
//
//	go test -run '^$' -bench AtTheWire -benchmem ./caddymodule/legacytls/
func BenchmarkAtTheWire(b *testing.B) {
	for _, tc := range []struct {
		name      string
		paced, h1 bool
	}{{"go/unpaced", false, false}, {"go/paced", true, false}, {"h1/unpaced", false, true}, {"h1/paced", true, true}} {
		paced := tc.paced
		b.Run(tc.name, func(b *testing.B) {
			parent, cancel := context.WithCancel(context.Background())
			defer cancel()
			type key int
			for i := range 6 {
				parent = context.WithValue(parent, key(i), i)
			}
			vars := map[string]any{}
			if paced {
				p, err := pacer.New(time.Nanosecond, nil)
				if err != nil {
					b.Fatal(err)
				}
				vars[pacer.VarKey] = p
			}
			parent = context.WithValue(parent, caddyhttp.VarsCtxKey, vars)
			req, err := http.NewRequestWithContext(parent, http.MethodGet, "https://manager.test/", nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			if tc.h1 {
				for b.Loop() {
					w := onTheWire(req, time.Second)
					if err := w.pace(); err != nil {
						b.Fatal(err)
					}
					if err := w.attach(func() {}); err != nil {
						b.Fatal(err)
					}
					w.wrote()
					w.detach()
					w.done()
				}
				return
			}
			for b.Loop() {
				out, w := atTheWire(req, time.Second)
				trace := httptrace.ContextClientTrace(out.Context())
				if trace.GotConn != nil {
					trace.GotConn(httptrace.GotConnInfo{Conn: &tls.Conn{}})
				}
				trace.WroteRequest(httptrace.WroteRequestInfo{})
				w.done()
			}
		})
	}
}

package legacytls

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
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
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	m := &closingManager{pin: pair.Pin()}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair.TLS()}})
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { m.serveOne(c) })
		}
	}()
	m.addr = ln.Addr().String()
	return m
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

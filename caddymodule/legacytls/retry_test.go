package legacytls

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// bodyManager is a TLS manager on 127.0.0.1 that records every request
// body it receives. With headThenClose, every request after the first on
// a connection is read up to its headers, recorded, and the connection
// closed without an answer.
type bodyManager struct {
	addr, pin     string
	headThenClose bool

	mu     sync.Mutex
	bodies []string
	conns  []net.Conn // the manager's side of each accepted connection
}

func newBodyManager(t *testing.T, headThenClose bool) *bodyManager {
	t.Helper()
	m := &bodyManager{headThenClose: headThenClose}
	m.addr, m.pin = serveManager(t, managerListener{tls12: true, serve: func(c net.Conn) {
		m.mu.Lock()
		m.conns = append(m.conns, c)
		m.mu.Unlock()
		m.serve(c)
	}})
	return m
}

// closeLatest closes the manager's side of the newest connection, as a
// manager whose keep-alive timeout ran out does (TLS close_notify, FIN).
func (m *bodyManager) closeLatest() {
	m.mu.Lock()
	c := m.conns[len(m.conns)-1]
	m.mu.Unlock()
	c.Close()
}

func (m *bodyManager) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for n := 0; ; n++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if m.headThenClose && n > 0 {
			m.record("(head only)")
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		m.record(string(body))
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

func (m *bodyManager) record(body string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bodies = append(m.bodies, body)
}

func (m *bodyManager) received() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.bodies)
}

// faultConn lets a test make a write to the manager fail with nothing
// written, as on a connection the manager reset, and tells when it closes.
type faultConn struct {
	net.Conn
	writeFails atomic.Bool
	closed     chan struct{}
	closeOnce  sync.Once
}

func (c *faultConn) Write(p []byte) (int, error) {
	if c.writeFails.Load() {
		return 0, syscall.EPIPE
	}
	return c.Conn.Write(p)
}

func (c *faultConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// closeReached reports whether the manager's close has reached the
// gateway's side of c: a reader of the connection (Go's transport has one
// on every idle connection) saw it and closed c, or the socket holds the
// close_notify or FIN, unread (the fast path reads nothing while idle).
func (c *faultConn) closeReached() bool {
	select {
	case <-c.closed:
		return true
	default:
	}
	raw := syscallConn(c.Conn)
	if raw == nil || !canPeekSockets {
		return false
	}
	pending := false
	err := raw.Read(func(fd uintptr) bool {
		pending = !peekWouldBlock(fd)
		return true
	})
	return err != nil || pending
}

// faultTransport is legacy_tls to m whose connections are faultConns; last
// returns the most recently dialled one.
func faultTransport(t *testing.T, m *bodyManager) (l *LegacyTLS, last func() *faultConn) {
	t.Helper()
	l = &LegacyTLS{Pins: []string{m.pin}}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var latest *faultConn
	dial := l.Transport.DialContext
	l.Transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		fc := &faultConn{Conn: c, closed: make(chan struct{})}
		mu.Lock()
		latest = fc
		mu.Unlock()
		return fc, nil
	}
	return l, func() *faultConn {
		mu.Lock()
		defer mu.Unlock()
		return latest
	}
}

// breakReused breaks the reused connection the request is given, in the
// way fault names, before the transport writes anything on it:
// write_fails makes the write fail with nothing written; closed_before_write
// has the manager close its side, and waits until the close has reached
// the gateway's socket, as a manager's idle close does before the next
// request comes.
func breakReused(t *testing.T, req *http.Request, m *bodyManager, last func() *faultConn, fault string) *http.Request {
	t.Helper()
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			return
		}
		c := last()
		switch fault {
		case "write_fails":
			c.writeFails.Store(true)
		case "closed_before_write":
			m.closeLatest()
			deadline := time.Now().Add(5 * time.Second)
			for !c.closeReached() {
				if time.Now().After(deadline) {
					t.Error("the manager's close did not reach the gateway's socket")
					return
				}
				time.Sleep(time.Millisecond)
			}
			// Let a reader woken by the close (Go's transport's) act on it.
			time.Sleep(50 * time.Millisecond)
		}
	}}
	return req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
}

// retriesByReason reads legacygate_upstream_retries_total.
func retriesByReason(l *LegacyTLS) map[string]float64 {
	counts := make(map[string]float64)
	for _, reason := range []string{retryNothingWritten, retryClosedBeforeWrite} {
		counts[reason] = testutil.ToFloat64(l.retries.WithLabelValues(reason))
	}
	return counts
}

func TestRetriesOnlyARequestTheManagerReceivedNoneOf(t *testing.T) {
	small := "heartbeat=" + strings.Repeat("s", 200)
	large := strings.Repeat("L", 16<<10) // above write_buffer: streamed
	for _, tc := range []struct {
		name, fault, body string
		wantRetry         string // "" for no retry and an error
	}{
		{"small body, write fails on a stale connection", "write_fails", small, retryNothingWritten},
		{"small body, stale connection closed before the write", "closed_before_write", small, retryClosedBeforeWrite},
		{"large body, write fails on a stale connection", "write_fails", large, ""},
		// Nothing of a streamed body is read before the connection is found
		// closed, so it too goes on a new connection.
		{"large body, stale connection closed before the write", "closed_before_write", large, retryClosedBeforeWrite},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newBodyManager(t, false)
			l, last := faultTransport(t, m)
			roundTripOK(t, l, postRequest(m.addr, io.NopCloser(strings.NewReader("warm-up")), 7, nil))
			before := retriesByReason(l)

			body := &opaqueBody{r: strings.NewReader(tc.body)}
			req := breakReused(t, postRequest(m.addr, body, int64(len(tc.body)), nil), m, last, tc.fault)
			resp, err := l.RoundTrip(req)
			if resp != nil {
				defer resp.Body.Close()
			}

			got := m.received()
			if tc.wantRetry == "" {
				if err == nil {
					t.Fatalf("RoundTrip succeeded (%d), want the stale connection's error", resp.StatusCode)
				}
				if len(got) != 1 {
					t.Errorf("manager received %d requests, want only the warm-up", len(got))
				}
				if after := retriesByReason(l); !maps.Equal(after, before) {
					t.Errorf("retries_total went from %v to %v, want no retry", before, after)
				}
				return
			}
			if err != nil {
				t.Fatalf("RoundTrip: %v, want a retry on a new connection", err)
			}
			if answer, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || string(answer) != "ok" {
				t.Fatalf("answer %d %q, want 200 ok", resp.StatusCode, answer)
			}
			if len(got) != 2 || got[1] != tc.body {
				t.Fatalf("manager received %d requests (last %.20q…), want the warm-up and the body exactly once", len(got), got[len(got)-1])
			}
			want := maps.Clone(before)
			want[tc.wantRetry]++
			if after := retriesByReason(l); !maps.Equal(after, want) {
				t.Errorf("retries_total went from %v to %v, want one more %q", before, after, tc.wantRetry)
			}
		})
	}
}

func TestNeverRetriesARequestWrittenToTheManager(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header http.Header
	}{
		{"POST", nil},
		{"POST with an Idempotency-Key", http.Header{"Idempotency-Key": {"k1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newBodyManager(t, true)
			l, _ := faultTransport(t, m)
			roundTripOK(t, l, postRequest(m.addr, io.NopCloser(strings.NewReader("warm-up")), 7, nil))
			before := retriesByReason(l)

			const upload = "log upload"
			resp, err := l.RoundTrip(postRequest(m.addr, io.NopCloser(bytes.NewReader([]byte(upload))), int64(len(upload)), tc.header))
			if err == nil {
				resp.Body.Close()
				t.Fatalf("RoundTrip succeeded (%d), want the manager's hang-up as an error", resp.StatusCode)
			}
			if got := m.received(); len(got) != 2 {
				t.Errorf("manager received %q, want the warm-up and one request head: no retry", got)
			}
			if after := retriesByReason(l); !maps.Equal(after, before) {
				t.Errorf("retries_total went from %v to %v, want no retry", before, after)
			}
		})
	}
}

func TestGetBodyRefusesASecondRetry(t *testing.T) {
	b := &bufferedBody{data: []byte("x"), conns: 2}
	if _, err := b.getBody(); !errors.Is(err, errRetriedOnce) {
		t.Fatalf("getBody after two attempts: %v, want errRetriedOnce", err)
	}
	b.conns = 1
	r, err := b.getBody()
	if err != nil {
		t.Fatalf("getBody after one attempt: %v", err)
	}
	if got, _ := io.ReadAll(r); string(got) != "x" {
		t.Fatalf("getBody gave %q, want the buffered body", got)
	}
}

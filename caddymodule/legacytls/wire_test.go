package legacytls

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"
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

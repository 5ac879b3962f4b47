package legacytls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/internal/pacer"
)

// arrivalManager is a TLS upstream that notes when each request's headers
// arrived.
type arrivalManager struct {
	addr, pin string
	mu        sync.Mutex
	arrivals  []time.Time
	barrier   *sync.WaitGroup // while set, each request waits for the others
}

func newArrivalManager(t *testing.T) *arrivalManager {
	t.Helper()
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair.TLS()}})
	if err != nil {
		t.Fatal(err)
	}
	m := &arrivalManager{addr: ln.Addr().String(), pin: pair.Pin()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.arrivals = append(m.arrivals, time.Now())
		barrier := m.barrier
		m.mu.Unlock()
		if barrier != nil {
			barrier.Done()
			barrier.Wait()
		}
		io.WriteString(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return m
}

// warm opens n connections from l to m (n requests held until all
// arrived) and forgets their arrivals, so that a measurement is not
// disturbed by handshakes.
func (m *arrivalManager) warm(t *testing.T, l *LegacyTLS, n int) {
	t.Helper()
	barrier := new(sync.WaitGroup)
	barrier.Add(n)
	m.mu.Lock()
	m.barrier = barrier
	m.mu.Unlock()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if status, _, err := get(l, context.Background(), m.addr); err != nil || status != http.StatusOK {
				t.Errorf("warming up: status %d, error %v", status, err)
			}
		})
	}
	wg.Wait()
	m.mu.Lock()
	m.barrier, m.arrivals = nil, nil
	m.mu.Unlock()
}

func (m *arrivalManager) sorted() []time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := append([]time.Time(nil), m.arrivals...)
	sort.Slice(s, func(a, b int) bool { return s[a].Before(s[b]) })
	return s
}

// busiestWindow returns the most arrivals within any window of length w.
func busiestWindow(times []time.Time, w time.Duration) int {
	most, lo := 0, 0
	for hi := range times {
		for times[hi].Sub(times[lo]) >= w {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}

// withPacer is a request context as heartbeat_limit leaves it.
func withPacer(p *pacer.Pacer) context.Context {
	return context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{pacer.VarKey: p})
}

func TestRequestsReleasedTogetherReachTheManagerOnePerInterval(t *testing.T) {
	// The requests all reach the transport at once, as they would after a
	// GC pause that held them between heartbeat_limit and reverse_proxy;
	// the manager must still see them spaced by the pacer.
	const interval, n = 12 * time.Millisecond, 40
	m := newArrivalManager(t)
	l := poolTransport(t, &countingManager{addr: m.addr, pin: m.pin}, nil)
	m.warm(t, l, n)
	p, err := pacer.New(interval, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := withPacer(p)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if status, _, err := get(l, ctx, m.addr); err != nil || status != http.StatusOK {
				t.Errorf("status %d, error %v", status, err)
			}
		})
	}
	wg.Wait()
	arrivals := m.sorted()
	if len(arrivals) != n {
		t.Fatalf("the manager saw %d requests, want %d", len(arrivals), n)
	}
	const window = 10 * interval
	// One more than the window's intervals, and the one at its closed end:
	// a send at most an interval late keeps its schedule (at 12 ms). One
	// more for the stamps, which the manager's handler takes when a loaded
	// host gets round to it (the connections are opened beforehand, so no
	// handshake competes). Without the pacer all 40 arrive within a few ms.
	if got, limit := busiestWindow(arrivals, window), int(window/interval)+3; got > limit {
		t.Errorf("busiest %v at the manager: %d requests, want at most %d", window, got, limit)
	}
}

func TestRequestWhoseClientLeftWhilePacedNeverReachesTheManager(t *testing.T) {
	m := newArrivalManager(t)
	l := poolTransport(t, &countingManager{addr: m.addr, pin: m.pin}, nil)
	p, err := pacer.New(time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := withPacer(p)
	if status, _, err := get(l, ctx, m.addr); err != nil || status != http.StatusOK {
		t.Fatalf("first request: status %d, error %v", status, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(20*time.Millisecond, cancel)
	if _, _, err := get(l, ctx, m.addr); !errors.Is(err, context.Canceled) {
		t.Fatalf("the paced request of a client that left: error %v, want context.Canceled", err)
	}
	time.Sleep(50 * time.Millisecond)
	if got := len(m.sorted()); got != 1 {
		t.Errorf("the manager saw %d requests, want 1: the second must not be written", got)
	}
	if got := l.pool.queued.Load(); got != 0 {
		t.Errorf("%d requests still queued for the pool", got)
	}
}

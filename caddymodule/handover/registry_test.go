package handover

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// fakePlatform records what the registry asked of the system.
type fakePlatform struct {
	steered atomic.Int32
	queued  []net.Conn // what drain finds on a later socket
}

func (f *fakePlatform) platform() *platform {
	return &platform{
		steer: func(net.Listener) error { f.steered.Add(1); return nil },
		drain: func(net.Listener) []net.Conn { q := f.queued; f.queued = nil; return q },
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

func dial(t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

type accepted struct {
	c   net.Conn
	err error
}

// acceptAsync starts an Accept whose result arrives on the channel.
func acceptAsync(l net.Listener) <-chan accepted {
	ch := make(chan accepted, 1)
	go func() {
		c, err := l.Accept()
		ch <- accepted{c, err}
	}()
	return ch
}

func expectConn(t *testing.T, ch <-chan accepted, within time.Duration, who string) net.Conn {
	t.Helper()
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("%s: Accept: %v", who, a.err)
		}
		return a.c
	case <-time.After(within):
		t.Fatalf("%s received no connection within %s", who, within)
		return nil
	}
}

func expectNothing(t *testing.T, ch <-chan accepted, during time.Duration, who string) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("%s received %v (error %v), want nothing", who, a.c, a.err)
	case <-time.After(during):
	}
}

const key = "tcp/test"

func TestOlderServerStopsAcceptingOnceANewerConfigurationProvisions(t *testing.T) {
	f := &fakePlatform{}
	r := newRegistry(f.platform(), time.Minute, 10*time.Millisecond)
	primary := listen(t)
	gen1 := r.provision("config 1")
	l1 := r.wrap(gen1, key, primary, zap.NewNop())
	if l1 == primary {
		t.Fatal("the primary was passed through")
	}
	if f.steered.Load() != 1 {
		t.Fatalf("steer called %d times, want once for the primary", f.steered.Load())
	}
	dial(t, primary.Addr())
	c := expectConn(t, acceptAsync(l1), time.Second, "the only server")
	_ = c.Close()

	gen2 := r.provision("config 2")
	old := acceptAsync(l1)
	dial(t, primary.Addr())
	expectNothing(t, old, 150*time.Millisecond, "the older server after a newer configuration provisioned")

	later := listen(t)
	l2 := r.wrap(gen2, key, later, zap.NewNop())
	expectConn(t, acceptAsync(l2), time.Second, "the newer server")
	if _, err := later.Accept(); err == nil {
		t.Error("the newer configuration's own socket was left open")
	}
	dial(t, primary.Addr())
	expectNothing(t, old, 100*time.Millisecond, "the older server")
	if l2.Addr().String() != primary.Addr().String() {
		t.Errorf("newer listener's address %s, want the primary's %s", l2.Addr(), primary.Addr())
	}
}

func TestAFailedLoadGivesConnectionsBackToTheOlderServer(t *testing.T) {
	tests := []struct {
		name string
		// fail ends the newer configuration as Caddy does when its load fails.
		fail func(r *registry, gen *generation)
	}{
		{"provision failed", func(r *registry, gen *generation) { r.cleanup(gen) }},
		{"start failed after wrapping", func(r *registry, gen *generation) {
			l := r.wrap(gen, key, listen(t), zap.NewNop())
			r.cleanup(gen)
			if _, err := l.Accept(); err == nil {
				t.Error("the failed configuration's listener still accepts")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry((&fakePlatform{}).platform(), time.Minute, 10*time.Millisecond)
			primary := listen(t)
			l1 := r.wrap(r.provision("config 1"), key, primary, zap.NewNop())
			gen2 := r.provision("config 2")
			old := acceptAsync(l1)
			dial(t, primary.Addr())
			expectNothing(t, old, 100*time.Millisecond, "the older server while the newer configuration loads")
			tt.fail(r, gen2)
			expectConn(t, old, time.Second, "the older server after the newer configuration failed")
		})
	}
}

func TestTheOlderServerResumesWhenTheNewerConfigurationDoesNotClaimTheAddress(t *testing.T) {
	const claimWait = 200 * time.Millisecond
	r := newRegistry((&fakePlatform{}).platform(), claimWait, 10*time.Millisecond)
	primary := listen(t)
	l1 := r.wrap(r.provision("config 1"), key, primary, zap.NewNop())
	start := time.Now()
	r.provision("config 2 without this site")
	old := acceptAsync(l1)
	dial(t, primary.Addr())
	expectConn(t, old, 2*time.Second, "the older server")
	if waited := time.Since(start); waited < claimWait*3/4 {
		t.Errorf("the older server took the connection after %s, want about %s", waited, claimWait)
	}
}

func TestThePrimaryStaysOpenUntilItsLastUserCloses(t *testing.T) {
	r := newRegistry((&fakePlatform{}).platform(), time.Minute, 10*time.Millisecond)
	primary := listen(t)
	l1 := r.wrap(r.provision("config 1"), key, primary, zap.NewNop())
	l2 := r.wrap(r.provision("config 2"), key, listen(t), zap.NewNop())
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	dial(t, primary.Addr())
	expectConn(t, acceptAsync(l2), time.Second, "the newer server after the older one closed")
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", primary.Addr().String(), time.Second); err == nil {
		_ = c.Close()
		t.Error("the primary still accepts after its last user closed")
	}
	if _, err := l2.Accept(); err == nil {
		t.Error("Accept on a closed listener succeeded")
	}
}

func TestConnectionsQueuedOnALaterSocketAreHandedOver(t *testing.T) {
	f := &fakePlatform{}
	r := newRegistry(f.platform(), time.Minute, 10*time.Millisecond)
	r.wrap(r.provision("config 1"), key, listen(t), zap.NewNop())
	client, server := net.Pipe()
	t.Cleanup(func() { _ = client.Close() })
	f.queued = []net.Conn{server}
	l2 := r.wrap(r.provision("config 2"), key, listen(t), zap.NewNop())
	c := expectConn(t, acceptAsync(l2), time.Second, "the newer server")
	if c.(*trackedConn).Conn != server {
		t.Errorf("the newer server got %v, want the connection queued on its own socket", c)
	}
}

func TestANewConfigurationStartsOnceOlderServersFreshConnectionsClosed(t *testing.T) {
	const settle = 400 * time.Millisecond
	tests := []struct {
		name       string
		closeAfter time.Duration // 0: never closed
		min, max   time.Duration
	}{
		{"answered and closed", 100 * time.Millisecond, 90 * time.Millisecond, settle - 50*time.Millisecond},
		{"still open", 0, settle - 50*time.Millisecond, settle + 300*time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry((&fakePlatform{}).platform(), time.Minute, settle)
			primary := listen(t)
			l1 := r.wrap(r.provision("config 1"), key, primary, zap.NewNop())
			dial(t, primary.Addr())
			c := expectConn(t, acceptAsync(l1), time.Second, "the older server")
			t.Cleanup(func() { _ = c.Close() })
			gen2 := r.provision("config 2")
			if tt.closeAfter > 0 {
				time.AfterFunc(tt.closeAfter, func() { _ = c.Close() })
			}
			start := time.Now()
			r.wrap(gen2, key, listen(t), zap.NewNop())
			if took := time.Since(start); took < tt.min || took > tt.max {
				t.Errorf("the newer configuration's wrap took %s, want between %s and %s", took, tt.min, tt.max)
			}
			// Tracking ends with the connection or after settle: memory
			// does not grow with connections held open.
			deadline := time.Now().Add(200 * time.Millisecond)
			for {
				r.mu.Lock()
				n := len(r.groups[key].fresh)
				r.mu.Unlock()
				if n == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d connections still tracked after settle", n)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestListenersPassThroughWithoutHandOver(t *testing.T) {
	tests := []struct {
		name string
		r    *registry
		gen  func(r *registry) *generation
	}{
		{"no platform support", newRegistry(nil, time.Minute, time.Second), func(r *registry) *generation { return r.provision("c") }},
		{"not provisioned", newRegistry((&fakePlatform{}).platform(), time.Minute, time.Second), func(*registry) *generation { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen(t)
			if got := tt.r.wrap(tt.gen(tt.r), key, ln, zap.NewNop()); got != ln {
				t.Errorf("wrap returned %T, want the listener itself", got)
			}
		})
	}
}

func TestGenerationsAreOnePerConfigurationAndEndWithTheirLastModule(t *testing.T) {
	r := newRegistry((&fakePlatform{}).platform(), time.Minute, time.Second)
	a, b := r.provision("config 1"), r.provision("config 1")
	if a != b || a.modules != 2 {
		t.Fatalf("two wrappers of one configuration: generations %p %p, modules %d", a, b, a.modules)
	}
	if c := r.provision("config 2"); c.n <= a.n {
		t.Errorf("a newer configuration's generation %d is not above %d", c.n, a.n)
	}
	r.cleanup(a)
	if len(r.gens) != 2 {
		t.Errorf("%d generations after one of two modules left, want 2", len(r.gens))
	}
	r.cleanup(a)
	if len(r.gens) != 1 {
		t.Errorf("%d generations after the last module left, want 1", len(r.gens))
	}
}

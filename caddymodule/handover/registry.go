package handover

import (
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// registry holds the process's generations (one per loaded configuration
// using the wrapper) and its groups (one per address, around the primary).
type registry struct {
	// platform is what the operating system offers; nil passes every
	// listener through.
	platform  *platform
	claimWait time.Duration
	// settle bounds how long a new configuration's start waits for the
	// connections older servers accepted to read their first request.
	settle time.Duration
	now    func() time.Time

	mu      sync.Mutex
	last    uint64 // the last generation number handed out
	gens    map[any]*generation
	groups  map[string]*group
	changed chan struct{} // closed and replaced at every change, to wake Accepts
}

// generation is one configuration, counted by its wrapper modules.
type generation struct {
	n           uint64
	modules     int
	provisioned time.Time
}

// group is one address: its primary socket, accepted once, and the wrapped
// listeners (one per configuration still using the address).
type group struct {
	key     string
	primary net.Listener
	users   map[*listener]struct{}
	queue   chan net.Conn
	// fresh holds the connections handed to a server, with when; each
	// leaves when it closes or registry.settle after it was handed over,
	// so at most the accept rate times settle are held.
	fresh   map[*trackedConn]time.Time
	closing chan struct{} // closed when the last user left
	done    chan struct{} // closed when the accept loop ended; err says why
	err     error
}

// platform holds the system calls the registry needs, so that tests can
// replace them.
type platform struct {
	// steer makes the kernel deliver every new connection for the
	// primary's address to the primary.
	steer func(net.Listener) error
	// drain accepts, without waiting, the connections already queued on a
	// later socket, which is about to be closed.
	drain func(net.Listener) []net.Conn
}

func newRegistry(p *platform, claimWait, settle time.Duration) *registry {
	return &registry{
		platform:  p,
		claimWait: claimWait,
		settle:    settle,
		now:       time.Now,
		gens:      map[any]*generation{},
		groups:    map[string]*group{},
		changed:   make(chan struct{}),
	}
}

// broadcast wakes every waiting Accept; r.mu is held.
func (r *registry) broadcast() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// provision counts one more wrapper module of the configuration cfg; the
// first one opens a new generation, newer than every other.
func (r *registry) provision(cfg any) *generation {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, ok := r.gens[cfg]
	if !ok {
		r.last++
		g = &generation{n: r.last, provisioned: r.now()}
		r.gens[cfg] = g
		r.broadcast()
	}
	g.modules++
	return g
}

// cleanup counts one wrapper module less; with the last one the generation
// ends, and listeners it left open (a configuration whose start failed
// half-way) are closed.
func (r *registry) cleanup(gen *generation) {
	r.mu.Lock()
	gen.modules--
	if gen.modules > 0 {
		r.mu.Unlock()
		return
	}
	for cfg, g := range r.gens {
		if g == gen {
			delete(r.gens, cfg)
		}
	}
	var left []*listener
	for _, grp := range r.groups {
		for l := range grp.users {
			if l.gen == gen {
				left = append(left, l)
			}
		}
	}
	r.broadcast()
	r.mu.Unlock()
	for _, l := range left {
		_ = l.Close()
	}
}

// wrap takes the socket Caddy bound for key. The first one becomes the
// primary; a later one is closed at once, after the connections the kernel
// already queued on it are taken over.
func (r *registry) wrap(gen *generation, key string, ln net.Listener, logger *zap.Logger) net.Listener {
	if gen == nil || r.platform == nil {
		return ln
	}
	r.mu.Lock()
	grp, ok := r.groups[key]
	if !ok {
		grp = &group{
			key:     key,
			primary: ln,
			users:   map[*listener]struct{}{},
			queue:   make(chan net.Conn, queueSize),
			fresh:   map[*trackedConn]time.Time{},
			closing: make(chan struct{}),
			done:    make(chan struct{}),
		}
		r.groups[key] = grp
		go grp.acceptLoop()
	}
	l := &listener{reg: r, grp: grp, gen: gen, closed: make(chan struct{})}
	grp.users[l] = struct{}{}
	r.broadcast()
	r.mu.Unlock()
	if !ok {
		// Without the steering program, a later socket receives its share
		// of new connections between Caddy's bind and the drain below
		// (microseconds); one arriving in the last instant before the
		// close is reset.
		if err := r.platform.steer(ln); err != nil {
			logger.Debug("reuseport steering unavailable: later sockets are drained before they close",
				zap.String("address", key), zap.Error(err))
		}
	} else {
		// Closing a non-primary socket never moves the primary out of
		// index 0 of the kernel's reuseport group: the kernel fills a
		// vacated slot with the last socket.
		queued := r.platform.drain(ln)
		_ = ln.Close()
		if len(queued) > 0 {
			// Not in Caddy's Start: the server that takes them only starts
			// serving after this wrap returns.
			go grp.enqueue(queued)
		}
		r.settleOlder(grp, gen)
	}
	logger.Debug("listener handed over",
		zap.String("address", key), zap.Uint64("generation", gen.n), zap.Bool("primary", !ok))
	return l
}

// settleOlder returns once no connection handed to an older generation's
// server is both open and younger than r.settle. Caddy stops the older
// servers after this configuration started, and Go's http.Server closes
// without an answer a connection whose first request it reads after its
// Shutdown began; older servers receive nothing new from now on, so this
// waits for the few they just accepted.
func (r *registry) settleOlder(grp *group, gen *generation) {
	for {
		r.mu.Lock()
		now := r.now()
		var wait time.Duration
		for c, at := range grp.fresh {
			if c.gen.n < gen.n {
				wait = max(wait, r.settle-now.Sub(at))
			}
		}
		r.mu.Unlock()
		if wait <= 0 {
			return
		}
		time.Sleep(min(wait, 5*time.Millisecond))
	}
}

// enqueue hands connections taken from a later socket to the group.
func (grp *group) enqueue(conns []net.Conn) {
	for _, c := range conns {
		select {
		case grp.queue <- c:
		case <-grp.closing:
			_ = c.Close()
		}
	}
}

// acceptLoop accepts on the primary for every generation until the last
// user left.
func (grp *group) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := grp.primary.Accept()
		if err != nil {
			select {
			case <-grp.closing:
			default:
				if !errors.Is(err, net.ErrClosed) {
					// Out of file descriptors and the like: wait and retry,
					// as net/http's Serve does.
					backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
					time.Sleep(backoff)
					continue
				}
			}
			grp.err = err
			close(grp.done)
			for {
				select {
				case c := <-grp.queue:
					_ = c.Close()
				default:
					return
				}
			}
		}
		backoff = 0
		select {
		case grp.queue <- c:
		case <-grp.closing:
			_ = c.Close()
		}
	}
}

// listener is one configuration's view of a group.
type listener struct {
	reg       *registry
	grp       *group
	gen       *generation
	closeOnce sync.Once
	closed    chan struct{}
}

// eligible says whether l may take connections now; when not, wait > 0 is
// when to look again (a newer generation's claim expires). r.mu is held.
func (r *registry) eligible(l *listener) (ok bool, wait time.Duration) {
	for u := range l.grp.users {
		if u.gen.n > l.gen.n {
			return false, 0
		}
	}
	now := r.now()
	for _, g := range r.gens {
		if g.n > l.gen.n {
			wait = max(wait, g.provisioned.Add(r.claimWait).Sub(now))
		}
	}
	return wait <= 0, wait
}

// Accept returns the next connection while l belongs to the newest
// generation using the address.
func (l *listener) Accept() (net.Conn, error) {
	r := l.reg
	for {
		r.mu.Lock()
		ok, wait := r.eligible(l)
		changed := r.changed
		r.mu.Unlock()
		var queue chan net.Conn
		if ok {
			queue = l.grp.queue
		}
		var timeout <-chan time.Time
		var timer *time.Timer
		if wait > 0 {
			timer = time.NewTimer(wait)
			timeout = timer.C
		}
		select {
		case c := <-queue:
			select {
			case <-l.closed:
				// Both were ready and select chose at random: the
				// connection goes to a listener still open.
				go l.grp.enqueue([]net.Conn{c})
				return nil, l.closedErr()
			default:
			}
			tc := &trackedConn{Conn: c, reg: r, grp: l.grp, gen: l.gen}
			r.mu.Lock()
			l.grp.fresh[tc] = r.now()
			r.mu.Unlock()
			tc.forget = time.AfterFunc(r.settle, tc.untrack)
			return tc, nil
		case <-changed:
		case <-timeout:
		case <-l.closed:
			return nil, l.closedErr()
		case <-l.grp.done:
			return nil, l.grp.err
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

func (l *listener) closedErr() error {
	return &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
}

// Close leaves the group; the last user closes the primary.
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		r := l.reg
		r.mu.Lock()
		delete(l.grp.users, l)
		last := len(l.grp.users) == 0
		if last && r.groups[l.grp.key] == l.grp {
			delete(r.groups, l.grp.key)
		}
		r.broadcast()
		r.mu.Unlock()
		if last {
			close(l.grp.closing)
			err = l.grp.primary.Close()
		}
	})
	return err
}

// Addr is the primary's address, the same for every generation.
func (l *listener) Addr() net.Addr { return l.grp.primary.Addr() }

// trackedConn is a connection handed to a server, followed until it closes
// or is older than registry.settle (see registry.settleOlder).
type trackedConn struct {
	net.Conn
	reg    *registry
	grp    *group
	gen    *generation
	forget *time.Timer
	once   sync.Once
}

func (c *trackedConn) untrack() {
	c.reg.mu.Lock()
	delete(c.grp.fresh, c)
	c.reg.mu.Unlock()
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.forget.Stop()
		c.untrack()
	})
	return c.Conn.Close()
}

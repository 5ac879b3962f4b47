package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/legacygate/legacygate/integration/manager"
)

const (
	// stormLate is how far behind its schedule a heartbeat may leave before
	// it counts as late (the generator could not keep up).
	stormLate = 10 * time.Millisecond
	// stormTimeout bounds one heartbeat, connection included.
	stormTimeout = 10 * time.Second
	// stormDialers is how many clients connect at once.
	stormDialers = 64
)

// stormConn is one keep-alive TLS connection of the generator.
type stormConn struct {
	addr string
	tls  *tls.Config
	conn *tls.Conn
	br   *bufio.Reader
}

// stormAnswer is what one heartbeat got.
type stormAnswer struct {
	status  int           // 0: transport error
	reason  string        // a rejection's Reason attribute
	retryOK bool          // a rejection carried a usable Retry-After
	latency time.Duration // from sending the request to the end of the answer
	late    time.Duration // how long after its schedule it was sent
}

// heartbeatRequest is a client's heartbeat: a ready-made HTTP/1.1 request
// of about 200 bytes.
func heartbeatRequest(addr, hostID string) []byte {
	return fmt.Appendf(nil, "GET /secars/secars.dll?action=index&hostid=%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: Smc\r\nAccept: */*\r\n\r\n", hostID, addr)
}

func (c *stormConn) connect() error {
	d := &net.Dialer{Timeout: stormTimeout}
	conn, err := tls.DialWithDialer(d, "tcp", c.addr, c.tls)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", c.addr, err)
	}
	c.conn, c.br = conn, bufio.NewReaderSize(conn, 2048)
	return nil
}

func (c *stormConn) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// heartbeat sends one heartbeat and reads the whole answer, reconnecting
// first if the last answer closed the connection.
func (c *stormConn) heartbeat(req []byte) stormAnswer {
	t0 := time.Now()
	if c.conn == nil {
		if err := c.connect(); err != nil {
			return stormAnswer{latency: time.Since(t0)}
		}
	}
	c.conn.SetDeadline(t0.Add(stormTimeout))
	a, err := c.exchange(req)
	a.latency = time.Since(t0)
	if err != nil {
		c.close()
		return stormAnswer{latency: a.latency}
	}
	return a
}

func (c *stormConn) exchange(req []byte) (stormAnswer, error) {
	if _, err := c.conn.Write(req); err != nil {
		return stormAnswer{}, err
	}
	h, err := readHead(c.br)
	if err != nil {
		return stormAnswer{}, err
	}
	a := stormAnswer{status: h.status}
	if h.status != http.StatusOK {
		body, err := c.br.Peek(min(h.length, c.br.Size()))
		if err != nil {
			return stormAnswer{}, fmt.Errorf("reading a %d answer's body: %w", h.status, err)
		}
		a.reason = busyReason(body)
		a.retryOK = h.retryAfter >= 1
	}
	if _, err := c.br.Discard(h.length); err != nil {
		return stormAnswer{}, fmt.Errorf("reading a %d answer's body: %w", h.status, err)
	}
	if h.close {
		c.close()
	}
	return a, nil
}

// head is what the storm needs of an answer's status line and header.
type head struct {
	status, length, retryAfter int
	close                      bool
}

// readHead reads an HTTP/1.1 answer's status line and header without
// allocating (the generator shares the box with the gateway, so it must
// stay light). The answer must carry a Content-Length, as every answer of
// the manager, Caddy and heartbeat_limit does.
func readHead(br *bufio.Reader) (head, error) {
	h := head{length: -1}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return h, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return h, fmt.Errorf("status line %q: not HTTP/1.x", line)
	}
	if h.status, err = strconv.Atoi(string(line[9:12])); err != nil || h.status < 100 {
		return h, fmt.Errorf("status line %q: no status code", line)
	}
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return h, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			h.length, err = strconv.Atoi(string(value))
		case bytes.EqualFold(name, []byte("Retry-After")):
			h.retryAfter, err = strconv.Atoi(string(value))
		case bytes.EqualFold(name, []byte("Connection")):
			h.close = bytes.EqualFold(value, []byte("close"))
		}
		if err != nil {
			return h, fmt.Errorf("header %q: %w", line, err)
		}
	}
	if h.length < 0 {
		return h, fmt.Errorf("a %d answer without a Content-Length of 0 or more", h.status)
	}
	return h, nil
}

// busyReason reads Reason="…" from the rejection body the storm's gateway
// is configured with (README's come-back-later index).
func busyReason(body []byte) string {
	_, rest, ok := bytes.Cut(body, []byte(`Reason="`))
	if !ok {
		return "none"
	}
	reason, _, _ := bytes.Cut(rest, []byte(`"`))
	for _, known := range []string{"global", "per_client", "fallback"} {
		if string(reason) == known {
			return known
		}
	}
	return "other"
}

// connectAll opens every connection, stormDialers at a time.
func connectAll(ctx context.Context, conns []*stormConn) error {
	work := make(chan *stormConn)
	errs := make(chan error, stormDialers)
	var wg sync.WaitGroup
	for range stormDialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				if err := c.connect(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for _, c := range conns {
		select {
		case work <- c:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// beat is one scheduled heartbeat.
type beat struct {
	req []byte
	at  time.Time
}

// storm runs an open loop for d while a connection is free: heartbeats
// leave on a fixed schedule, rate per second in total, taking the clients'
// requests in turn (client i at i/rate + k·len(reqs)/rate), each sent on
// whichever connection is free. A slow answer holds only its connection;
// when none is free, heartbeats queue (up to one per connection, then the
// schedule itself waits), and their lateness is recorded.
func storm(ctx context.Context, conns []*stormConn, reqs [][]byte, rate int, d time.Duration) []stormAnswer {
	beats := make(chan beat, len(conns))
	answers := make([][]stormAnswer, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range beats {
				if ctx.Err() != nil {
					continue // interrupted: drain without sending
				}
				late := max(0, time.Since(b.at))
				a := c.heartbeat(b.req)
				a.late = late
				answers[i] = append(answers[i], a)
			}
		}()
	}
	schedule(ctx, beats, reqs, rate, d)
	close(beats)
	wg.Wait()
	var all []stormAnswer
	for _, a := range answers {
		all = append(all, a...)
	}
	return all
}

// schedule hands out the heartbeats due, waking at most once a millisecond.
func schedule(ctx context.Context, beats chan<- beat, reqs [][]byte, rate int, d time.Duration) {
	start := time.Now()
	total := int(d.Seconds() * float64(rate))
	for k := 0; k < total && ctx.Err() == nil; k++ {
		at := start.Add(time.Duration(float64(k) / float64(rate) * float64(time.Second)))
		if wait := time.Until(at); wait > time.Millisecond {
			time.Sleep(wait)
		}
		select {
		case beats <- beat{req: reqs[k%len(reqs)], at: at}:
		case <-ctx.Done():
			return
		}
	}
}

// managerWatch samples the manager's heartbeat counter during a storm.
type managerWatch struct {
	done    chan struct{}
	stopped chan arrivals
}

// arrivals is the manager's heartbeat count over time.
type arrivals struct {
	at    []time.Time
	count []int64
}

const watchEvery = 20 * time.Millisecond

func watchManager(m *manager.Manager) *managerWatch {
	w := &managerWatch{done: make(chan struct{}), stopped: make(chan arrivals, 1)}
	go func() {
		var a arrivals
		tick := time.NewTicker(watchEvery)
		defer tick.Stop()
		for {
			a.at = append(a.at, time.Now())
			a.count = append(a.count, m.Requests(manager.CountIndex))
			select {
			case <-w.done:
				a.at = append(a.at, time.Now())
				a.count = append(a.count, m.Requests(manager.CountIndex))
				w.stopped <- a
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *managerWatch) stop() arrivals {
	close(w.done)
	return <-w.stopped
}

func (a arrivals) total() int64 {
	if len(a.count) == 0 {
		return 0
	}
	return a.count[len(a.count)-1] - a.count[0]
}

// busiestSecond is the most heartbeats counted between two samples at most
// one second apart.
func (a arrivals) busiestSecond() int64 {
	var worst int64
	j := 0
	for i := range a.at {
		for a.at[i].Sub(a.at[j]) > time.Second {
			j++
		}
		worst = max(worst, a.count[i]-a.count[j])
	}
	return worst
}

package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
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

// stormClient is one simulated client: its own keep-alive TLS connection
// and its heartbeat, a ready-made HTTP/1.1 request of about 200 bytes.
type stormClient struct {
	addr string
	tls  *tls.Config
	conn *tls.Conn
	br   *bufio.Reader
	req  []byte
}

// stormAnswer is what one heartbeat got.
type stormAnswer struct {
	status  int           // 0: transport error
	reason  string        // a rejection's Reason attribute
	retryOK bool          // a rejection carried a usable Retry-After
	latency time.Duration // from sending the request to the end of the answer
	late    time.Duration // how long after its schedule it was sent
}

func newStormClient(addr, hostID string, cfg *tls.Config) *stormClient {
	req := fmt.Appendf(nil, "GET /secars/secars.dll?action=index&hostid=%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: Smc\r\nAccept: */*\r\n\r\n", hostID, addr)
	return &stormClient{addr: addr, tls: cfg, req: req}
}

func (c *stormClient) connect() error {
	d := &net.Dialer{Timeout: stormTimeout}
	conn, err := tls.DialWithDialer(d, "tcp", c.addr, c.tls)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", c.addr, err)
	}
	c.conn, c.br = conn, bufio.NewReaderSize(conn, 2048)
	return nil
}

func (c *stormClient) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// heartbeat sends one heartbeat and reads the whole answer, reconnecting
// first if the last answer closed the connection.
func (c *stormClient) heartbeat() stormAnswer {
	t0 := time.Now()
	if c.conn == nil {
		if err := c.connect(); err != nil {
			return stormAnswer{latency: time.Since(t0)}
		}
	}
	c.conn.SetDeadline(t0.Add(stormTimeout))
	a, err := c.exchange()
	a.latency = time.Since(t0)
	if err != nil {
		c.close()
		return stormAnswer{latency: a.latency}
	}
	return a
}

func (c *stormClient) exchange() (stormAnswer, error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return stormAnswer{}, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return stormAnswer{}, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		return stormAnswer{}, err
	}
	if resp.Close {
		c.close()
	}
	a := stormAnswer{status: resp.StatusCode}
	if resp.StatusCode != http.StatusOK {
		a.reason = busyReason(body)
		n, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		a.retryOK = err == nil && n >= 1
	}
	return a, nil
}

// busyReason reads Reason="…" from the rejection body the storm's gateway
// is configured with (README's come-back-later index).
func busyReason(body []byte) string {
	_, rest, ok := bytes.Cut(body, []byte(`Reason="`))
	if !ok {
		return "none"
	}
	reason, _, _ := bytes.Cut(rest, []byte(`"`))
	return string(reason)
}

// connectAll connects every client, stormDialers at a time.
func connectAll(ctx context.Context, clients []*stormClient) error {
	work := make(chan *stormClient)
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
	for _, c := range clients {
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

// storm runs an open loop for d: together the clients offer rate
// heartbeats/s, client i at offsets i/rate + k·len(clients)/rate. A slow
// answer delays only its own client's next heartbeat; lateness is recorded.
func storm(ctx context.Context, clients []*stormClient, rate int, d time.Duration) []stormAnswer {
	period := time.Duration(float64(len(clients)) / float64(rate) * float64(time.Second))
	start := time.Now().Add(100 * time.Millisecond)
	end := start.Add(d)
	answers := make([][]stormAnswer, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := start.Add(time.Duration(float64(i) / float64(rate) * float64(time.Second)))
			answers[i] = c.run(ctx, first, period, end)
		}()
	}
	wg.Wait()
	var all []stormAnswer
	for _, a := range answers {
		all = append(all, a...)
	}
	return all
}

// run sends this client's heartbeats from first, every period, until end.
func (c *stormClient) run(ctx context.Context, first time.Time, period time.Duration, end time.Time) []stormAnswer {
	var out []stormAnswer
	for at := first; at.Before(end); at = at.Add(period) {
		select {
		case <-ctx.Done():
			return out
		case <-time.After(time.Until(at)):
		}
		late := max(0, time.Since(at))
		a := c.heartbeat()
		a.late = late
		out = append(out, a)
	}
	return out
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

package legacytls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
)

// Pool defaults: sized for a legacy manager (an old Apache or IIS serves a
// few dozen requests at once), so the gateway never opens more connections
// than the manager has threads, and keeps them all once opened.
const (
	DefaultMaxConns     = 64
	DefaultMaxConnWait  = 5 * time.Second
	DefaultIdleTimeout  = 50 * time.Second
	queueLengthPerConn  = 4
	poolExhaustedReason = "pool_exhausted"
)

// errPoolExhausted is why a request got no connection to the manager.
var errPoolExhausted = errors.New("legacy_tls: every connection to the manager is busy")

// pool bounds the requests in flight to the manager, and so its
// connections: each HTTP/1.1 request holds one connection from the moment
// it is sent until its response body is read or closed. Go's transport
// alone would let requests beyond MaxConnsPerHost wait without bound.
type pool struct {
	slots    chan struct{} // one token per request in flight
	queued   atomic.Int64  // requests waiting for a slot
	maxQueue int64
	wait     time.Duration

	active, idle, waiting prometheus.Gauge

	mu        sync.Mutex
	open      int // connections dialled and not yet closed
	inUse     int // slots held
	shownIdle int // this pool's share of the idle gauge
}

func newPool(maxConns int, wait time.Duration, gauges *prometheus.GaugeVec) *pool {
	return &pool{
		slots:    make(chan struct{}, maxConns),
		maxQueue: int64(queueLengthPerConn * maxConns),
		wait:     wait,
		active:   gauges.WithLabelValues("active"),
		idle:     gauges.WithLabelValues("idle"),
		waiting:  gauges.WithLabelValues("waiting"),
	}
}

// acquire takes a slot, waiting at most p.wait in a queue of at most
// p.maxQueue requests. It returns errPoolExhausted when neither is enough,
// or the context's error when the client gave up first.
func (p *pool) acquire(ctx context.Context) error {
	select {
	case p.slots <- struct{}{}:
		p.changed(+1, 0)
		return nil
	default:
	}
	if p.queued.Add(1) > p.maxQueue {
		p.queued.Add(-1)
		return errPoolExhausted
	}
	defer p.queued.Add(-1)
	p.waiting.Inc()
	defer p.waiting.Dec()
	timer := time.NewTimer(p.wait)
	defer timer.Stop()
	select {
	case p.slots <- struct{}{}:
		p.changed(+1, 0)
		return nil
	case <-timer.C:
		return errPoolExhausted
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (p *pool) release() {
	<-p.slots
	p.changed(-1, 0)
}

// changed updates the counts and the gauges; idle is what is open and not
// in use (an HTTP/2 connection serving several requests shows as none).
func (p *pool) changed(inUse, open int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inUse += inUse
	p.open += open
	p.active.Add(float64(inUse))
	idle := max(p.open-p.inUse, 0)
	p.idle.Add(float64(idle - p.shownIdle))
	p.shownIdle = idle
}

// countDials wraps a dial function so the pool knows its open connections.
func (p *pool) countDials(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		p.changed(0, +1)
		return &countedConn{Conn: c, pool: p}, nil
	}
}

// countedConn tells the pool once when it is closed.
type countedConn struct {
	net.Conn
	pool   *pool
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.pool.changed(0, -1)
	}
	return c.Conn.Close()
}

// releasingBody ends the request's wire and gives the slot back when the
// response body ends or is closed: only then does the connection become
// free for another request. A body that breaks off is logged here, once,
// at error level (see logBrokenBody).
type releasingBody struct {
	io.ReadCloser
	once sync.Once
	wire *wire
	l    *LegacyTLS
	req  *http.Request
}

func (b *releasingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.once.Do(func() { b.end(err) })
	}
	return n, err
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.release)
	return err
}

func (b *releasingBody) release() {
	b.wire.done()
	b.l.pool.release()
}

// end releases the request when its body's first error is read, and logs
// any error but the end of the body.
func (b *releasingBody) end(err error) {
	b.release()
	if err != io.EOF {
		b.l.logBrokenBody(b.req, err)
	}
}

// releasingUpgradeBody keeps the Write of a 101 response's body, which
// reverse_proxy needs to relay an upgraded connection.
type releasingUpgradeBody struct {
	*releasingBody
	w io.Writer
}

func (b releasingUpgradeBody) Write(p []byte) (int, error) { return b.w.Write(p) }

func (l *LegacyTLS) holdUntilBodyDone(req *http.Request, resp *http.Response, w *wire) {
	body := &releasingBody{ReadCloser: resp.Body, wire: w, l: l, req: req}
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = releasingUpgradeBody{releasingBody: body, w: rwc}
		return
	}
	resp.Body = body
}

// busyResponse answers in the manager's stead when the pool is exhausted.
// It is a response, not an error: reverse_proxy turns every transport error
// into a 502 or 504 unless it is a caddyhttp.HandlerError, and an error
// carries no header, so Retry-After could not reach the client that way.
func busyResponse(req *http.Request, retryAfter time.Duration) *http.Response {
	const body = "503 Service Unavailable: the manager is busy, try again later\n"
	return &http.Response{
		Status:     "503 Service Unavailable",
		StatusCode: http.StatusServiceUnavailable,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header: http.Header{
			"Retry-After":   {strconv.Itoa(retrySeconds(retryAfter))},
			"Content-Type":  {"text/plain; charset=utf-8"},
			"Cache-Control": {"no-store"},
		},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// retrySeconds is d in whole seconds, rounded up, at least 1.
func retrySeconds(d time.Duration) int {
	return max(int((d+time.Second-1)/time.Second), 1)
}

// provisionPool checks max_conns and max_conn_wait and sets the pool's
// defaults on Caddy's http transport before it is built: at most max_conns
// connections per manager, as many kept idle (unless keepalive options say
// otherwise), idle ones closed after DefaultIdleTimeout.
func (l *LegacyTLS) provisionPool(ctx caddy.Context) error {
	if l.MaxConns < 0 {
		return fmt.Errorf("legacy_tls: max_conns: %d is negative, want at least 1 (default %d)", l.MaxConns, DefaultMaxConns)
	}
	if l.MaxConnWait < 0 {
		return fmt.Errorf("legacy_tls: max_conn_wait: %s is negative", time.Duration(l.MaxConnWait))
	}
	if l.MaxConnsPerHost != 0 && l.MaxConnsPerHost != l.MaxConns {
		return fmt.Errorf("legacy_tls: max_conns_per_host (%d) differs from max_conns: set max_conns only, it also bounds the waiting requests", l.MaxConnsPerHost)
	}
	if l.MaxConns == 0 {
		l.MaxConns = DefaultMaxConns
	}
	if l.MaxConnWait == 0 {
		l.MaxConnWait = caddy.Duration(DefaultMaxConnWait)
	}
	l.MaxConnsPerHost = l.MaxConns
	if l.KeepAlive == nil {
		l.KeepAlive = new(reverseproxy.KeepAlive)
	}
	if l.KeepAlive.MaxIdleConnsPerHost == 0 {
		l.KeepAlive.MaxIdleConnsPerHost = l.MaxConns
	}
	if l.KeepAlive.IdleConnTimeout == 0 {
		l.KeepAlive.IdleConnTimeout = caddy.Duration(DefaultIdleTimeout)
	}
	gauges, err := metrics.Register(ctx.GetMetricsRegistry(), upstreamConnections)
	if err != nil {
		return fmt.Errorf("legacy_tls: %w", err)
	}
	l.pool = newPool(l.MaxConns, time.Duration(l.MaxConnWait), gauges)
	if l.abandonedLimit == 0 {
		l.abandonedLimit = abandonedLimit
	}
	return nil
}

// countConnections makes the built transport report its connections. A
// DialTLSContext (a server name with placeholders, or proxy_protocol) is
// left alone: Go needs its *tls.Conn unwrapped, so those connections are
// bounded but not shown as idle.
func (l *LegacyTLS) countConnections() {
	if l.Transport.DialContext != nil {
		l.Transport.DialContext = l.pool.countDials(l.Transport.DialContext)
	}
}

// failureReason names, for the log, why a request to the manager failed;
// "" for a client that gave up (reverse_proxy answers 499, not a 5xx).
func failureReason(err error) string {
	if _, ok := errors.AsType[*PinMismatchError](err); ok {
		return "pin_mismatch"
	}
	if _, ok := errors.AsType[reverseproxy.DialError](err); ok {
		// DialError hides the error it wraps; its text is all there is.
		switch msg := err.Error(); {
		case strings.Contains(msg, syscall.ECONNREFUSED.Error()):
			return "dial_refused"
		case strings.Contains(msg, "timeout"):
			return "dial_timeout"
		default:
			return "dial_failed"
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, errAbandoned) {
		return "" // the client left: not the manager's failure
	}
	if errors.Is(err, errRequestBody) {
		return "request_body"
	}
	if ne, ok := errors.AsType[net.Error](err); (ok && ne.Timeout()) || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	if _, ok := errors.AsType[tls.AlertError](err); ok {
		return "handshake"
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return "handshake"
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok || strings.Contains(err.Error(), "tls: ") {
		return "handshake"
	}
	return "upstream_error"
}

// logFailure writes the one error line of a failed request to the manager.
func (l *LegacyTLS) logFailure(req *http.Request, reason string, err error) {
	fields := failureFields(req, reason, err)
	if mismatch, ok := errors.AsType[*PinMismatchError](err); ok {
		fields = append(fields,
			zap.Strings("expected_pins", mismatch.Expected),
			zap.String("seen_pin", mismatch.Seen),
			zap.String("subject", mismatch.Subject),
			zap.String("tls_version", tls.VersionName(mismatch.Version)))
	}
	msg := "request to the manager failed"
	if reason == "pin_mismatch" {
		msg = "upstream certificate does not match any pin"
	}
	l.logger.Error(msg, fields...)
}

// logBrokenBody writes the one error line of a response the manager began
// and did not finish: the client gets a truncated answer, or a refusal
// from policy_guard, and reverse_proxy's own log lines are off in the
// shipped configuration (docs/modules/legacy_tls.md#logging). Nothing is
// logged when the client left or the body was closed on purpose.
func (l *LegacyTLS) logBrokenBody(req *http.Request, err error) {
	reason := failureReason(err)
	if reason == "" || errors.Is(err, errBodyClosed) {
		return
	}
	l.logger.Error("the manager's response broke off", failureFields(req, reason, err)...)
}

// failureFields are the fields of every failure line: why, where to, what.
func failureFields(req *http.Request, reason string, err error) []zap.Field {
	return []zap.Field{
		zap.String("reason", reason),
		zap.String("upstream", req.URL.Host),
		zap.String("method", req.Method),
		zap.String("path", req.URL.Path),
		zap.Error(err),
	}
}

// upstreamConnections shows the pool; declared once so it carries over
// reloads (see metrics.Register). Gauges of every legacy_tls transport add
// up: a reload's old and new pools both count until the old one drains.
var upstreamConnections = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Namespace: "legacygate",
	Subsystem: "upstream",
	Name:      "connections",
	Help:      "Connections of the legacy_tls transport to the manager: active (a request in flight), idle (kept for the next request), and requests waiting for one.",
}, []string{"state"})

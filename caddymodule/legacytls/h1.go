package legacytls

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// h1Client is the synchronous HTTP/1.1 client legacy_tls uses instead of
// Go's transport when it can (see usable): the request is written and its
// response read on the caller's goroutine, with no per-request hand-off
// to a connection's read and write loops. The connections are its own
// stack of idle *tls.Conn per upstream address; the pool's slots still
// bound them (a slot is held from before the connection is taken until
// the response body ends).
type h1Client struct {
	l                *LegacyTLS
	tlsConfig        *tls.Config
	proxy            func(*http.Request) (*url.URL, error)
	handshakeTimeout time.Duration
	headerTimeout    time.Duration
	idleTimeout      time.Duration
	maxIdle          int
	maxHeader        int64
	writeBuffer      int
	readBuffer       int
	gzip             bool // ask for gzip and decompress, as Go's transport does

	// h2 is set once a manager negotiated HTTP/2: from then on Go's
	// transport serves every request.
	h2 atomic.Bool

	mu     sync.Mutex
	idle   map[string][]*h1Conn
	closed bool
}

// errUseTransport tells RoundTrip that the fast path sent nothing and Go's
// transport must serve the request.
var errUseTransport = errors.New("legacy_tls: the manager speaks HTTP/2")

// newH1Client returns the fast path for l's provisioned transport, or nil
// when something it does not implement is configured.
func newH1Client(l *LegacyTLS) *h1Client {
	t := l.Transport
	if !canPeekSockets || t == nil || t.DialContext == nil || t.DialTLSContext != nil || t.DialTLS != nil || t.TLSClientConfig == nil ||
		t.DisableKeepAlives || l.ProxyProtocol != "" || t.Proxy == nil {
		return nil
	}
	c := &h1Client{
		l:                l,
		tlsConfig:        t.TLSClientConfig,
		proxy:            t.Proxy,
		handshakeTimeout: t.TLSHandshakeTimeout,
		headerTimeout:    t.ResponseHeaderTimeout,
		idleTimeout:      t.IdleConnTimeout,
		maxIdle:          t.MaxIdleConnsPerHost,
		maxHeader:        t.MaxResponseHeaderBytes,
		writeBuffer:      l.writeBufferSize(),
		readBuffer:       t.ReadBufferSize,
		gzip:             !t.DisableCompression,
		idle:             make(map[string][]*h1Conn),
	}
	if c.maxIdle <= 0 {
		c.maxIdle = http.DefaultMaxIdleConnsPerHost
	}
	if c.maxHeader <= 0 {
		c.maxHeader = 10 << 20 // Go's transport default
	}
	if c.readBuffer <= 0 {
		c.readBuffer = 4 << 10
	}
	return c
}

// usable reports whether req can take the fast path: HTTPS to the
// manager directly, nothing that needs Go's transport (100-continue, an
// upgrade, a forward proxy), and no manager seen speaking HTTP/2.
func (c *h1Client) usable(req *http.Request) bool {
	if c == nil || c.h2.Load() || req.URL.Scheme != "https" {
		return false
	}
	if req.Header.Get("Expect") != "" || req.Header.Get("Upgrade") != "" {
		return false
	}
	u, err := c.proxy(req)
	return u == nil && err == nil
}

// roundTrip sends req on an idle or new connection and reads the
// response headers, calling w's hooks (see onTheWire). The returned body puts the connection back when it
// reaches EOF and the response allows keep-alive, and closes it otherwise.
// A request is sent again, once, on a new connection only when the reused
// one proved unusable before any byte of it reached the socket (see
// attempt) and its body is in memory; nothing else is retried.
func (c *h1Client) roundTrip(req *http.Request, w *wire) (*http.Response, error) {
	ctx := req.Context()
	if err := validateRequest(req); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	addr := canonicalAddr(req)
	pc, err := c.get(ctx, addr)
	if errors.Is(err, errUseTransport) {
		return nil, err // nothing read or sent: Go's transport takes req as it is
	}
	if err != nil {
		if req.Body != nil {
			req.Body.Close() // a RoundTripper always closes it
		}
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	body, err := c.bufferBody(req)
	if err != nil {
		c.put(pc) // nothing was written on it
		return nil, err
	}
	replayable := req.Body == nil || req.Body == http.NoBody || body != nil
	trace := httptrace.ContextClientTrace(ctx)
	for retried := false; ; retried = true {
		resp, reason, err := c.attempt(pc, req, w, trace)
		if err == nil {
			return resp, nil
		}
		// A connection found closed before the write has not touched the
		// body, so even a streamed one can go on a new connection; a failed
		// write may have consumed part of it.
		if reason == "" || retried || w.err() != nil || (!replayable && reason != retryClosedBeforeWrite) {
			if req.Body != nil {
				req.Body.Close() // a RoundTripper always closes it
			}
			return nil, err
		}
		c.l.countRetry(req, reason, err)
		if body != nil {
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		if pc, err = c.dialConn(ctx, addr); err != nil {
			return nil, err // errUseTransport: the body is whole again for Go's transport
		}
	}
}

// attempt sends req on pc and reads the response headers. On failure it
// closes pc and names, as a retry reason, the proof that the manager got
// nothing: a reused connection found closed before the write, or a write
// that failed with no byte reaching the socket. trace is the caller's
// (reverse_proxy relays 1xx answers through it); the wire's own hooks are
// called directly.
func (c *h1Client) attempt(pc *h1Conn, req *http.Request, w *wire, trace *httptrace.ClientTrace) (*http.Response, string, error) {
	if trace != nil && trace.GotConn != nil {
		trace.GotConn(httptrace.GotConnInfo{Conn: pc.tc, Reused: pc.reused})
	}
	err := w.pace()
	if err == nil {
		err = w.err()
	}
	if err != nil {
		return giveUp(pc, req, err) // the client left, or pacing failed
	}
	// Checked after pacing, right before the write: the manager may have
	// closed the connection while the request waited.
	if pc.reused && !pc.alive() {
		pc.close()
		return nil, retryClosedBeforeWrite, errors.New("legacy_tls: the manager closed the idle connection")
	}
	if err := w.attach(pc.interrupt); err != nil {
		return giveUp(pc, req, err)
	}
	addGzip := c.gzip && req.Method != http.MethodHead &&
		req.Header.Get("Accept-Encoding") == "" && req.Header.Get("Range") == ""
	if addGzip {
		req.Header["Accept-Encoding"] = []string{"gzip"}
	}
	written := pc.cw.written
	err = req.Write(pc.bw)
	if err == nil {
		err = pc.bw.Flush()
	}
	if addGzip {
		delete(req.Header, "Accept-Encoding")
	}
	w.wrote()
	if trace != nil && trace.WroteRequest != nil {
		trace.WroteRequest(httptrace.WroteRequestInfo{Err: err})
	}
	if err != nil {
		w.detach()
		pc.close()
		reason := ""
		if pc.reused && pc.cw.written == written && !errors.Is(err, errRequestBody) {
			reason = retryNothingWritten
		}
		return nil, reason, failure(w, fmt.Errorf("legacy_tls: writing the request: %w", err))
	}
	resp, err := c.readResponse(pc, req, w, trace)
	if err != nil {
		w.detach()
		pc.close()
		return nil, "", failure(w, err)
	}
	resp.TLS = pc.state
	keep := !resp.Close && !req.Close
	if addGzip && resp.Header.Get("Content-Encoding") == "gzip" {
		resp.Header.Del("Content-Encoding")
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
		resp.Uncompressed = true
		resp.Body = &gzipBody{body: newH1Body(resp.Body, pc, w, keep)}
		return resp, "", nil
	}
	if resp.Body == http.NoBody {
		pc.finish(w, keep)
		return resp, "", nil
	}
	resp.Body = newH1Body(resp.Body, pc, w, keep)
	return resp, "", nil
}

// giveUp ends an attempt that sent nothing and is not retried: pc and the
// request body are closed.
func giveUp(pc *h1Conn, req *http.Request, err error) (*http.Response, string, error) {
	pc.close()
	if req.Body != nil {
		req.Body.Close()
	}
	return nil, "", err
}

// validateRequest refuses, before any connection is taken, what Go's
// transport refuses before sending: a method that is not a token and a
// header or trailer field name or value that could split or smuggle a
// header line. Values are not quoted in the error: they may be secrets.
func validateRequest(req *http.Request) error {
	if req.Method != "" && strings.IndexFunc(req.Method, func(r rune) bool { return !httpguts.IsTokenRune(r) }) >= 0 {
		return fmt.Errorf("legacy_tls: invalid method %q", req.Method)
	}
	for _, h := range []struct {
		kind   string
		fields http.Header
	}{{"header", req.Header}, {"trailer", req.Trailer}} {
		for name, values := range h.fields {
			if !httpguts.ValidHeaderFieldName(name) {
				return fmt.Errorf("legacy_tls: invalid %s field name %q", h.kind, name)
			}
			for _, v := range values {
				if !httpguts.ValidHeaderFieldValue(v) {
					return fmt.Errorf("legacy_tls: invalid %s field value for %q", h.kind, name)
				}
			}
		}
	}
	return nil
}

// bufferBody reads a small body of known length whole, so that headers
// and body leave in one write (Request.Write flushes the headers on their
// own before a body it cannot tell is in memory). As in coalesceBody, it
// is read only once a connection is ready, and a body that cannot be read
// fails the request with nothing sent.
func (c *h1Client) bufferBody(req *http.Request) ([]byte, error) {
	if !fitsOneWrite(req, c.writeBuffer) {
		return nil, nil
	}
	buf := make([]byte, req.ContentLength)
	_, err := io.ReadFull(req.Body, buf)
	req.Body.Close()
	if err != nil {
		req.Body = nil
		return nil, fmt.Errorf("%w: %w", errRequestBody, err)
	}
	req.Body = io.NopCloser(bytes.NewReader(buf))
	return buf, nil
}

// readResponse reads the response headers within response_header_timeout,
// skipping informational responses (handed to Got1xxResponse, which
// reverse_proxy uses to relay 103 Early Hints).
func (c *h1Client) readResponse(pc *h1Conn, req *http.Request, w *wire, trace *httptrace.ClientTrace) (*http.Response, error) {
	if c.headerTimeout > 0 {
		if err := pc.tc.SetReadDeadline(time.Now().Add(c.headerTimeout)); err != nil {
			return nil, err
		}
	}
	for {
		pc.src.limit = c.maxHeader
		resp, err := http.ReadResponse(pc.br, req)
		exhausted := pc.src.limit == 0
		pc.src.limit = -1
		if err != nil {
			if exhausted {
				return nil, fmt.Errorf("legacy_tls: the manager's response headers exceed %d bytes", c.maxHeader)
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				// reverse_proxy answers 504 only for a net.Error itself.
				return nil, timeoutError{"response headers", err}
			}
			return nil, fmt.Errorf("legacy_tls: reading the response: %w", err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			resp.Body.Close()
			return nil, errors.New("legacy_tls: the manager switched protocols on a request that did not ask for it")
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
					return nil, err
				}
			}
			continue
		}
		if c.headerTimeout > 0 {
			if err := pc.tc.SetReadDeadline(time.Time{}); err != nil {
				resp.Body.Close()
				return nil, err
			}
			if err := w.err(); err != nil {
				// interrupt's deadline may have just been cleared
				resp.Body.Close()
				return nil, err
			}
		}
		return resp, nil
	}
}

// get returns the most recently used idle connection to addr that has not
// aged out, or dials one. Whether the manager closed it is checked in
// attempt, right before the write.
func (c *h1Client) get(ctx context.Context, addr string) (*h1Conn, error) {
	for {
		c.mu.Lock()
		stack := c.idle[addr]
		if len(stack) == 0 {
			c.mu.Unlock()
			break
		}
		pc := stack[len(stack)-1]
		stack[len(stack)-1] = nil
		c.idle[addr] = stack[:len(stack)-1]
		stale := c.idleTimeout > 0 && time.Since(pc.idleAt) > c.idleTimeout
		c.mu.Unlock()
		if pc.idleTimer != nil {
			pc.idleTimer.Stop()
		}
		if stale {
			pc.close()
			continue
		}
		return pc, nil
	}
	return c.dialConn(ctx, addr)
}

// dialConn dials addr with the provisioned dialer (which counts the
// connection in the pool) and does the TLS handshake, in which the pin is
// checked. A manager that picks HTTP/2 gets Go's transport instead.
func (c *h1Client) dialConn(ctx context.Context, addr string) (*h1Conn, error) {
	raw, err := c.l.Transport.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	cw := &countingConn{Conn: raw}
	cfg := c.tlsConfig.Clone()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg.ServerName = host
	}
	tc := tls.Client(cw, cfg)
	hctx := ctx
	if c.handshakeTimeout > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, c.handshakeTimeout)
		defer cancel()
	}
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		if ctx.Err() == nil && errors.Is(hctx.Err(), context.DeadlineExceeded) {
			// reverse_proxy answers 504 only for a net.Error itself, as
			// for Go's transport's "TLS handshake timeout".
			return nil, timeoutError{"TLS handshake", err}
		}
		return nil, err
	}
	state := tc.ConnectionState()
	if state.NegotiatedProtocol == "h2" {
		c.h2.Store(true)
		tc.Close()
		return nil, errUseTransport
	}
	pc := &h1Conn{c: c, addr: addr, tc: tc, cw: cw, raw: syscallConn(raw), state: &state}
	pc.src.tc, pc.src.limit = tc, -1
	pc.br = bufio.NewReaderSize(&pc.src, c.readBuffer)
	pc.bw = bufio.NewWriterSize(tc, c.writeBuffer)
	return pc, nil
}

// put keeps pc for the next request, unless enough are idle already. A
// connection left idle for the idle timeout is closed by its timer (see
// expire), traffic or not, so neither the pool's idle gauge nor the
// manager keeps stale ones.
func (c *h1Client) put(pc *h1Conn) {
	c.mu.Lock()
	stack := c.idle[pc.addr]
	if c.closed || len(stack) >= c.maxIdle {
		c.mu.Unlock()
		pc.close()
		return
	}
	pc.reused = true
	pc.idleAt = time.Now()
	c.idle[pc.addr] = append(stack, pc)
	if c.idleTimeout > 0 {
		if pc.idleTimer == nil {
			pc.idleTimer = time.AfterFunc(c.idleTimeout, func() { c.expire(pc) })
		} else {
			pc.idleTimer.Reset(c.idleTimeout)
		}
	}
	c.mu.Unlock()
}

// expire closes pc if it is still idle and has been for the idle timeout.
// A timer that fired as get took pc, or for an earlier idle spell, finds
// it in use or idle since more recently, and leaves it alone.
func (c *h1Client) expire(pc *h1Conn) {
	c.mu.Lock()
	stack := c.idle[pc.addr]
	i := slices.Index(stack, pc)
	if i < 0 || time.Since(pc.idleAt) < c.idleTimeout {
		c.mu.Unlock()
		return
	}
	c.idle[pc.addr] = slices.Delete(stack, i, i+1)
	c.mu.Unlock()
	pc.close()
}

// closeIdle closes every idle connection, for good: the transport is
// being cleaned up.
func (c *h1Client) closeIdle() {
	c.mu.Lock()
	c.closed = true
	idle := c.idle
	c.idle = nil
	c.mu.Unlock()
	for _, stack := range idle {
		for _, pc := range stack {
			if pc.idleTimer != nil {
				pc.idleTimer.Stop()
			}
			pc.close()
		}
	}
}

// h1Conn is one connection of the fast path.
type h1Conn struct {
	c      *h1Client
	addr   string
	tc     *tls.Conn
	cw     *countingConn
	raw    syscall.RawConn // for alive; nil when the dialer's conn has none
	state  *tls.ConnectionState
	src    limitedReader
	br     *bufio.Reader
	bw     *bufio.Writer
	reused bool
	// idleAt and idleTimer are guarded by h1Client.mu while pc is idle.
	idleAt    time.Time
	idleTimer *time.Timer
}

func (pc *h1Conn) close() { pc.tc.Close() }

// interrupt unblocks a write or read in progress when the request's
// context ends (the client left before the write, or the abandoned limit
// passed); the connection is then closed, never reused.
func (pc *h1Conn) interrupt() { pc.tc.NetConn().SetDeadline(time.Unix(1, 0)) }

// failure is err, or why the wire was cut if it was.
func failure(w *wire, err error) error {
	if cut := w.err(); cut != nil {
		return cut
	}
	return err
}

// finish ends a response: the connection goes back to the stack when the
// response allows it and the wire did not interrupt it.
func (pc *h1Conn) finish(w *wire, keep bool) {
	if w.detach() && keep {
		pc.c.put(pc)
		return
	}
	pc.close()
}

// alive reports whether the manager left an idle connection open and
// silent: a non-blocking peek at the socket must find nothing to read. A
// FIN, a reset, a TLS alert or stray bytes all make it unusable, so a POST
// is never written to a connection the manager already closed.
func (pc *h1Conn) alive() bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	if pc.raw == nil {
		return pc.aliveByDeadline()
	}
	var open bool
	err := pc.raw.Read(func(fd uintptr) bool {
		open = peekWouldBlock(fd)
		return true
	})
	return err == nil && open
}

// aliveByDeadline is alive for a connection whose socket cannot be
// reached (a dialer wrapping it in a type of its own): a read that must
// time out within aliveWait. The deadline lies ahead so that the read is
// really tried (Go fails a read whose deadline already passed without
// reading), and a close_notify, FIN or reset already received is seen.
func (pc *h1Conn) aliveByDeadline() bool {
	if err := pc.tc.SetReadDeadline(time.Now().Add(aliveWait)); err != nil {
		return false
	}
	var b [1]byte
	n, err := pc.tc.Read(b[:])
	ne, timeout := errors.AsType[net.Error](err)
	if n > 0 || !timeout || !ne.Timeout() {
		return false
	}
	return pc.tc.SetReadDeadline(time.Time{}) == nil
}

// aliveWait is how long aliveByDeadline waits for an idle connection to
// show that it was closed.
const aliveWait = 2 * time.Millisecond

// timeoutError is a manager that did not answer in time (what names
// what it did not finish), as a net.Error: reverse_proxy does not unwrap
// errors to find one.
type timeoutError struct {
	what string
	err  error
}

func (e timeoutError) Error() string {
	return "legacy_tls: timeout awaiting " + e.what + ": " + e.err.Error()
}
func (e timeoutError) Unwrap() error   { return e.err }
func (e timeoutError) Timeout() bool   { return true }
func (e timeoutError) Temporary() bool { return true }

// countingConn counts the bytes that reached the socket, so a failed write
// can prove that nothing did.
type countingConn struct {
	net.Conn
	written int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written += int64(n)
	return n, err
}

// syscallConn finds the socket under the dialer's wrappers.
func syscallConn(c net.Conn) syscall.RawConn {
	for {
		switch v := c.(type) {
		case *countedConn:
			c = v.Conn
			continue
		case syscall.Conn:
			rc, err := v.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		}
		return nil
	}
}

// limitedReader reads the TLS connection, at most limit bytes while
// limit is not negative (the response headers' bound).
type limitedReader struct {
	tc    *tls.Conn
	limit int64
}

func (r *limitedReader) Read(p []byte) (int, error) {
	if r.limit == 0 {
		return 0, errors.New("legacy_tls: response headers too large")
	}
	if r.limit > 0 && int64(len(p)) > r.limit {
		p = p[:r.limit]
	}
	n, err := r.tc.Read(p)
	if r.limit > 0 {
		r.limit -= int64(n)
	}
	return n, err
}

// h1Body is a fast-path response body: at EOF its connection is reused.
// Close may be called while a Read is in progress on another goroutine
// (reverse_proxy closes the body when its client goes away), as Go's
// transport allows: Close closes the connection, which ends that Read,
// and whichever of the two ends the body first decides the connection's
// fate, once.
type h1Body struct {
	body  io.ReadCloser // read only by Read
	pc    *h1Conn
	w     *wire
	keep  bool
	state atomic.Int32 // bodyOpen, then bodyEOF or bodyClosed
}

const (
	bodyOpen int32 = iota
	bodyEOF
	bodyClosed
)

// errBodyClosed is a Read after, or during, Close (Go's transport says
// "http: read on closed response body").
var errBodyClosed = errors.New("legacy_tls: read on a closed response body")

func newH1Body(body io.ReadCloser, pc *h1Conn, w *wire, keep bool) *h1Body {
	return &h1Body{body: body, pc: pc, w: w, keep: keep}
}

func (b *h1Body) Read(p []byte) (int, error) {
	switch b.state.Load() {
	case bodyEOF:
		return 0, io.EOF
	case bodyClosed:
		return 0, errBodyClosed
	}
	n, err := b.body.Read(p)
	if err == nil {
		return n, nil
	}
	if !b.state.CompareAndSwap(bodyOpen, terminal(err)) {
		return n, errBodyClosed // Close ended the body while this Read ran
	}
	if err == io.EOF {
		b.pc.finish(b.w, b.keep)
		return n, io.EOF
	}
	b.w.detach()
	b.pc.close()
	return n, failure(b.w, err)
}

// terminal is the state a Read that returned err leaves the body in.
func terminal(err error) int32 {
	if err == io.EOF {
		return bodyEOF
	}
	return bodyClosed
}

func (b *h1Body) Close() error {
	if b.state.CompareAndSwap(bodyOpen, bodyClosed) {
		b.w.detach()
		b.pc.close() // the rest of the body is unread; a Read in progress ends
	}
	return nil
}

// gzipBody decompresses a body Go's transport would have decompressed.
// Its Close touches only the h1Body, so it may run during a Read.
type gzipBody struct {
	body *h1Body
	zr   *gzip.Reader
	err  error
}

func (g *gzipBody) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.zr == nil {
		g.zr, g.err = gzip.NewReader(g.body)
		if g.err != nil {
			return 0, g.err
		}
	}
	return g.zr.Read(p)
}

func (g *gzipBody) Close() error { return g.body.Close() }

// canonicalAddr is req's host:port, port 443 when none is given.
func canonicalAddr(req *http.Request) string {
	host := req.URL.Host
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	return net.JoinHostPort(host, "443")
}

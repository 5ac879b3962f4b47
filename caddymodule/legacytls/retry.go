package legacytls

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Why a request was sent a second time (legacygate_upstream_retries_total).
const (
	// Go's transport failed to write the request to a reused connection
	// with zero bytes written, and sent it again through GetBody.
	retryNothingWritten = "nothing_written"
	// The reused connection was closed (the manager hung up while it was
	// idle) before the transport began writing the request.
	retryClosedBeforeWrite = "closed_before_write"
)

var (
	errRetriedOnce = errors.New("legacy_tls: the manager closed a second reused connection before the request was written; not retried again")
	errNotBuffered = errors.New("legacy_tls: the request body was not buffered, it cannot be sent again")
)

// retryUnsent sends a buffered request once more, on another connection,
// when the first attempt failed on a reused connection before the
// transport began writing it: neither WroteHeaders nor WroteRequest fired
// (the request is written, if at all, before the transport returns). That
// is the manager closing an idle connection just as it was handed out; the
// manager cannot have seen any byte of the request, whatever its method.
//
// The other safe case, a write that failed with zero bytes written, Go's
// transport retries itself through GetBody (set by coalesceBody), counted
// here. Nothing else is retried: a request that may have reached the
// manager (written, then the connection closed without an answer) fails,
// because the manager may have acted on it (a log upload stored twice).
// GetBody is not set for requests Go would replay after writing them (GET,
// HEAD, OPTIONS, TRACE, or an Idempotency-Key header) and refuses after the
// first retry, so a request is sent at most twice. Over HTTP/2 only Go's
// own retries apply (streams the manager refused or never received).
func (l *LegacyTLS) retryUnsent(out *http.Request, body *bufferedBody, resp *http.Response, err error) (*http.Response, error) {
	conns, unsent := body.attempts()
	if conns > 1 {
		l.countRetry(out, retryNothingWritten, err)
		return resp, err
	}
	if err == nil || resp != nil || !unsent || out.Context().Err() != nil {
		return resp, err
	}
	again, gerr := body.getBody()
	if gerr != nil {
		return resp, err
	}
	l.countRetry(out, retryClosedBeforeWrite, err)
	retry := out.WithContext(out.Context())
	retry.Body = again
	return l.HTTPTransport.RoundTrip(retry)
}

// countRetry counts a retry and logs it at debug level: the request may
// still succeed, and a failure is logged at error level by RoundTrip.
func (l *LegacyTLS) countRetry(req *http.Request, reason string, err error) {
	l.retries.WithLabelValues(reason).Inc()
	fields := []zap.Field{
		zap.String("reason", reason),
		zap.String("upstream", req.URL.Host),
		zap.String("method", req.Method),
		zap.String("path", req.URL.Path),
	}
	if err != nil {
		fields = append(fields, zap.NamedError("first_error", err))
	}
	l.logger.Debug("request sent again on a new connection: the manager received none of it", fields...)
}

// isHTTP2 reports whether c speaks HTTP/2. Its streams are written from
// another goroutine, so the trace callbacks cannot prove that nothing was
// sent; Go's HTTP/2 transport retries by its own rules instead.
func isHTTP2(c net.Conn) bool {
	tc, ok := c.(interface{ ConnectionState() tls.ConnectionState })
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}

// goReplaysAfterWriting reports whether Go's transport would resend req
// with a GetBody after writing it (net/http's Request.isReplayable).
func goReplaysAfterWriting(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// wroteSomething records that the transport began writing the request on
// the current connection (headers written to its buffer or further).
func (b *bufferedBody) wroteSomething() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.wrote = true
}

// attempts returns how many connections the request was given, and whether
// the last one was reused, the body buffered and nothing written on it.
func (b *bufferedBody) attempts() (conns int, unsent bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns, b.reused && !b.wrote && b.data != nil
}

// getBody is the request's GetBody: the buffered body again, for the first
// retry only.
func (b *bufferedBody) getBody() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.data == nil {
		return nil, errNotBuffered
	}
	if b.conns > 1 {
		return nil, errRetriedOnce
	}
	return io.NopCloser(bytes.NewReader(b.data)), nil
}

// upstreamRetries counts requests sent a second time; declared once so
// counts carry over reloads (see metrics.Register).
var upstreamRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "legacygate",
	Subsystem: "upstream",
	Name:      "retries_total",
	Help:      "Requests the legacy_tls transport sent again on a new connection because the manager had closed the reused one before any byte was written, by reason.",
}, []string{"reason"})

package legacytls

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/internal/pacer"
)

// abandonedLimit is how long a request whose client left after it was
// written may still run for its answer to be read.
const abandonedLimit = 10 * time.Second

var errAbandoned = errors.New("legacy_tls: the client left and the manager did not answer in time")

// atTheWire gives req the context it has between the gateway and the
// manager, with one trace for the two things decided there.
//
// Pacing: if heartbeat_limit handed the request a pacer (global_rate), the
// request waits for it once the transport holds a connection to the manager
// and before it writes: the spacing is then what the manager sees, whatever
// stalled the request earlier in the gateway. The wait happens after a
// buffered body was read (coalesceBody's hook runs first), so nothing but
// the write follows it.
//
// The client leaving: until the request is written, the client's departure
// cancels it and nothing reaches the manager; a client that leaves while
// paced also has its HTTP/1 connection closed before anything is written,
// so the transport fails it with nothing sent instead of racing the
// cancellation with the write (an HTTP/2 connection is shared and left
// open; the cancelled stream is reset). Once the request is written, the
// manager does the work whatever the client does; cancelling then would
// only make Go's transport close the connection, and the next request pay
// the manager a TLS handshake. Agents that give up during a storm (SEP
// abandons a session after 30 s) would turn the manager's slowness into
// more handshakes for it. So the answer is still read, within limit of the
// client leaving, and the connection goes back to the pool.
//
// The returned wire's done must be called once the response body is
// closed, or the request failed. The HTTP/1.1 client takes a wire from
// onTheWire instead, and calls its hooks itself.
func atTheWire(req *http.Request, limit time.Duration) (*http.Request, *wire) {
	w := newWire(req, limit)
	w.ctx, w.cancel = context.WithCancelCause(context.WithoutCancel(w.parent))
	w.trace.WroteRequest = w.wroteRequest
	if w.pacer != nil {
		w.trace.GotConn = w.gotConn
	}
	w.stop = context.AfterFunc(w.parent, w.clientLeft)
	return req.WithContext(httptrace.WithClientTrace(w.ctx, &w.trace)), w
}

// onTheWire is atTheWire for the HTTP/1.1 client, which needs neither a
// context nor a trace: it paces with pace, marks the write with wrote,
// hands the connection it writes on to attach, and asks err why the wire
// was cut. Cutting interrupts that connection.
func onTheWire(req *http.Request, limit time.Duration) *wire {
	w := newWire(req, limit)
	w.stop = context.AfterFunc(w.parent, w.clientLeft)
	return w
}

func newWire(req *http.Request, limit time.Duration) *wire {
	w := &wire{parent: req.Context(), limit: limit}
	w.pacer, _ = caddyhttp.GetVar(w.parent, pacer.VarKey).(*pacer.Pacer)
	return w
}

// wire is one request's state between the gateway and the manager, in one
// allocation: the transport calls its hooks, the parent context its
// clientLeft.
type wire struct {
	parent  context.Context // the client's
	stop    func() bool     // unregisters clientLeft
	pacer   *pacer.Pacer
	limit   time.Duration
	written atomic.Bool

	// Go's transport: its context, cancelled when the wire is cut.
	ctx    context.Context // the parent's values, its own cancellation
	cancel context.CancelCauseFunc
	trace  httptrace.ClientTrace

	mu        sync.Mutex
	timer     *time.Timer // set once the client left after the write
	cause     error       // the HTTP/1.1 client: why the wire was cut
	interrupt func()      // the HTTP/1.1 client: cuts the connection in use
}

func (w *wire) wroteRequest(httptrace.WroteRequestInfo) { w.wrote() }

func (w *wire) gotConn(info httptrace.GotConnInfo) {
	if err := w.pacer.Wait(w.ctx); err != nil {
		w.cancel(err)
		if !isHTTP2(info.Conn) {
			info.Conn.Close()
		}
	}
}

func (w *wire) clientLeft() {
	if !w.written.Load() {
		w.cut(context.Cause(w.parent))
		return
	}
	w.mu.Lock()
	w.timer = time.AfterFunc(w.limit, w.abandon)
	w.mu.Unlock()
}

func (w *wire) abandon() { w.cut(errAbandoned) }

// cut ends the request with err: Go's transport sees its context
// cancelled, the HTTP/1.1 client its connection interrupted.
func (w *wire) cut(err error) {
	if w.cancel != nil {
		w.cancel(err)
		return
	}
	w.mu.Lock()
	if w.cause == nil {
		w.cause = err
	}
	interrupt := w.interrupt
	w.mu.Unlock()
	if interrupt != nil {
		interrupt()
	}
}

// pace waits for the request's turn at the manager, if heartbeat_limit
// handed it a pacer.
func (w *wire) pace() error {
	if w.pacer == nil {
		return nil
	}
	return w.pacer.Wait(w.parent)
}

// wrote marks the request written: from now on the client leaving no
// longer cuts it at once (see clientLeft).
func (w *wire) wrote() { w.written.Store(true) }

// err is why the wire was cut, nil while it is not. A client that left
// before the write counts at once, before clientLeft has run.
func (w *wire) err() error {
	w.mu.Lock()
	err := w.cause
	w.mu.Unlock()
	if err == nil && !w.written.Load() && w.parent.Err() != nil {
		err = context.Cause(w.parent)
	}
	return err
}

// attach makes interrupt the way to cut the wire, unless it is cut
// already: then it returns why.
func (w *wire) attach(interrupt func()) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cause != nil {
		return w.cause
	}
	w.interrupt = interrupt
	return nil
}

// detach forgets the connection attach was given, and reports whether it
// is intact: not interrupted, so it may serve another request.
func (w *wire) detach() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.interrupt = nil
	return w.cause == nil
}

func (w *wire) done() {
	w.stop()
	w.mu.Lock()
	if w.timer != nil {
		w.timer.Stop()
	}
	w.mu.Unlock()
	if w.cancel != nil {
		w.cancel(context.Canceled)
	}
}

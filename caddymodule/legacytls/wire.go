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
// closed, or the request failed.
func atTheWire(req *http.Request, limit time.Duration) (*http.Request, *wire) {
	w := &wire{parent: req.Context(), limit: limit}
	w.ctx, w.cancel = context.WithCancelCause(context.WithoutCancel(w.parent))
	w.stop = context.AfterFunc(w.parent, w.clientLeft)
	w.trace.WroteRequest = w.wroteRequest
	if p, _ := caddyhttp.GetVar(w.parent, pacer.VarKey).(*pacer.Pacer); p != nil {
		w.pacer = p
		w.trace.GotConn = w.gotConn
	}
	return req.WithContext(httptrace.WithClientTrace(w.ctx, &w.trace)), w
}

// wire is one request's state between the gateway and the manager, in one
// allocation: the transport calls its hooks, the parent context its
// clientLeft.
type wire struct {
	parent  context.Context // the client's
	ctx     context.Context // the transport's: the parent's values, its own cancellation
	cancel  context.CancelCauseFunc
	stop    func() bool // unregisters clientLeft
	pacer   *pacer.Pacer
	limit   time.Duration
	trace   httptrace.ClientTrace
	written atomic.Bool

	mu    sync.Mutex
	timer *time.Timer // set once the client left after the write
}

func (w *wire) wroteRequest(httptrace.WroteRequestInfo) { w.written.Store(true) }

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
		w.cancel(context.Cause(w.parent))
		return
	}
	w.mu.Lock()
	w.timer = time.AfterFunc(w.limit, w.abandon)
	w.mu.Unlock()
}

func (w *wire) abandon() { w.cancel(errAbandoned) }

func (w *wire) done() {
	w.stop()
	w.mu.Lock()
	if w.timer != nil {
		w.timer.Stop()
	}
	w.mu.Unlock()
	w.cancel(context.Canceled)
}

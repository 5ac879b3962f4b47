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
// done must be called once the response body is closed, or the request
// failed.
func atTheWire(req *http.Request, limit time.Duration) (out *http.Request, done func()) {
	parent := req.Context()
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	var written atomic.Bool
	var mu sync.Mutex
	var timer *time.Timer
	stop := context.AfterFunc(parent, func() {
		if !written.Load() {
			cancel(context.Cause(parent))
			return
		}
		mu.Lock()
		timer = time.AfterFunc(limit, func() { cancel(errAbandoned) })
		mu.Unlock()
	})
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { written.Store(true) }}
	if p, _ := caddyhttp.GetVar(parent, pacer.VarKey).(*pacer.Pacer); p != nil {
		trace.GotConn = func(info httptrace.GotConnInfo) {
			if err := p.Wait(ctx); err != nil {
				cancel(err)
				if !isHTTP2(info.Conn) {
					info.Conn.Close()
				}
			}
		}
	}
	out = req.WithContext(httptrace.WithClientTrace(ctx, trace))
	return out, func() {
		stop()
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel(context.Canceled)
	}
}

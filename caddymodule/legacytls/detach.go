package legacytls

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// abandonedLimit is how long a request whose client left after it was
// written may still run for its answer to be read.
const abandonedLimit = 10 * time.Second

var errAbandoned = errors.New("legacy_tls: the client left and the manager did not answer in time")

// outliveClient gives req a context that the client's departure cancels
// only until the request has been written to the manager. Once the manager
// has it, the manager does the work whatever the client does; cancelling
// then would only make Go's transport close the connection, and the next
// request pay the manager a TLS handshake. Agents that give up during a
// storm (SEP abandons a session after 30 s) would turn the manager's
// slowness into more handshakes for it. So the answer is still read, within
// limit of the client leaving, and the connection goes back to the pool.
// Before the write, the client's departure stops the request as before:
// nothing reaches the manager.
//
// done must be called once the response body is closed, or the request
// failed.
func outliveClient(req *http.Request, limit time.Duration) (out *http.Request, done func()) {
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

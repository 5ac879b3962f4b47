package legacytls

import (
	"context"
	"net/http"
	"net/http/httptrace"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/internal/pacer"
)

// paceAtTheWire makes req wait for the pacer heartbeat_limit handed it
// (global_rate) once the transport holds a connection to the manager and
// before it writes: the spacing is then what the manager sees, whatever
// stalled the request earlier in the gateway. The wait happens after a
// buffered body was read (coalesceBody's hook runs first), so nothing but
// the write follows it.
//
// If the client leaves while waiting, the request is cancelled and, over
// HTTP/1, its connection closed before anything is written: the transport
// then fails it with nothing sent instead of racing the cancellation with
// the write. An HTTP/2 connection is shared and left open; the cancelled
// stream is reset.
func paceAtTheWire(req *http.Request) *http.Request {
	p, _ := caddyhttp.GetVar(req.Context(), pacer.VarKey).(*pacer.Pacer)
	if p == nil {
		return req
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if err := p.Wait(ctx); err != nil {
				cancel(err)
				if !isHTTP2(info.Conn) {
					info.Conn.Close()
				}
			}
		},
	}
	return req.WithContext(httptrace.WithClientTrace(ctx, trace))
}

// Package handover provides the caddy.listeners.legacygate_handover listener
// wrapper: new connections are neither reset nor silently dropped across a
// configuration reload.
//
// Caddy 2.11.9 on Linux binds a new SO_REUSEPORT socket for every address at
// every configuration load and closes the old one when the old server stops.
// Connections queued on the old socket are reset when it closes, and Go's
// http.Server closes without an answer a connection the old server accepted
// whose first request it reads after Shutdown began. The wrapper keeps the
// first socket bound for an address (the primary) open across reloads, steers
// the kernel to it with a reuseport BPF program, accepts on it once for the
// whole process and hands each connection to the newest configuration's
// server only, so an old server never accepts a connection it would drop.
package handover

import (
	"context"
	"net"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handover{})
}

// claimWait bounds how long an older server stops accepting on an address
// while a newer configuration loads: a configuration that dropped the
// address never claims it, and the older server takes its connections again.
const claimWait = 5 * time.Second

// settle bounds how long a new configuration's start waits for connections
// the older servers accepted just before to read their first request: a
// client slower than this between connecting and sending its request can
// still get an empty answer at a reload.
const settle = time.Second

// queueSize bounds the accepted connections waiting for a server to call
// Accept; beyond it they wait in the kernel's listen backlog.
const queueSize = 256

// handovers is process-wide: configurations come and go, the sockets stay.
var handovers = newRegistry(system, claimWait, settle)

// Handover is the listener wrapper. It has no options.
type Handover struct {
	gen    *generation
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handover) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.legacygate_handover",
		New: func() caddy.Module { return new(Handover) },
	}
}

// Provision joins this configuration's generation; the first wrapper of a
// new configuration makes the older servers stop accepting.
func (h *Handover) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	// Every module of one configuration shares the context Caddy created
	// for it, so it identifies the configuration.
	h.gen = handovers.provision(context.Context(ctx.Context))
	return nil
}

// Cleanup leaves the generation; when its last wrapper leaves (the
// configuration was unloaded or failed to load) older servers accept again.
func (h *Handover) Cleanup() error {
	if h.gen != nil {
		handovers.cleanup(h.gen)
	}
	return nil
}

// WrapListener must come before tls, so that what is handed over is a TCP
// connection no server has read from yet.
func (h *Handover) WrapListener(ln net.Listener) net.Listener {
	if ln.Addr().Network() != "tcp" {
		// Caddy reuses Unix sockets and file descriptors across loads
		// already; only TCP sockets are rebound.
		return ln
	}
	return handovers.wrap(h.gen, ln.Addr().Network()+"/"+ln.Addr().String(), ln, h.logger)
}

// UnmarshalCaddyfile sets up the wrapper from Caddyfile tokens:
//
//	legacygate_handover
func (h *Handover) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the wrapper's name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("legacygate_handover: unknown option %q (it has none)", d.Val())
	}
	return nil
}

var (
	_ caddy.Provisioner     = (*Handover)(nil)
	_ caddy.CleanerUpper    = (*Handover)(nil)
	_ caddy.ListenerWrapper = (*Handover)(nil)
	_ caddyfile.Unmarshaler = (*Handover)(nil)
)

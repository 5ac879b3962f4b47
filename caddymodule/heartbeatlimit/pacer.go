package heartbeatlimit

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/internal/pacer"
)

// The global ceiling is held in three steps. ServeHTTP admits a request if
// it can have a slot within max_wait (limiter.Ceiling), and waits for the
// slot. It then lets it leave through the exit pacer, so waiters that wake
// late together (a GC pause, a starved host) leave spaced instead of being
// refused or sent in a bunch; this holds the ceiling for any transport.
// Last, it hands the request the wire pacer (a request variable) that the
// legacy_tls transport waits on once it holds a connection to the manager,
// right before it writes: a stall between heartbeat_limit and the socket
// then delays requests too, and never sends them together.
type pacers struct {
	exit, wire *pacer.Pacer
}

// buildPacer gives s the pacers of the newest live state of its lineage,
// so a reload and the configuration it replaces space requests together,
// at the new configuration's rate; or new ones.
func (s *state) buildPacer(h *HeartbeatLimit, prev *state) error {
	if h.globalInterval <= 0 {
		return nil
	}
	s.spacing = h.globalInterval
	if prev != nil && prev.pacers != nil {
		s.pacers = prev.pacers
		if err := s.pacers.setInterval(s.spacing); err != nil {
			return fmt.Errorf("global_rate: %w", err)
		}
		return nil
	}
	exit, err := pacer.New(s.spacing, nil)
	if err != nil {
		return fmt.Errorf("global_rate: %w", err)
	}
	wire, err := pacer.New(s.spacing, nil)
	if err != nil {
		return fmt.Errorf("global_rate: %w", err)
	}
	s.pacers = &pacers{exit: exit, wire: wire}
	return nil
}

func (p *pacers) setInterval(d time.Duration) error {
	if err := p.exit.SetInterval(d); err != nil {
		return err
	}
	return p.wire.SetInterval(d)
}

// handBackPacer restores the spacing of the newest remaining live state
// that shares s's pacers, for a reload that failed after s was built.
// Called with lineages held.
func (s *state) handBackPacer(live []*state) {
	if s.pacers == nil {
		return
	}
	for i := len(live) - 1; i >= 0; i-- {
		if live[i].pacers == s.pacers {
			_ = s.pacers.setInterval(live[i].spacing) // spacing was accepted when live[i] was built
			return
		}
	}
}

// wireBacklog is how long requests already admitted still queue after
// their slot, at the exit and at the wire; admission counts it against
// max_wait, so a recurring stall turns into rejections rather than an ever
// longer queue in front of the manager.
func (h *HeartbeatLimit) wireBacklog() time.Duration {
	if h.pacers == nil {
		return 0
	}
	return h.pacers.exit.Backlog() + h.pacers.wire.Backlog()
}

// handOnPacer leaves h's wire pacer in r's variables for the transport,
// when there is a global_rate.
func (h *HeartbeatLimit) handOnPacer(r *http.Request) {
	if h.pacers != nil {
		caddyhttp.SetVar(r.Context(), pacer.VarKey, h.pacers.wire)
	}
}

package heartbeatlimit

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/internal/pacer"
)

// The global ceiling is held in two places: ServeHTTP admits a request if
// it can have a slot within max_wait and waits for it, then hands the
// request a pacer (a request variable) that the legacy_tls transport waits on
// once it holds a connection to the manager, right before it writes. A
// stall between the two (a GC pause, a starved host) then delays requests
// instead of sending them to the manager together.

// buildPacer gives s the pacer of the newest live state of its lineage, so
// a reload and the configuration it replaces space requests together, at
// the new configuration's rate; or a new one.
func (s *state) buildPacer(h *HeartbeatLimit, prev *state) error {
	if h.globalInterval <= 0 {
		return nil
	}
	s.spacing = h.globalInterval
	if prev != nil && prev.pacer != nil {
		s.pacer = prev.pacer
		if err := s.pacer.SetInterval(s.spacing); err != nil {
			return fmt.Errorf("global_rate: %w", err)
		}
		return nil
	}
	p, err := pacer.New(s.spacing, nil)
	if err != nil {
		return fmt.Errorf("global_rate: %w", err)
	}
	s.pacer = p
	return nil
}

// handBackPacer restores the spacing of the newest remaining live state
// that shares s's pacer, for a reload that failed after s was built.
// Called with lineages held.
func (s *state) handBackPacer(live []*state) {
	if s.pacer == nil {
		return
	}
	for i := len(live) - 1; i >= 0; i-- {
		if live[i].pacer == s.pacer {
			_ = s.pacer.SetInterval(live[i].spacing) // spacing was accepted when live[i] was built
			return
		}
	}
}

// wireBacklog is how long requests already let through still queue at
// the wire; admission counts it against max_wait, so a recurring stall
// turns into rejections rather than an ever longer queue at the manager.
func (h *HeartbeatLimit) wireBacklog() time.Duration {
	if h.pacer == nil {
		return 0
	}
	return h.pacer.Backlog()
}

// handOnPacer leaves h's pacer in r's variables for the transport, when
// there is a global_rate.
func (h *HeartbeatLimit) handOnPacer(r *http.Request) {
	if h.pacer != nil {
		caddyhttp.SetVar(r.Context(), pacer.VarKey, h.pacer)
	}
}

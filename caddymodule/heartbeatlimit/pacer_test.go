package heartbeatlimit

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/internal/pacer"
)

// handedPacer passes one request through h and returns the pacer the
// transport would find on it.
func handedPacer(t *testing.T, h *HeartbeatLimit) *pacer.Pacer {
	t.Helper()
	var got *pacer.Pacer
	next := caddyhttp.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error {
		got, _ = caddyhttp.GetVar(r.Context(), pacer.VarKey).(*pacer.Pacer)
		return nil
	})
	r := heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", "")
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestHeartbeatLimitHandsTheTransportAPacerOnlyWithAGlobalRate(t *testing.T) {
	tests := []struct {
		name, block string
		want        time.Duration // 0: no pacer
	}{
		{"global_rate", "heartbeat_limit {\n zone pacer-a\n global_rate 200/1s\n}", 5 * time.Millisecond},
		{"per client only", "heartbeat_limit {\n zone pacer-b\n rate 1/1m\n}", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := handedPacer(t, provisionHeartbeat(t, tt.block))
			switch {
			case tt.want == 0 && p != nil:
				t.Errorf("a pacer at %v was handed on without a global_rate", p.Interval())
			case tt.want != 0 && p == nil:
				t.Error("no pacer handed on")
			case tt.want != 0 && p.Interval() != tt.want:
				t.Errorf("pacer interval %v, want %v", p.Interval(), tt.want)
			}
		})
	}
}

func TestHeartbeatLimitReloadSharesThePacerAndAFailedOneHandsBackItsRate(t *testing.T) {
	running := provisionHeartbeat(t, "heartbeat_limit {\n zone pacer-reload\n global_rate 100/1s\n}")
	p := handedPacer(t, running)
	exit := running.pacers.exit
	failed := provisionHeartbeat(t, "heartbeat_limit {\n zone pacer-reload\n global_rate 50/1s\n}")
	if got := handedPacer(t, failed); got != p {
		t.Fatal("the reloaded configuration has a pacer of its own: both would send at full rate while the old one drains")
	}
	if got := p.Interval(); got != 20*time.Millisecond {
		t.Errorf("shared pacer after the reload: %v, want the new 20ms", got)
	}
	if err := failed.Cleanup(); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]*pacer.Pacer{"wire": p, "exit": exit} {
		if got := p.Interval(); got != 10*time.Millisecond {
			t.Errorf("%s pacer after the reload failed: %v, want the running configuration's 10ms", name, got)
		}
	}
}

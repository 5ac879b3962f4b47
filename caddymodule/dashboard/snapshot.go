package dashboard

import (
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/rotation"
)

// Snapshot is the JSON of ?format=json: what the page shows.
type Snapshot struct {
	Now       time.Time `json:"now"`
	RefreshMS int64     `json:"refresh_ms"`
	// Window is nil without a rotation.
	Window *WindowView `json:"window,omitempty"`
	// Rotation is what GET /legacygate/rotation on the admin endpoint
	// reports, with the page's number of stragglers.
	Rotation rotation.RotationStatus `json:"rotation"`
	// HeartbeatLimit are heartbeat_limit's request counts by outcome and
	// reason, as legacygate_heartbeat_limit_requests_total counts them.
	HeartbeatLimit []Sample `json:"heartbeat_limit"`
	// Upstream is the legacy_tls transport's pool and handshakes.
	Upstream Upstream `json:"upstream"`
}

// WindowView is the rotation window as an operator reads it.
type WindowView struct {
	Phase     string    `json:"phase"` // before, open, grace or after
	Open      bool      `json:"open"`
	Start     time.Time `json:"start"`
	End       time.Time `json:"end"`
	GraceEnds time.Time `json:"grace_ends"`
	// Next is the next change of phase (the start, the end, the grace's
	// end), and SecondsLeft the time until then; zero after the grace.
	Next        time.Time `json:"next,omitzero"`
	NextPhase   string    `json:"next_phase,omitempty"`
	SecondsLeft int64     `json:"seconds_left"`
}

// Sample is one labelled value of a metric.
type Sample struct {
	Labels map[string]string `json:"labels"`
	Value  float64           `json:"value"`
}

// Upstream is the legacy_tls transport's pool (legacygate_upstream_*).
type Upstream struct {
	// Connections by state: active, idle, waiting.
	Connections map[string]float64 `json:"connections"`
	Retries     []Sample           `json:"retries"`
	Handshakes  []Sample           `json:"handshakes"`
}

// Metric names the page reads from Caddy's registry.
const (
	metricHeartbeatLimit = "legacygate_heartbeat_limit_requests_total"
	metricConnections    = "legacygate_upstream_connections"
	metricRetries        = "legacygate_upstream_retries_total"
	metricHandshakes     = "legacygate_upstream_tls_handshakes_total"
)

func (d *Dashboard) snapshot() Snapshot {
	st := rotation.Status(d.app, 1, d.Stragglers)
	s := Snapshot{
		Now:       st.Now,
		RefreshMS: time.Duration(d.Refresh).Milliseconds(),
		Rotation:  st,
		Upstream:  Upstream{Connections: map[string]float64{}, Retries: []Sample{}, Handshakes: []Sample{}},
	}
	if st.Window != nil && st.GraceEnds != nil {
		s.Window = windowView(st.Now, st.Window.Start, st.Window.End, *st.GraceEnds)
	}
	s.HeartbeatLimit = []Sample{}
	families, err := d.gatherer.Gather()
	if err != nil {
		// Gather returns what it could gather with the error.
		d.logger.Warn("gathering metrics for the dashboard", zap.Error(err))
	}
	for _, f := range families {
		switch f.GetName() {
		case metricHeartbeatLimit:
			s.HeartbeatLimit = samples(f)
		case metricConnections:
			for _, m := range samples(f) {
				s.Upstream.Connections[m.Labels["state"]] += m.Value
			}
		case metricRetries:
			s.Upstream.Retries = samples(f)
		case metricHandshakes:
			s.Upstream.Handshakes = samples(f)
		}
	}
	return s
}

func windowView(now, start, end, graceEnds time.Time) *WindowView {
	w := &WindowView{Start: start, End: end, GraceEnds: graceEnds}
	switch {
	case now.Before(start):
		w.Phase, w.Next, w.NextPhase = "before", start, "open"
	case now.Before(end):
		w.Phase, w.Open, w.Next, w.NextPhase = "open", true, end, "grace"
	case now.Before(graceEnds):
		w.Phase, w.Next, w.NextPhase = "grace", graceEnds, "after"
	default:
		w.Phase = "after"
	}
	if !w.Next.IsZero() {
		w.SecondsLeft = int64(w.Next.Sub(now).Seconds())
	}
	return w
}

// samples are a family's counter or gauge values, ordered by labels.
func samples(f *dto.MetricFamily) []Sample {
	out := make([]Sample, 0, len(f.GetMetric()))
	for _, m := range f.GetMetric() {
		s := Sample{Labels: map[string]string{}}
		for _, l := range m.GetLabel() {
			s.Labels[l.GetName()] = l.GetValue()
		}
		switch {
		case m.GetCounter() != nil:
			s.Value = m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			s.Value = m.GetGauge().GetValue()
		default:
			continue
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Sample) int { return strings.Compare(labelKey(a), labelKey(b)) })
	return out
}

func labelKey(s Sample) string {
	keys := make([]string, 0, len(s.Labels))
	for k, v := range s.Labels {
		keys = append(keys, k+"="+v)
	}
	slices.Sort(keys)
	return strings.Join(keys, ",")
}

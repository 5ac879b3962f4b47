package rotation

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/internal/rotationtable"
)

// rotationGauges are the operator's figures on Caddy's metrics registry;
// never labelled by client.
type rotationGauges struct {
	clients   *prometheus.GaugeVec
	plaintext prometheus.Gauge
	ratio     prometheus.Gauge
}

var rotationMetrics = rotationGauges{
	clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "legacygate_rotation_clients",
		Help: "Clients tracked by the key rotation, by state (unseen, pending, anchor_fetched, confirmed).",
	}, []string{"state"}),
	plaintext: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "legacygate_rotation_plaintext_clients",
		Help: "Tracked clients whose latest heartbeat came over plain HTTP.",
	}),
	ratio: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "legacygate_rotation_confirmed_ratio",
		Help: "Confirmed clients divided by tracked clients (0 when none is tracked).",
	}),
}

func registerRotationGauges(reg prometheus.Registerer) (rotationGauges, error) {
	var g rotationGauges
	var err error
	if g.clients, err = metrics.Register(reg, rotationMetrics.clients); err != nil {
		return g, err
	}
	if g.plaintext, err = metrics.Register(reg, rotationMetrics.plaintext); err != nil {
		return g, err
	}
	g.ratio, err = metrics.Register(reg, rotationMetrics.ratio)
	return g, err
}

// updateGauges sets the gauges from the table (zero without a rotation).
func (a *App) updateGauges() {
	var c rotationtable.RotationCounts
	if a.table != nil {
		c = a.table.Counts(a.now())
	}
	a.gauges.clients.WithLabelValues(string(rotationtable.ProgressUnseen)).Set(float64(c.Unseen))
	a.gauges.clients.WithLabelValues(string(rotationtable.ProgressPending)).Set(float64(c.Pending))
	a.gauges.clients.WithLabelValues(string(rotationtable.ProgressAnchorFetched)).Set(float64(c.AnchorFetched))
	a.gauges.clients.WithLabelValues(string(rotationtable.ProgressConfirmed)).Set(float64(c.Confirmed))
	a.gauges.plaintext.Set(float64(c.Plaintext))
	a.gauges.ratio.Set(confirmedRatio(c))
}

func confirmedRatio(c rotationtable.RotationCounts) float64 {
	if c.Tracked == 0 {
		return 0
	}
	return float64(c.Confirmed) / float64(c.Tracked)
}

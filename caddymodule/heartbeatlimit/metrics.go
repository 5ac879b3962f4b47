package heartbeatlimit

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/caddymodule/internal/response"
)

// Rejection reasons, the values of the metrics' reason label and of
// {http.heartbeat_limit.reason}; refusals use response.ReasonDuplicateKey
// and response.ReasonBadQuery.
const (
	reasonKeyed     = "keyed"
	reasonFallback  = "fallback"
	reasonPerClient = "per_client"
	reasonGlobal    = "global"
)

var handlerMetrics = struct {
	requests *prometheus.CounterVec
	tracked  prometheus.Gauge
	queue    prometheus.Gauge
}{
	requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "requests_total",
		Help: "Requests seen by heartbeat_limit, by outcome (allowed, limited, refused) and reason (allowed: keyed, fallback; limited: per_client, fallback, global; refused: duplicate_key, bad_query).",
	}, []string{"outcome", "reason"}),
	tracked: prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "tracked_keys",
		Help: "Client keys with a token bucket in memory, over all heartbeat_limit handlers.",
	}),
	queue: prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "global_queue_depth",
		Help: "Requests waiting for a global_rate slot.",
	}),
}

// counters are the request counters resolved once, so counting
// costs no allocation.
type counters struct {
	allowedKeyed, allowedFallback                    prometheus.Counter
	limitedPerClient, limitedFallback, limitedGlobal prometheus.Counter
	refusedDuplicateKey, refusedBadQuery             prometheus.Counter
}

func (h *HeartbeatLimit) provisionMetrics(ctx caddy.Context) error {
	reg := ctx.GetMetricsRegistry()
	requests, err := metrics.Register(reg, handlerMetrics.requests)
	if err != nil {
		return err
	}
	if h.tracked, err = metrics.Register(reg, handlerMetrics.tracked); err != nil {
		return err
	}
	if h.queue, err = metrics.Register(reg, handlerMetrics.queue); err != nil {
		return err
	}
	h.counts = counters{
		allowedKeyed:     requests.WithLabelValues("allowed", reasonKeyed),
		allowedFallback:  requests.WithLabelValues("allowed", reasonFallback),
		limitedPerClient: requests.WithLabelValues("limited", reasonPerClient),
		limitedFallback:  requests.WithLabelValues("limited", reasonFallback),
		limitedGlobal:    requests.WithLabelValues("limited", reasonGlobal),

		refusedDuplicateKey: requests.WithLabelValues("refused", response.ReasonDuplicateKey),
		refusedBadQuery:     requests.WithLabelValues("refused", response.ReasonBadQuery),
	}
	return nil
}

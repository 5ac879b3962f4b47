package redisstorage

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
)

// storageMetrics count what the storage asked of Redis, by operation and
// result; never labelled by key or client.
type storageMetrics struct {
	ops *prometheus.CounterVec
}

var operations = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "legacygate_redis_storage_operations_total",
	Help: "Redis storage operations by operation (store, load, delete, exists, list, stat, lock, unlock, refresh) and result (ok, not_found, contended, lost, canceled, error).",
}, []string{"operation", "result"})

func registerMetrics(reg prometheus.Registerer) (storageMetrics, error) {
	c, err := metrics.Register(reg, operations)
	return storageMetrics{ops: c}, err
}

// Results.
const (
	resultOK        = "ok"
	resultNotFound  = "not_found"
	resultContended = "contended"
	resultLost      = "lost"
	resultCanceled  = "canceled"
	resultError     = "error"
)

func (m storageMetrics) count(op, result string) {
	if m.ops == nil {
		return
	}
	m.ops.WithLabelValues(op, result).Inc()
}

// countErr counts err's result: ok, or error.
func (m storageMetrics) countErr(op string, err error) {
	if err != nil {
		m.count(op, resultError)
		return
	}
	m.count(op, resultOK)
}

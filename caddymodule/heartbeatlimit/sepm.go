package heartbeatlimit

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/secars"
)

// SEPMHostIDPlaceholder is set, when kcs is configured, to the host id of
// an index request whose h= query decoded: use it in key.
const SEPMHostIDPlaceholder = "{sepm.hostid}"

// Outcomes of reading a SEPM-style opaque query, the values of
// legacygate_heartbeat_limit_sepm_queries_total's outcome label.
const (
	sepmIndex       = "index"       // an index request: limited, keyed by host id
	sepmOther       = "other"       // another agent request: passed on, not limited
	sepmUndecodable = "undecodable" // no h=, or not under this KCS: limited by the other key parts
)

var sepmQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "sepm_queries_total",
	Help: "SEPM-style h= queries read with the configured kcs, by outcome (index, other, undecodable).",
}, []string{"outcome"})

// sepmReader decodes the real wire's h= with the site's KCS.
type sepmReader struct {
	key                     secars.Key
	index, other, undecoded prometheus.Counter
}

// provisionSEPM reads the kcs setting: off (or empty) leaves queries
// opaque; otherwise it must be the hex Kcs of the site's SyLink.xml.
func (h *HeartbeatLimit) provisionSEPM(ctx caddy.Context) error {
	kcs := strings.TrimSpace(caddy.NewReplacer().ReplaceKnown(h.KCS, ""))
	if kcs == "" || kcs == "off" {
		if strings.Contains(strings.Join(h.Key, " "), SEPMHostIDPlaceholder) {
			h.logger.Warn("heartbeat_limit: key uses {sepm.hostid} but kcs is off: the other key parts alone tell clients apart")
		}
		return nil
	}
	key, err := secars.NewKey(kcs)
	if err != nil {
		return fmt.Errorf("kcs: %w", err)
	}
	c, err := metrics.Register(ctx.GetMetricsRegistry(), sepmQueries)
	if err != nil {
		return err
	}
	h.sepm = &sepmReader{
		key:       key,
		index:     c.WithLabelValues(sepmIndex),
		other:     c.WithLabelValues(sepmOther),
		undecoded: c.WithLabelValues(sepmUndecodable),
	}
	return nil
}

// heartbeat reads r's h= query. It returns false for an agent request
// that is not an index (a registration, a download, a log upload): not a
// heartbeat, so not held to the client's bucket, only to global_rate. An index sets {sepm.hostid}. A query that does not decode is
// treated as a heartbeat without a host id; h= given twice is an error
// (the request is refused, as for any ambiguous key).
func (s *sepmReader) heartbeat(r *http.Request) (bool, error) {
	v, found, err := query.Single(r.URL.RawQuery, "h")
	if err != nil {
		return false, fmt.Errorf("query h: %w", err)
	}
	var q secars.Query
	if found {
		q, err = s.key.Decode(v)
	}
	if !found || err != nil {
		s.undecoded.Inc()
		return true, nil
	}
	if q.Action != secars.ActionIndex {
		s.other.Inc()
		return false, nil
	}
	s.index.Inc()
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("sepm.hostid", q.HostID)
	}
	return true, nil
}

// passGlobal sends on an agent request that is not a heartbeat, within
// global_rate when one is set: what reaches the manager through this
// handler stays under the ceiling whatever the request. A rejection is the
// configured one, never an index.
func (h *HeartbeatLimit) passGlobal(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.ceiling == nil {
		return next.ServeHTTP(w, r)
	}
	ok, retry, err := h.awaitCeiling(r)
	if err != nil {
		return err
	}
	if !ok {
		return h.reject(w, r, reasonGlobal, retry)
	}
	h.handOnPacer(r)
	return next.ServeHTTP(w, r)
}

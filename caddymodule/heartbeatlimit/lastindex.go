package heartbeatlimit

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/xmlscan"
)

// Limits of the last-index cache.
const (
	maxIndexBody     = 64 << 10 // a SEPM index is about 300 bytes; a few KB with many profiles
	maxDistinctIndex = 4096     // distinct bodies held, shared between keys
	maxIndexBytes    = 32 << 20 // and their bytes together
	defaultIndexRoot = "Index"
)

// Outcomes of the last-index cache, the values of
// legacygate_heartbeat_limit_last_index_total's outcome label.
const (
	lastIndexServed  = "served"  // a limited heartbeat got its key's last index, 200
	lastIndexMissing = "missing" // a limited heartbeat had none: the usual rejection
	lastIndexStored  = "stored"  // an index answer was remembered
	// the manager failed (5xx, unreachable): the heartbeat got its last index, 200
	lastIndexServedOnError = "served_on_error"
)

var lastIndexAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "last_index_total",
	Help: "The last-index answer to limited heartbeats and to heartbeats the manager failed, by outcome (served, served_on_error, missing, stored).",
}, []string{"outcome"})

// indexAnswer is one remembered index document.
type indexAnswer struct {
	body        []byte
	contentType string
	sum         [sha256.Size]byte
	refs        int // keys holding it; guarded by indexCache.mu
}

// indexCache remembers, per client key, the last index the manager
// answered, so that a limited heartbeat is told "nothing changed" (200,
// that index) instead of an error, which would send a SEP client into an
// accelerated heartbeat (KB 177654). At most max keys are kept, the
// oldest inserted evicted first; bodies are shared between keys that got
// the same bytes and dropped when no key holds them, at most
// maxDistinctIndex of them and maxIndexBytes together, each at most
// maxIndexBody: memory stays under max × about 60 bytes plus 32 MiB.
type indexCache struct {
	mu     sync.Mutex
	max    int
	root   []byte
	keys   map[uint64]*indexAnswer
	ring   []uint64 // insertion order, for eviction
	next   int
	bodies map[[sha256.Size]byte]*indexAnswer
	bytes  int // of the bodies held

	served, missing, stored, servedOnError prometheus.Counter
}

func (h *HeartbeatLimit) provisionLastIndex(ctx caddy.Context) error {
	if h.LastIndex == 0 {
		return nil
	}
	if h.LastIndex < 0 || h.LastIndex > 10_000_000 {
		return fmt.Errorf("last_index %d: want a number of clients from 1 to 10000000", h.LastIndex)
	}
	c, err := metrics.Register(ctx.GetMetricsRegistry(), lastIndexAnswers)
	if err != nil {
		return err
	}
	h.lastIndex = &indexCache{
		max:           h.LastIndex,
		root:          []byte(defaultIndexRoot),
		keys:          make(map[uint64]*indexAnswer),
		bodies:        make(map[[sha256.Size]byte]*indexAnswer),
		served:        c.WithLabelValues(lastIndexServed),
		missing:       c.WithLabelValues(lastIndexMissing),
		stored:        c.WithLabelValues(lastIndexStored),
		servedOnError: c.WithLabelValues(lastIndexServedOnError),
	}
	return nil
}

func (c *indexCache) get(key uint64) *indexAnswer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys[key]
}

// put remembers body as key's last index if it is one: an XML document
// whose root element is Index. A body no key holds any more is dropped; a
// new distinct body is not remembered while maxDistinctIndex bodies or
// maxIndexBytes are held (the key keeps its previous one, or none).
func (c *indexCache) put(key uint64, body []byte, contentType string) {
	if root, err := xmlscan.Root(body); err != nil || !bytes.Equal(root, c.root) {
		return
	}
	sum := sha256.Sum256(body)
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.bodies[sum]
	if a == nil || a.contentType != contentType {
		if a != nil || len(c.bodies) >= maxDistinctIndex || c.bytes+len(body) > maxIndexBytes {
			return
		}
		a = &indexAnswer{body: bytes.Clone(body), contentType: contentType, sum: sum}
		c.bodies[sum] = a
		c.bytes += len(body)
	}
	c.stored.Inc()
	if old, ok := c.keys[key]; ok {
		if old == a {
			return
		}
		c.release(old)
		a.refs++
		c.keys[key] = a
		return
	}
	if len(c.ring) < c.max {
		c.ring = append(c.ring, key)
	} else {
		c.release(c.keys[c.ring[c.next]])
		delete(c.keys, c.ring[c.next])
		c.ring[c.next] = key
		c.next = (c.next + 1) % c.max
	}
	a.refs++
	c.keys[key] = a
}

// release drops one key's hold on a; the last one frees the body.
func (c *indexCache) release(a *indexAnswer) {
	if a == nil {
		return
	}
	if a.refs--; a.refs <= 0 {
		delete(c.bodies, a.sum)
		c.bytes -= len(a.body)
	}
}

// limited answers a limited heartbeat: with the client's last index when
// last_index is on, the request is known to be an index and one is
// remembered; else with the configured rejection.
func (h *HeartbeatLimit) limited(w http.ResponseWriter, r *http.Request, key uint64, reason string, delay time.Duration) error {
	if h.lastIndex == nil || reason == reasonFallback || !h.knownIndex(r) {
		return h.reject(w, r, reason, delay)
	}
	a := h.lastIndex.get(key)
	if a == nil {
		h.lastIndex.missing.Inc()
		return h.reject(w, r, reason, delay)
	}
	switch reason {
	case reasonPerClient:
		h.counts.limitedPerClient.Inc()
	default:
		h.counts.limitedGlobal.Inc()
	}
	h.lastIndex.served.Inc()
	if ce := h.logger.Check(zap.DebugLevel, "heartbeat limited: answered with the last index"); ce != nil {
		ce.Write(zap.String("reason", reason), zap.String("remote", r.RemoteAddr))
	}
	return writeIndex(w, a)
}

// knownIndex reports whether r is known to ask for an index, so that an
// index is a right answer: with kcs, its h= decoded to an index; without,
// it has no h= (an opaque query could be any request: a policy download
// answered with an index would fail on the client) and the matcher
// selects index requests.
func (h *HeartbeatLimit) knownIndex(r *http.Request) bool {
	if h.sepm != nil {
		repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if !ok {
			return false
		}
		_, set := repl.Get("sepm.hostid")
		return set
	}
	_, found, err := query.Single(r.URL.RawQuery, "h")
	return !found && err == nil
}

func writeIndex(w http.ResponseWriter, a *indexAnswer) error {
	hdr := w.Header()
	if a.contentType != "" {
		hdr.Set("Content-Type", a.contentType)
	}
	hdr.Set("Content-Length", strconv.Itoa(len(a.body)))
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(a.body)
	return err
}

// pass sends an allowed heartbeat on. With last_index on, the answer is
// remembered as the key's last index; and when the manager fails (a 5xx,
// or no answer at all) and the key has a last index, the client gets that
// instead: "nothing changed" keeps it on its normal interval, where an
// error would send it and every other client into accelerated heartbeats
// against a manager that is already struggling.
func (h *HeartbeatLimit) pass(w http.ResponseWriter, r *http.Request, key uint64, keyed bool, next caddyhttp.Handler) error {
	if h.lastIndex == nil || !keyed || !h.knownIndex(r) {
		return next.ServeHTTP(w, r)
	}
	rec := &indexRecorder{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, cached: h.lastIndex.get(key)}
	if rec.cached != nil {
		rec.before = make(map[string]bool, len(w.Header()))
		for k := range w.Header() {
			rec.before[k] = true
		}
	}
	err := next.ServeHTTP(rec, r)
	if rec.swallowed || (err != nil && rec.status == 0 && rec.cached != nil) {
		for k := range w.Header() {
			if !rec.before[k] {
				delete(w.Header(), k)
			}
		}
		h.lastIndex.servedOnError.Inc()
		h.logger.Debug("manager failed: heartbeat answered with the last index",
			zap.Int("status", rec.status), zap.Error(err), zap.String("remote", r.RemoteAddr))
		return writeIndex(w, rec.cached)
	}
	if err == nil && rec.status == http.StatusOK && !rec.over {
		h.lastIndex.put(key, rec.buf.Bytes(), rec.contentType)
	}
	return err
}

// indexRecorder passes an answer through and keeps a copy of its first
// maxIndexBody bytes.
// With a cached index, a 5xx answer is swallowed instead, for pass to
// answer with that index.
type indexRecorder struct {
	*caddyhttp.ResponseWriterWrapper
	status      int
	contentType string
	buf         bytes.Buffer
	over        bool
	cached      *indexAnswer
	before      map[string]bool // header names set before the manager answered
	swallowed   bool
}

func (rec *indexRecorder) WriteHeader(status int) {
	if rec.status != 0 || status < 200 {
		if !rec.swallowed {
			rec.ResponseWriterWrapper.WriteHeader(status)
		}
		return
	}
	rec.status = status
	rec.contentType = rec.Header().Get("Content-Type")
	if status >= 500 && rec.cached != nil {
		rec.swallowed = true
		return
	}
	rec.ResponseWriterWrapper.WriteHeader(status)
}

func (rec *indexRecorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.WriteHeader(http.StatusOK)
	}
	if rec.swallowed {
		return len(b), nil
	}
	if !rec.over {
		if rec.buf.Len()+len(b) > maxIndexBody {
			rec.over = true
			rec.buf = bytes.Buffer{}
		} else {
			rec.buf.Write(b)
		}
	}
	return rec.ResponseWriterWrapper.Write(b)
}

// ReadFrom copies through Write, so the copy is kept whichever way the
// proxy writes the body.
func (rec *indexRecorder) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{rec}, r)
}

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

package heartbeatlimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/response"
	"github.com/legacygate/legacygate/internal/limiter"
	"github.com/legacygate/legacygate/internal/query"
)

func init() {
	caddy.RegisterModule(HeartbeatLimit{})
	httpcaddyfile.RegisterHandlerDirective("heartbeat_limit", parseHeartbeatLimit)
	// After plaintext_bridge, before xml_guard (see caddymodule/doc.go).
	httpcaddyfile.RegisterDirectiveOrder("heartbeat_limit", httpcaddyfile.Before, "basic_auth")
}

// HeartbeatLimit limits how often each client may reach the manager, and how
// many requests reach it in total, answering the rest in a way legacy clients
// understand: a 429 or 503 with Retry-After (spread by jitter) and, if
// configured, a protocol-shaped body telling the client to come back later.
//
// Each client key has a token bucket (rate and burst). Tracked keys are
// bounded by max_clients; the least recently seen key is evicted first and
// keys whose bucket is full again are swept, so memory stays at about
// 42 bytes per tracked key whatever clients send. A request whose key cannot
// be read is limited under one shared fallback key, never let through
// unlimited. A request whose key is ambiguous (a query parameter or header
// of the key given twice, a malformed escape) is refused with 400 and never
// passed on. Key values are ASCII case-folded, so case variants of one host
// id share one bucket.
//
// The buckets and the global ceiling's schedule survive configuration
// reloads. They are kept in a process-wide pool (caddy.UsagePool) under the
// limiter's lineage, its zone, key (or xml_body_element) and distributed
// settings, and its limits: rate, burst, max_clients, global_rate and
// max_wait, rates compared by their interval (1/60s is 1/1m).
//   - Same lineage, same limits: the new configuration uses the very same
//     buckets and schedule, however much else changed (status, jitter,
//     body_file, the matcher, other directives and sites).
//   - Same lineage, changed limits: a new limiter takes over the old one's
//     buckets: each client keeps the requests it owes, repaid at the new
//     rate and at most a full bucket (a smaller burst caps the debt, a
//     larger one gives an idle client the larger burst); the global
//     schedule's next free slot is kept.
//   - Another zone or key: a new limiter with full buckets.
//
// A state is freed when no running configuration holds it any more.
// Handlers with the same lineage and limits in one configuration share one
// limiter; a different zone keeps them apart.
type HeartbeatLimit struct {
	// Zone names the limiter: it is part of the lineage under which its
	// state is kept across reloads, and in distributed mode it names the
	// shared state in the storage (distributed's own zone is the same
	// setting and must agree if both are given). Default empty (distributed:
	// "default").
	Zone string `json:"zone,omitempty"`

	// Key is the client's identity: placeholders (and literal text),
	// whose values together form the key. Default {http.vars.client_ip},
	// the client address after Caddy's trusted_proxies handling. A request
	// where every placeholder is empty uses the fallback key. A query
	// placeholder ({http.request.uri.query.X} or {query.X}) must be a part
	// of its own: it is read by legacygate's one query parser (names
	// matched ignoring case, repeats refused), not by Caddy's replacer.
	// Values are ASCII upper-cased before hashing.
	Key []string `json:"key,omitempty"`

	// XMLBodyElement, when set, takes the key from the text of the first
	// element of this local name in the first 64 KiB of an XML request
	// body (a SOAP device id, for example) instead of from Key. The body
	// is passed on whole.
	XMLBodyElement string `json:"xml_body_element,omitempty"`

	// Rate is each client's refill rate, "N/duration" (for example
	// "1/60s"). Empty means no per-client limit (global_rate must be set).
	Rate string `json:"rate,omitempty"`

	// Burst is how many requests an idle client may make back to back.
	// Default 1.
	Burst int `json:"burst,omitempty"`

	// MaxClients bounds the keys tracked. Default 1,000,000.
	MaxClients int `json:"max_clients,omitempty"`

	// GlobalRate is a ceiling on requests passed on across all clients,
	// "N/duration"; admissions are spaced evenly at duration/N.
	GlobalRate string `json:"global_rate,omitempty"`

	// MaxWait is how long a request may wait for a global slot before it
	// is rejected. Default 1s; 0 rejects whatever finds no free slot.
	MaxWait *caddy.Duration `json:"max_wait,omitempty"`

	// Status of a rejection: 429 or 503. Default 429.
	Status int `json:"status,omitempty"`

	// Jitter, in [0, 1), spreads Retry-After: each rejection's delay is
	// the bucket's delay times 1 plus a random fraction up to Jitter.
	Jitter float64 `json:"jitter,omitempty"`

	// BodyFile is a file whose content is the rejection's body (for
	// example an index document telling the client to come back later).
	// It is read once at provision time; placeholders in it are replaced
	// per rejection, including {http.heartbeat_limit.retry_after} (seconds)
	// and {http.heartbeat_limit.reason}. Its Content-Type follows the file
	// extension.
	BodyFile string `json:"body_file,omitempty"`

	// Distributed, when set, makes instances that share a storage limit
	// clients together.
	Distributed *HeartbeatDistributed `json:"distributed,omitempty"`

	// Cluster, when set, makes instances that share a Redis act as one
	// limiter: shared per-client buckets and global_rate as the cluster's
	// ceiling (see HeartbeatCluster). It excludes distributed.
	Cluster *HeartbeatCluster `json:"cluster,omitempty"`

	// KCS, when set (and not "off"), is the Kcs of the site's SyLink.xml:
	// SEPM-style opaque queries (?h=) are decoded with it, only index
	// requests are limited, and {sepm.hostid} is their host id (sepm.go).
	KCS string `json:"kcs,omitempty"`

	// LastIndex, when above zero, answers a limited heartbeat with the
	// last index the manager gave its key (200, "nothing changed")
	// instead of the rejection, remembering at most this many keys
	// (lastindex.go).
	LastIndex int `json:"last_index,omitempty"`

	parts          []keyPart
	interval       time.Duration
	globalInterval time.Duration
	seed           [limiter.SeedSize]byte
	poolKey        string
	hasher         limiter.Hasher
	fallback       uint64
	perClient      *limiter.Limiter
	ceiling        *limiter.Ceiling
	pacers         *pacers
	body           []byte
	bodyType       string
	logger         *zap.Logger
	counts         counters
	tracked        prometheus.Gauge
	queue          prometheus.Gauge
	stop           chan struct{}
	maintenance    *sync.WaitGroup
	exchange       *exchange
	clusterCounts  clusterCounters
	sepm           *sepmReader
	lastIndex      *indexCache
}

// CaddyModule returns the Caddy module information.
func (HeartbeatLimit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.heartbeat_limit",
		New: func() caddy.Module { return new(HeartbeatLimit) },
	}
}

const (
	defaultMaxClients = 1_000_000
	defaultMaxWait    = time.Second
	xmlPrefix         = 64 << 10
	sweepEvery        = 30 * time.Second
	gaugeEvery        = 2 * time.Second
)

// Provision parses the configuration, takes the limiter state from the pool
// (building it if no configuration holds it) and starts the distributed
// exchange.
func (h *HeartbeatLimit) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.stop = make(chan struct{})
	h.maintenance = new(sync.WaitGroup)
	if err := h.provisionMetrics(ctx); err != nil {
		return err
	}
	if err := h.provisionKey(); err != nil {
		return err
	}
	if err := h.provisionLimits(); err != nil {
		return err
	}
	if err := h.provisionRejection(); err != nil {
		return err
	}
	if err := h.provisionSEPM(ctx); err != nil {
		return err
	}
	if err := h.provisionLastIndex(ctx); err != nil {
		return err
	}
	if err := h.provisionZone(); err != nil {
		return err
	}
	if h.Distributed != nil && h.Cluster != nil {
		return errors.New("cluster: cannot be combined with distributed (file storage): choose one")
	}
	if h.Distributed != nil {
		var err error
		if h.seed, err = h.Distributed.provision(ctx, h); err != nil {
			return fmt.Errorf("distributed: %w", err)
		}
	}
	if h.Cluster != nil {
		var err error
		if h.seed, err = h.Cluster.provision(ctx, h); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	if err := h.provisionState(); err != nil {
		return err
	}
	if h.Distributed != nil {
		h.Distributed.start(h)
	}
	return nil
}

// provisionZone checks the zone name and reconciles it with distributed's.
func (h *HeartbeatLimit) provisionZone() error {
	if h.Distributed != nil {
		dz := h.Distributed.Zone
		if h.Zone != "" && dz != "" && dz != h.Zone {
			return fmt.Errorf("zone %q: distributed zone %q differs; set one of them", h.Zone, dz)
		}
		if h.Zone == "" {
			h.Zone = dz
		}
	}
	if strings.ContainsAny(h.Zone, "/\\ \t") || h.Zone == "." || h.Zone == ".." {
		return fmt.Errorf("zone %q: want a name without slashes or spaces", h.Zone)
	}
	return nil
}

func (h *HeartbeatLimit) provisionKey() error {
	if h.XMLBodyElement != "" {
		if len(h.Key) > 0 {
			return errors.New("key: xml_body cannot be combined with placeholders")
		}
		if strings.ContainsAny(h.XMLBodyElement, " <>/{}") {
			return fmt.Errorf("xml_body_element %q: want a bare element name", h.XMLBodyElement)
		}
		return nil
	}
	if len(h.Key) == 0 {
		h.Key = []string{"{http.vars.client_ip}"}
	}
	h.parts = make([]keyPart, 0, len(h.Key))
	for _, k := range h.Key {
		if k == "" {
			return errors.New("key: empty part")
		}
		part := parseKeyPart(k)
		if part.kind == partReplacer && query.MentionsPlaceholder(k) {
			return fmt.Errorf("key: %q: a query placeholder must be a key part of its own, such as {query.hostid}", k)
		}
		h.parts = append(h.parts, part)
	}
	return nil
}

func (h *HeartbeatLimit) provisionLimits() error {
	if h.Rate == "" && h.GlobalRate == "" {
		return errors.New("rate: required (or global_rate)")
	}
	if h.Burst == 0 {
		h.Burst = 1
	}
	if h.MaxClients == 0 {
		h.MaxClients = defaultMaxClients
	}
	if h.Rate != "" {
		interval, err := parseRate(h.Rate)
		if err != nil {
			return fmt.Errorf("rate: %w", err)
		}
		if h.Burst < 1 {
			return fmt.Errorf("burst %d: must be at least 1", h.Burst)
		}
		if h.MaxClients < 1 {
			return fmt.Errorf("max_clients %d: must be at least 1", h.MaxClients)
		}
		h.interval = interval
	}
	if h.MaxWait == nil {
		d := caddy.Duration(defaultMaxWait)
		h.MaxWait = &d
	}
	if *h.MaxWait < 0 {
		return fmt.Errorf("max_wait %v: must not be negative", time.Duration(*h.MaxWait))
	}
	if h.GlobalRate != "" {
		interval, err := parseRate(h.GlobalRate)
		if err != nil {
			return fmt.Errorf("global_rate: %w", err)
		}
		h.globalInterval = interval
	}
	return nil
}

func (h *HeartbeatLimit) provisionRejection() error {
	if h.Status == 0 {
		h.Status = http.StatusTooManyRequests
	}
	if h.Status != http.StatusTooManyRequests && h.Status != http.StatusServiceUnavailable {
		return fmt.Errorf("status %d: want 429 or 503", h.Status)
	}
	if h.Jitter < 0 || h.Jitter >= 1 || math.IsNaN(h.Jitter) {
		return fmt.Errorf("jitter %v: want a fraction in [0, 1)", h.Jitter)
	}
	if h.BodyFile == "" {
		return nil
	}
	body, err := os.ReadFile(h.BodyFile)
	if err != nil {
		return fmt.Errorf("body_file: %w", err)
	}
	h.body = body
	h.bodyType = mime.TypeByExtension(filepath.Ext(h.BodyFile))
	if h.bodyType == "" {
		h.bodyType = http.DetectContentType(body)
	}
	return nil
}

// parseRate reads "N/duration" and returns the interval per token.
func parseRate(s string) (time.Duration, error) {
	count, per, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("%q: want N/duration, for example 1/60s", s)
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q: count %q must be a positive integer", s, count)
	}
	d, err := caddy.ParseDuration(per)
	if err != nil {
		return 0, fmt.Errorf("%q: duration: %w", s, err)
	}
	if d <= 0 || d/time.Duration(n) <= 0 {
		return 0, fmt.Errorf("%q: the interval per request must be at least 1ns", s)
	}
	return d / time.Duration(n), nil
}

// Validate checks what Provision derived.
func (h *HeartbeatLimit) Validate() error {
	if h.perClient == nil && h.ceiling == nil {
		return errors.New("rate: required (or global_rate)")
	}
	return nil
}

// Cleanup stops the distributed exchange and releases this handler's
// reference to the limiter state, which is freed when no configuration
// holds it any more. It may be called more than once.
func (h *HeartbeatLimit) Cleanup() error {
	if h.stop != nil {
		close(h.stop)
		h.maintenance.Wait()
		h.stop = nil
	}
	if h.Cluster != nil {
		h.detachCluster()
	}
	if h.poolKey == "" {
		return nil
	}
	key := h.poolKey
	h.poolKey = ""
	if _, err := states.Delete(key); err != nil {
		return fmt.Errorf("releasing the limiter state: %w", err)
	}
	return nil
}

// states holds every heartbeat_limit's limiter state, keyed by its
// lineage and limits (limits), so that a reload finds the buckets
// and global schedule of the configuration it replaces.
var states = caddy.NewUsagePool()

// lineages maps each lineage (a limiter's zone, key and
// distributed settings) to its live states, oldest first, so that a state
// built with changed limits takes over the buckets of the newest one (the
// configuration being replaced, or the one still running after a failed
// reload).
var lineages = struct {
	sync.Mutex
	live map[string][]*state
}{live: make(map[string][]*state)}

// state is what a reload keeps: the per-client buckets, the
// global ceiling's schedule, the key hash seed (a new seed would re-key
// every client) and the distributed instance name. It sweeps full buckets
// and reports the tracked-key gauge until the pool destructs it.
type state struct {
	lineage   string
	perClient *limiter.Limiter
	ceiling   *limiter.Ceiling
	pacers    *pacers
	spacing   time.Duration // this configuration's interval for pacers
	hasher    limiter.Hasher
	instance  string
	tracked   prometheus.Gauge
	reported  float64
	stop      chan struct{}
	done      chan struct{}
}

// lineageID identifies a limiter whatever its limits: which
// clients it tells apart, and where it shares state.
type lineageID struct {
	Zone        string          `json:"zone"`
	Key         []string        `json:"key"`
	XMLBody     string          `json:"xml_body"`
	Distributed json.RawMessage `json:"distributed,omitempty"`
	Cluster     json.RawMessage `json:"cluster,omitempty"`
	Seed        []byte          `json:"seed,omitempty"`
}

// limits are the settings a limiter's state is built with. Rates
// are compared as intervals (1/60s is 1/1m).
type limits struct {
	Interval       time.Duration `json:"interval"`
	Burst          int           `json:"burst"`
	MaxClients     int           `json:"max_clients"`
	GlobalInterval time.Duration `json:"global_interval"`
	MaxWait        time.Duration `json:"max_wait"`
}

// identity returns h's lineage and its pool key (the lineage and the
// limits).
func (h *HeartbeatLimit) identity() (lineage, key string, err error) {
	l := lineageID{Zone: h.Zone, Key: h.Key, XMLBody: h.XMLBodyElement}
	if h.Distributed != nil {
		if l.Distributed, err = json.Marshal(h.Distributed); err != nil {
			return "", "", fmt.Errorf("distributed: %w", err)
		}
		l.Seed = h.seed[:]
	}
	if h.Cluster != nil {
		if l.Cluster, err = h.Cluster.identity(); err != nil {
			return "", "", fmt.Errorf("cluster: %w", err)
		}
		l.Seed = h.seed[:]
	}
	lb, err := json.Marshal(l)
	if err != nil {
		return "", "", fmt.Errorf("limiter identity: %w", err)
	}
	kb, err := json.Marshal(limits{
		Interval: h.interval, Burst: h.Burst, MaxClients: h.MaxClients,
		GlobalInterval: h.globalInterval, MaxWait: time.Duration(*h.MaxWait),
	})
	if err != nil {
		return "", "", fmt.Errorf("limiter identity: %w", err)
	}
	return string(lb), string(lb) + string(kb), nil
}

// provisionState takes the limiter state for h's configuration from the
// pool, building it if no running configuration holds it.
func (h *HeartbeatLimit) provisionState() error {
	lineage, key, err := h.identity()
	if err != nil {
		return err
	}
	val, _, err := states.LoadOrNew(key, func() (caddy.Destructor, error) {
		return h.newState(lineage)
	})
	if err != nil {
		return err
	}
	h.poolKey = key
	st := val.(*state)
	h.perClient, h.ceiling, h.pacers, h.hasher = st.perClient, st.ceiling, st.pacers, st.hasher
	h.fallback = h.hasher.Sum(nil)
	if h.Distributed != nil {
		h.Distributed.attach(st.perClient, st.instance)
	}
	if h.Cluster != nil {
		return h.attachCluster(st)
	}
	return nil
}

// newState builds the limiters for h's configuration, taking over the
// buckets, schedule, seed and instance name of the newest live state of
// the same lineage, and starts their maintenance.
func (h *HeartbeatLimit) newState(lineage string) (caddy.Destructor, error) {
	lineages.Lock()
	defer lineages.Unlock()
	var prev *state
	if live := lineages.live[lineage]; len(live) > 0 {
		prev = live[len(live)-1]
	}
	s := &state{
		lineage: lineage,
		tracked: h.tracked,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if prev != nil {
		s.hasher, s.instance = prev.hasher, prev.instance
	} else {
		seed, instance := h.seed, limiter.RandomSeed()
		if h.Distributed == nil && h.Cluster == nil {
			seed = limiter.RandomSeed()
		}
		s.hasher, s.instance = limiter.NewHasher(seed), fmt.Sprintf("%x", instance[:8])
	}
	if err := s.buildLimiters(h, prev); err != nil {
		return nil, err
	}
	lineages.live[lineage] = append(lineages.live[lineage], s)
	go s.maintain()
	return s, nil
}

// buildLimiters makes the per-client limiter and the ceiling h asks for,
// carrying over prev's where prev has them.
func (s *state) buildLimiters(h *HeartbeatLimit, prev *state) error {
	if h.interval > 0 {
		cfg := limiter.Config{Interval: h.interval, Burst: h.Burst, MaxKeys: h.MaxClients}
		if prev != nil && prev.perClient != nil {
			cfg.Clock = prev.perClient.Clock()
		}
		var err error
		if s.perClient, err = limiter.New(cfg); err != nil {
			return fmt.Errorf("rate, burst, max_clients: %w", err)
		}
		if cfg.Clock != nil {
			s.perClient.Carry(prev.perClient)
		}
	}
	if h.globalInterval > 0 {
		var clock func() int64
		if prev != nil && prev.ceiling != nil {
			clock = prev.ceiling.Clock()
		}
		var err error
		if s.ceiling, err = limiter.NewCeiling(h.globalInterval, time.Duration(*h.MaxWait), clock); err != nil {
			return fmt.Errorf("global_rate: %w", err)
		}
		if clock != nil {
			s.ceiling.Carry(prev.ceiling)
		}
	}
	return s.buildPacer(h, prev)
}

// maintain sweeps full buckets and reports the tracked-key gauge.
func (s *state) maintain() {
	defer close(s.done)
	if s.perClient == nil {
		<-s.stop
		return
	}
	gauge := time.NewTicker(gaugeEvery)
	defer gauge.Stop()
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	for {
		select {
		case <-s.stop:
			s.tracked.Sub(s.reported)
			return
		case <-sweep.C:
			s.perClient.Sweep()
		case <-gauge.C:
			n := float64(s.perClient.Len())
			s.tracked.Add(n - s.reported)
			s.reported = n
		}
	}
}

// Destruct stops the maintenance when the last configuration holding the
// state lets it go, and removes it from its lineage's live states.
func (s *state) Destruct() error {
	lineages.Lock()
	live := slices.DeleteFunc(lineages.live[s.lineage], func(x *state) bool { return x == s })
	if len(live) == 0 {
		delete(lineages.live, s.lineage)
	} else {
		lineages.live[s.lineage] = live
		s.handBackPacer(live)
	}
	lineages.Unlock()
	close(s.stop)
	<-s.done
	return nil
}

// ServeHTTP passes the request on if its client's bucket and the global
// ceiling allow it, and answers a rejection otherwise.
func (h *HeartbeatLimit) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.sepm != nil {
		beat, err := h.sepm.heartbeat(r)
		if err != nil {
			return h.refuse(w, r, err)
		}
		if !beat {
			return h.passGlobal(w, r, next)
		}
	}
	key, keyed, err := h.clientKey(r)
	if err != nil {
		return h.refuse(w, r, err)
	}
	if h.perClient != nil {
		ok, retry := h.allow(key)
		if !ok {
			reason := reasonPerClient
			if !keyed {
				reason = reasonFallback
			}
			return h.limited(w, r, key, reason, retry)
		}
	}
	if h.ceiling != nil {
		ok, retry, err := h.awaitCeiling(r)
		if err != nil {
			return err
		}
		if !ok {
			h.refund(key)
			return h.limited(w, r, key, reasonGlobal, retry)
		}
	}
	if keyed {
		h.counts.allowedKeyed.Inc()
	} else {
		h.counts.allowedFallback.Inc()
	}
	h.handOnPacer(r)
	return h.pass(w, r, key, keyed, next)
}

// awaitCeiling holds r to global_rate: a slot within max_wait (none while
// a new cluster member warms up), then the exit pacer. Not ok: r gets no
// slot, and retry is when one may free; err: the client went away.
func (h *HeartbeatLimit) awaitCeiling(r *http.Request) (ok bool, retry time.Duration, err error) {
	if h.exchange != nil {
		if warming, left := h.exchange.warming(); warming {
			return false, left, nil
		}
	}
	ok, wait := h.ceiling.ReserveBehind(h.wireBacklog())
	if !ok {
		return false, wait - time.Duration(*h.MaxWait), nil
	}
	if wait > 0 {
		h.queue.Inc()
		err := h.ceiling.Wait(wait, r.Context().Done())
		h.queue.Dec()
		if err != nil {
			return false, 0, caddyhttp.Error(499, err)
		}
	}
	if err := h.pacers.exit.Wait(r.Context()); err != nil {
		return false, 0, caddyhttp.Error(499, err)
	}
	return true, 0, nil
}

// refund gives back the token a request took from its client's bucket
// when the global ceiling then rejects it.
func (h *HeartbeatLimit) refund(key uint64) {
	if h.perClient != nil {
		h.perClient.Refund(key)
		if h.exchange != nil {
			h.exchange.refunded(key)
		}
	}
}

func (h *HeartbeatLimit) allow(key uint64) (bool, time.Duration) {
	if h.Distributed != nil {
		return h.perClient.AllowShared(key, h.Distributed.shared(key))
	}
	if h.exchange != nil {
		ok, retry := h.perClient.Allow(key)
		if ok {
			h.exchange.spent(key)
		}
		return ok, retry
	}
	return h.perClient.Allow(key)
}

// reject answers a limited request and explains it in the log.
func (h *HeartbeatLimit) reject(w http.ResponseWriter, r *http.Request, reason string, delay time.Duration) error {
	switch reason {
	case reasonPerClient:
		h.counts.limitedPerClient.Inc()
	case reasonFallback:
		h.counts.limitedFallback.Inc()
	default:
		h.counts.limitedGlobal.Inc()
	}
	retry := retrySeconds(delay, h.Jitter, rand.Float64())
	if ce := h.logger.Check(zap.DebugLevel, "heartbeat limited"); ce != nil {
		ce.Write(zap.String("reason", reason), zap.Int("retry_after", retry),
			zap.String("remote", r.RemoteAddr), zap.String("uri", r.RequestURI))
	}
	hdr := w.Header()
	hdr.Set("Retry-After", strconv.Itoa(retry))
	hdr.Set("Cache-Control", "no-store")
	if h.body == nil {
		w.WriteHeader(h.Status)
		return nil
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	body := h.body
	if repl != nil {
		repl.Set("http.heartbeat_limit.retry_after", retry)
		repl.Set("http.heartbeat_limit.reason", reason)
		body = []byte(repl.ReplaceKnown(string(h.body), ""))
	}
	hdr.Set("Content-Type", h.bodyType)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(h.Status)
	_, err := w.Write(body)
	return err
}

// refuse answers 400 to a request whose key is ambiguous, explains it in
// the log and counts it; such a request never reaches the manager.
func (h *HeartbeatLimit) refuse(w http.ResponseWriter, r *http.Request, err error) error {
	reason := response.QueryReason(err)
	if reason == response.ReasonDuplicateKey {
		h.counts.refusedDuplicateKey.Inc()
	} else {
		h.counts.refusedBadQuery.Inc()
	}
	h.logger.Info("heartbeat refused: ambiguous client key",
		zap.String("reason", reason), zap.Error(err),
		zap.String("remote", r.RemoteAddr), zap.String("uri", r.RequestURI))
	return response.RefuseQuery(w, reason)
}

// retrySeconds turns a delay into whole Retry-After seconds (at
// least 1), stretched by jitter times a random fraction u in [0, 1).
func retrySeconds(delay time.Duration, jitter, u float64) int {
	secs := math.Ceil(delay.Seconds() * (1 + jitter*u))
	if secs < 1 || math.IsNaN(secs) {
		return 1
	}
	if secs > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(secs)
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*HeartbeatLimit)(nil)
	_ caddy.Validator             = (*HeartbeatLimit)(nil)
	_ caddy.CleanerUpper          = (*HeartbeatLimit)(nil)
	_ caddyhttp.MiddlewareHandler = (*HeartbeatLimit)(nil)
)

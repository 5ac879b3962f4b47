package fleet

import (
	"math"
	"sync/atomic"
	"time"
)

// Summary is the fleet's report. The first nine fields are the keys
// docs/protocol.md lists; the rest are extras. Every client is in exactly one
// of pending, online, degraded, failing and orphaned, so those five add up
// to clients.
type Summary struct {
	// Clients is the number of simulated clients.
	Clients int64 `json:"clients"`
	// Online: the client's latest heartbeat got everything it needed: the
	// index answered and every download it required arrived and verified
	// (or the server told it to come back later with 429/503).
	Online int64 `json:"online"`
	// Orphaned: the client's latest OrphanAfter heartbeats in a row got
	// nothing usable: no server in its list answered the index, or what it
	// downloaded failed verification against the certificate it trusts.
	Orphaned int64 `json:"orphaned"`
	// Degraded: the latest heartbeat's index answered but a download it
	// needed failed (5xx, 429, timeout, other HTTP error); it retries at the
	// next heartbeat.
	Degraded int64 `json:"degraded"`
	// OnNewAnchor: the client's current server list carries at least one
	// signing certificate and none of the certificates (compared by the
	// SHA-256 of their DER) its starting list carried.
	OnNewAnchor int64 `json:"on_new_anchor"`
	// OnPlaintext: at least one server in the client's current list is
	// reached over plain HTTP.
	OnPlaintext int64 `json:"on_plaintext"`
	// Heartbeats is the number of heartbeats the fleet has run.
	Heartbeats int64 `json:"heartbeats"`
	// RateLimited counts responses 429, or 503 with Retry-After.
	RateLimited int64 `json:"rate_limited"`
	// SignatureFailures counts downloads refused by the client's
	// signature check.
	SignatureFailures int64 `json:"signature_failures"`

	// Pending: the client has not finished a heartbeat yet.
	Pending int64 `json:"pending"`
	// Failing: the latest heartbeat got nothing usable, but fewer than
	// OrphanAfter in a row.
	Failing int64 `json:"failing"`
	// EverOrphaned and EverDegraded count clients that were orphaned or
	// degraded at any point of the run.
	EverOrphaned int64 `json:"ever_orphaned"`
	EverDegraded int64 `json:"ever_degraded"`
	// Registered: clients holding a HostId.
	Registered int64 `json:"registered"`
	// ProfileUpdates and SyLinkUpdates count verified documents adopted.
	ProfileUpdates int64 `json:"profile_updates"`
	SyLinkUpdates  int64 `json:"sylink_updates"`
	// Requests is the number of HTTP requests sent.
	Requests int64 `json:"requests"`
	// RequestsPerClientPerMinute is Requests per client per minute of the
	// run: a storm's amplification shows here.
	RequestsPerClientPerMinute float64 `json:"requests_per_client_per_minute"`
	// Starved: the client's latest OrphanAfter index requests in a row were
	// all refused (429, or 503); EverStarved counts clients starved at any
	// point of the run.
	Starved     int64 `json:"starved"`
	EverStarved int64 `json:"ever_starved"`
	// ContentDownloads and ContentBytes count definitions packages
	// downloaded (the real wire).
	ContentDownloads int64 `json:"content_downloads"`
	ContentBytes     int64 `json:"content_bytes"`
	// IndexP50Ms and IndexP99Ms are index request latencies (successful
	// or not), from a log-scale histogram (about 10% resolution).
	IndexP50Ms float64 `json:"index_p50_ms"`
	IndexP99Ms float64 `json:"index_p99_ms"`
	// LagP99Ms is how late heartbeats started against their schedule: high
	// when the fleet itself is overloaded (raise --concurrency).
	LagP99Ms float64 `json:"lag_p99_ms"`
	// ElapsedSeconds is the time since the fleet started.
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	// Errors counts failures by kind; every kind is always present.
	Errors map[string]int64 `json:"errors"`
}

// clientState is where a client stands after its latest heartbeat.
type clientState uint8

const (
	statePending clientState = iota
	stateOnline
	stateDegraded
	stateFailing
	stateOrphaned
	numStates
)

// failKind names a failure for the summary's errors map.
type failKind uint8

const (
	kindTimeout failKind = iota
	kindRefused
	kindConnect
	kindTLS
	kindHTTP4xx
	kindHTTP5xx
	kindUnknownHost
	kindBadRegistration
	kindBadIndex
	kindBadSyLink
	kindOversize
	kindSignature
	numFailKinds
)

var failKindNames = [numFailKinds]string{
	kindTimeout:         "timeout",
	kindRefused:         "refused",
	kindConnect:         "connect",
	kindTLS:             "tls",
	kindHTTP4xx:         "http_4xx",
	kindHTTP5xx:         "http_5xx",
	kindUnknownHost:     "unknown_host",
	kindBadRegistration: "bad_registration",
	kindBadIndex:        "bad_index",
	kindBadSyLink:       "bad_sylink",
	kindOversize:        "oversize",
	kindSignature:       "signature",
}

// counters are updated by workers and read by Summary at any time.
type counters struct {
	states            [numStates]atomic.Int64
	onNewAnchor       atomic.Int64
	onPlaintext       atomic.Int64
	everOrphaned      atomic.Int64
	everDegraded      atomic.Int64
	registered        atomic.Int64
	heartbeats        atomic.Int64
	rateLimited       atomic.Int64
	signatureFailures atomic.Int64
	profileUpdates    atomic.Int64
	syLinkUpdates     atomic.Int64
	requests          atomic.Int64
	starved           atomic.Int64
	everStarved       atomic.Int64
	contentDownloads  atomic.Int64
	contentBytes      atomic.Int64
	errors            [numFailKinds]atomic.Int64
	indexLatency      histogram
	lag               histogram
}

// histogram counts durations in log-scale buckets: bucket i holds
// durations around 10µs × 1.1^i, up to about 10 minutes.
type histogram struct {
	buckets [histBuckets]atomic.Int64
}

const (
	histBuckets = 192
	histBase    = 10 * time.Microsecond
	histGrowth  = 1.1
)

func (h *histogram) observe(d time.Duration) {
	i := 0
	if d > histBase {
		i = int(math.Log(float64(d)/float64(histBase))/math.Log(histGrowth)) + 1
	}
	h.buckets[min(i, histBuckets-1)].Add(1)
}

// quantile returns the q-quantile in milliseconds, 0 with no data.
func (h *histogram) quantile(q float64) float64 {
	var counts [histBuckets]int64
	var total int64
	for i := range h.buckets {
		counts[i] = h.buckets[i].Load()
		total += counts[i]
	}
	if total == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(total)))
	var seen int64
	for i, n := range counts {
		seen += n
		if seen >= rank {
			upper := float64(histBase) * math.Pow(histGrowth, float64(i))
			return math.Round(upper/float64(time.Millisecond)*1000) / 1000
		}
	}
	return 0
}

func (c *counters) fail(k failKind) { c.errors[k].Add(1) }

func (c *counters) summary(clients int, elapsed time.Duration) Summary {
	s := Summary{
		Clients:           int64(clients),
		Pending:           c.states[statePending].Load(),
		Online:            c.states[stateOnline].Load(),
		Degraded:          c.states[stateDegraded].Load(),
		Failing:           c.states[stateFailing].Load(),
		Orphaned:          c.states[stateOrphaned].Load(),
		OnNewAnchor:       c.onNewAnchor.Load(),
		OnPlaintext:       c.onPlaintext.Load(),
		Heartbeats:        c.heartbeats.Load(),
		RateLimited:       c.rateLimited.Load(),
		SignatureFailures: c.signatureFailures.Load(),
		EverOrphaned:      c.everOrphaned.Load(),
		EverDegraded:      c.everDegraded.Load(),
		Registered:        c.registered.Load(),
		ProfileUpdates:    c.profileUpdates.Load(),
		SyLinkUpdates:     c.syLinkUpdates.Load(),
		Requests:          c.requests.Load(),
		Starved:           c.starved.Load(),
		EverStarved:       c.everStarved.Load(),
		ContentDownloads:  c.contentDownloads.Load(),
		ContentBytes:      c.contentBytes.Load(),
		IndexP50Ms:        c.indexLatency.quantile(0.50),
		IndexP99Ms:        c.indexLatency.quantile(0.99),
		LagP99Ms:          c.lag.quantile(0.99),
		ElapsedSeconds:    math.Round(elapsed.Seconds()*1000) / 1000,
		Errors:            make(map[string]int64, numFailKinds),
	}
	if clients > 0 && elapsed > 0 {
		s.RequestsPerClientPerMinute = math.Round(float64(s.Requests)/float64(clients)/elapsed.Minutes()*1000) / 1000
	}
	for k, name := range failKindNames {
		s.Errors[name] = c.errors[k].Load()
	}
	return s
}

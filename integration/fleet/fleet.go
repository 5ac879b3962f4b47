// Package fleet simulates the endpoint clients of a legacy manager: each
// holds a SyLink-style server list with the signing certificates it trusts,
// a TLS ceiling and a heartbeat schedule, and checks every policy and
// settings document it downloads with its own XML-DSig verifier (goxmldsig,
// independent of legacygate's policyguard). The fleet reports how many
// clients are online, degraded or orphaned as docs/protocol.md defines them, so
// it can judge a gateway, or a manager without one.
//
// Clients are driven by one scheduler (a min-heap of due times) and a fixed
// pool of workers sharing a few HTTP transports, so 100,000 clients cost a
// few hundred bytes each, not a goroutine each.
package fleet

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Flavors of manager a fleet can speak to.
const (
	FlavorSEPM         = "sepm"
	FlavorCheckpoint   = "checkpoint"
	FlavorPolicyServer = "policyserver"
)

// protocol is one flavor's heartbeat. Everything else (server lists,
// scheduling, signature checks, states, summary) is shared: a Check Point
// or PolicyServer flavor is a file implementing beat and an entry here.
type protocol interface {
	beat(f *Fleet, c *client, idx int32) result
}

var protocols = map[string]protocol{
	FlavorSEPM:         sepmProtocol{},
	FlavorCheckpoint:   checkpointProtocol{},
	FlavorPolicyServer: policyServerProtocol{},
}

// Config describes a fleet. Zero values take the documented defaults.
type Config struct {
	// Flavor is the manager protocol: "sepm" (default), "checkpoint" or
	// "policyserver". The last two take their server list from SyLink too.
	Flavor string
	// Count is the number of clients (required, at least 1).
	Count int
	// SyLink is the SyLink.xml every client starts with (required).
	SyLink []byte
	// Trust is the signing certificate for servers whose <Server> has no
	// <ServerCertificate>.
	Trust *x509.Certificate
	// Interval is the heartbeat interval; default the SyLink's
	// PushHeartbeatSeconds, else 5 minutes.
	Interval time.Duration
	// Randomize adds a uniform 0..Randomize to each interval; when Interval
	// is zero too, the SyLink's RandomizationRange is used.
	Randomize time.Duration
	// TLSMax is the TLS ceiling of the clients: "1.2" (default) or "1.0".
	TLSMax string
	// TLS10Share is the share (0..1) of clients with a TLS 1.0 ceiling
	// whatever TLSMax says.
	TLS10Share float64
	// PlaintextShare is the share (0..1) of clients whose starting list
	// reaches every server over plain HTTP on its HttpPort.
	PlaintextShare float64
	// OrphanAfter is K: a client that got nothing usable for K heartbeats
	// in a row is orphaned. Default 3.
	OrphanAfter int
	// Concurrency is the number of workers, so the most requests in flight
	// and connections per server. Default min(Count, 128).
	Concurrency int
	// Timeout bounds each request. Default 10 s.
	Timeout time.Duration
	// Seed makes which clients are plaintext/TLS 1.0 and the heartbeat
	// jitter reproducible.
	Seed uint64
	// Group is the group clients register into. Default "Default Group".
	Group string
	// NewConnectionEach disables keep-alive: a new TCP (and TLS) connection
	// per request, as many agents do.
	NewConnectionEach bool
	// LogBytes, when above zero, uploads a log of that size after each
	// successful heartbeat.
	LogBytes int
	// VerifyCache bounds the remembered verification verdicts (same bytes,
	// same certificate: same answer). Default 1024; negative disables it,
	// so every download is verified.
	VerifyCache int
	// Wire is the SEPM-style query format: WireReadable (default) or
	// WireReal (opaque h= queries, HTTP/1.0, definitions downloads, the
	// accelerated-heartbeat rule after any error).
	Wire string
	// NAT, with WireReal, puts this many clients behind each source
	// address (127.0.0.2, 127.0.0.3, …); 0 leaves the address to the system.
	NAT int
	// StartSpread, when above zero, spreads the first heartbeats over
	// 0..StartSpread instead of one interval: a storm when it is short.
	StartSpread time.Duration
	// RootCAs verifies server chains for servers with HttpsVerifyCA="1";
	// nil means the system roots.
	RootCAs *x509.CertPool
}

// Fleet is a running or finished set of simulated clients.
type Fleet struct {
	cfg       Config
	proto     protocol
	interval  time.Duration
	randomize time.Duration
	accel     time.Duration // longest accelerated heartbeat

	start     *Settings // the starting list
	plaintext *Settings // the starting list moved to HTTP
	logBody   []byte    // the log every client uploads, shared

	clients []client
	sched   *schedule
	http    *transports
	verify  verifiers
	verdict *verdicts
	adopted internTable[*Settings]
	serials internTable[string]
	count   counters
	begun   atomic.Int64 // unix nanoseconds when Run started; 0 before

	runOnce sync.Once
}

// New checks cfg and builds the clients; nothing is sent until Run.
func New(cfg Config) (*Fleet, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	start, err := ParseSyLink(cfg.SyLink, cfg.Trust)
	if err != nil {
		return nil, fmt.Errorf("fleet: starting SyLink: %w", err)
	}
	f := &Fleet{
		cfg:     cfg,
		proto:   protocols[cfg.Flavor],
		start:   start,
		sched:   newSchedule(cfg.Count),
		http:    newTransports(cfg.Concurrency, cfg.NewConnectionEach, cfg.RootCAs),
		verdict: newVerdicts(cfg.VerifyCache),
		adopted: newInternTable[*Settings](64),
		serials: newInternTable[string](4096),
		logBody: make([]byte, cfg.LogBytes),
	}
	f.interval, f.randomize = cfg.Interval, cfg.Randomize
	if f.interval == 0 {
		f.interval = 5 * time.Minute
		if start.HeartbeatSeconds > 0 {
			f.interval = time.Duration(start.HeartbeatSeconds) * time.Second
		}
		if f.randomize == 0 {
			f.randomize = time.Duration(start.RandomizationSeconds) * time.Second
		}
	}
	// SEPM's accelerated heartbeat is 0-60 s at a 5-minute interval; keep
	// the same proportion when intervals are seconds.
	f.accel = min(60*time.Second, f.interval/5)
	if cfg.PlaintextShare > 0 {
		if f.plaintext, err = start.onHTTP(); err != nil {
			return nil, fmt.Errorf("fleet: --plaintext-share: %w", err)
		}
	}
	f.buildClients()
	return f, nil
}

func (cfg *Config) defaults() error {
	if cfg.Flavor == "" {
		cfg.Flavor = FlavorSEPM
	}
	if _, ok := protocols[cfg.Flavor]; !ok {
		return fmt.Errorf("fleet: flavor %q is not supported: want %q, %q or %q", cfg.Flavor, FlavorSEPM, FlavorCheckpoint, FlavorPolicyServer)
	}
	if cfg.Count < 1 || cfg.Count > 10_000_000 {
		return fmt.Errorf("fleet: count %d must be from 1 to 10000000", cfg.Count)
	}
	if len(cfg.SyLink) == 0 {
		return errors.New("fleet: a SyLink document is required")
	}
	switch cfg.TLSMax {
	case "":
		cfg.TLSMax = TLS12
	case TLS10, TLS12:
	default:
		return fmt.Errorf("fleet: tls-max %q must be %q or %q", cfg.TLSMax, TLS10, TLS12)
	}
	for name, v := range map[string]float64{"plaintext-share": cfg.PlaintextShare, "tls10-share": cfg.TLS10Share} {
		if v < 0 || v > 1 {
			return fmt.Errorf("fleet: %s %v must be from 0 to 1", name, v)
		}
	}
	if cfg.Interval < 0 || cfg.Randomize < 0 || cfg.Timeout < 0 {
		return errors.New("fleet: interval, randomize and timeout must not be negative")
	}
	if cfg.OrphanAfter < 0 || cfg.Concurrency < 0 || cfg.LogBytes < 0 {
		return errors.New("fleet: orphan-after, concurrency and log-bytes must not be negative")
	}
	if cfg.OrphanAfter == 0 {
		cfg.OrphanAfter = 3
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = min(cfg.Count, 128)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Group == "" {
		cfg.Group = "Default Group"
	}
	if cfg.VerifyCache == 0 {
		cfg.VerifyCache = 1024
	}
	switch cfg.Wire {
	case "":
		cfg.Wire = WireReadable
	case WireReadable:
	case WireReal:
		if cfg.Flavor != FlavorSEPM {
			return fmt.Errorf("fleet: wire %q is for the sepm flavor only", cfg.Wire)
		}
	default:
		return fmt.Errorf("fleet: wire %q must be %q or %q", cfg.Wire, WireReadable, WireReal)
	}
	if cfg.NAT < 0 || cfg.StartSpread < 0 {
		return errors.New("fleet: nat and start-spread must not be negative")
	}
	if cfg.NAT > 0 && cfg.Wire != WireReal {
		return errors.New("fleet: nat needs wire real (one connection per request, each from its client's address)")
	}
	return nil
}

// buildClients assigns each client its ceiling and starting list, and
// spreads first heartbeats over one interval.
func (f *Fleet) buildClients() {
	rng := rand.New(rand.NewPCG(f.cfg.Seed, 0x5e9a))
	f.clients = make([]client, f.cfg.Count)
	f.count.states[statePending].Store(int64(f.cfg.Count))
	for i := range f.clients {
		c := &f.clients[i]
		c.settings = f.start
		c.idx = int32(i)
		c.tls10 = f.cfg.TLSMax == TLS10 || rng.Float64() < f.cfg.TLS10Share
		if f.plaintext != nil && rng.Float64() < f.cfg.PlaintextShare {
			c.settings = f.plaintext
		}
		c.sylinkSerial = f.start.Serial
		if c.settings.OnPlaintext() {
			c.onPlaintext = true
			f.count.onPlaintext.Add(1)
		}
	}
}

// Run runs the fleet until ctx ends, lets heartbeats in flight finish, and
// returns the summary. A fleet runs once.
func (f *Fleet) Run(ctx context.Context) Summary {
	f.runOnce.Do(func() { f.run(ctx) })
	return f.Summary()
}

func (f *Fleet) run(ctx context.Context) {
	begun := time.Now()
	f.begun.Store(begun.UnixNano())
	rng := rand.New(rand.NewPCG(f.cfg.Seed, 0xf1ee7))
	spread := f.interval + f.randomize
	if f.cfg.StartSpread > 0 {
		spread = f.cfg.StartSpread
	}
	for i := range f.clients {
		f.sched.add(int32(i), begun.Add(time.Duration(rng.Int64N(int64(spread)+1))))
	}
	work := make(chan dueEntry)
	var wg sync.WaitGroup
	for w := range f.cfg.Concurrency {
		wg.Go(func() { f.work(work, uint64(w)) })
	}
	f.sched.run(ctx, work)
	close(work)
	wg.Wait()
	f.http.close()
}

// work runs heartbeats handed out by the scheduler. Requests use their own
// timeout, not ctx, so a heartbeat in flight when the run ends completes
// instead of being counted as a failure.
func (f *Fleet) work(in <-chan dueEntry, id uint64) {
	rng := rand.New(rand.NewPCG(f.cfg.Seed, id))
	for e := range in {
		f.count.lag.observe(time.Since(time.Unix(0, e.at)))
		next := f.heartbeat(&f.clients[e.idx], e.idx, rng)
		f.sched.add(e.idx, time.Now().Add(next))
	}
}

// Summary is a snapshot of the counters; it may be called while running.
func (f *Fleet) Summary() Summary {
	var elapsed time.Duration
	if b := f.begun.Load(); b != 0 {
		elapsed = time.Since(time.Unix(0, b))
	}
	return f.count.summary(len(f.clients), elapsed)
}

// Interval is the heartbeat interval in use.
func (f *Fleet) Interval() time.Duration { return f.interval }

// internTable shares equal values between clients: adopted settings and
// serial strings. Bounded: when full it starts over, which only costs
// sharing, never correctness.
type internTable[V any] struct {
	mu  sync.Mutex
	max int
	m   map[string]V
}

func newInternTable[V any](max int) internTable[V] {
	return internTable[V]{max: max, m: make(map[string]V)}
}

func (t *internTable[V]) get(key string) (V, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.m[key]
	return v, ok
}

func (t *internTable[V]) put(key string, v V) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= t.max {
		clear(t.m)
	}
	t.m[key] = v
}

// intern returns a shared copy of s.
func (f *Fleet) intern(s string) string {
	if v, ok := f.serials.get(s); ok {
		return v
	}
	f.serials.put(s, s)
	return s
}

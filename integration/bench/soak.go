package bench

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/manager"
)

// SoakConfig is one fleet soak: a large fleet and a flood of spoofed client
// keys against one gateway, its memory sampled over time.
type SoakConfig struct {
	// Legacygate is the legacygate binary.
	Legacygate string
	// Clients is the fleet size. Default 100,000.
	Clients int
	// Duration of the soak. Default 10 minutes.
	Duration time.Duration
	// Interval is the fleet's heartbeat interval (each client adds a random
	// 0..Interval). Default 2 minutes.
	Interval time.Duration
	// Warmup is the start of the run excluded from the flatness judgement;
	// default a third of Duration.
	Warmup time.Duration
	// Sample is the time between two samples. Default 5 s.
	Sample time.Duration
	// FloodRate is spoofed-key heartbeats per second (random host ids).
	// Default 200; 0 turns the flood off only when FloodOff is set.
	FloodRate int
	// MaxKeys is heartbeat_limit's max_clients. Default 120,000, so the
	// fleet plus the flood reach the bound and eviction runs.
	MaxKeys int
	// ProfileSize of the manager's signed policy. Default 16 KiB, so the
	// fleet's first downloads do not starve a small machine.
	ProfileSize int
	// Concurrency is the fleet's worker count. Default 256.
	Concurrency int
	// PNG, when set, is where the plot is written.
	PNG string
	// Dir holds configurations and logs; default a temporary directory.
	Dir string
	// Log receives one line per sample; default discard.
	Log io.Writer
}

// SoakSample is one point of the series.
type SoakSample struct {
	Seconds   float64 `json:"t_seconds"`
	RSSMB     float64 `json:"rss_mb"`
	RPS       float64 `json:"requests_per_second"`
	Heartbeat int64   `json:"fleet_heartbeats"`
	Flood     int64   `json:"flood_requests"`
}

// SoakReport is the series and the verdict.
type SoakReport struct {
	Machine        Machine          `json:"machine"`
	Clients        int              `json:"clients"`
	Duration       string           `json:"duration"`
	Warmup         string           `json:"warmup"`
	FloodRate      int              `json:"flood_rate"`
	MaxKeys        int              `json:"max_keys"`
	Samples        []SoakSample     `json:"samples"`
	WarmupPeakMB   float64          `json:"warmup_peak_rss_mb"`
	LastHalfPeakMB float64          `json:"last_half_peak_rss_mb"`
	PeakRSSMB      float64          `json:"peak_rss_mb"`
	Flat           bool             `json:"flat"`
	FloodSent      int64            `json:"flood_sent"`
	FloodLimited   int64            `json:"flood_limited"`
	FloodErrors    int64            `json:"flood_errors"`
	Fleet          fleet.Summary    `json:"fleet"`
	ManagerCounts  map[string]int64 `json:"manager_requests"`
}

func (c *SoakConfig) defaults() {
	if c.Clients <= 0 {
		c.Clients = 100_000
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Minute
	}
	if c.Interval <= 0 {
		c.Interval = 2 * time.Minute
	}
	if c.Warmup <= 0 {
		c.Warmup = c.Duration / 3
	}
	if c.Sample <= 0 {
		c.Sample = 5 * time.Second
	}
	if c.FloodRate < 0 {
		c.FloodRate = 0
	}
	if c.MaxKeys <= 0 {
		c.MaxKeys = 120_000
	}
	if c.ProfileSize <= 0 {
		c.ProfileSize = 16 << 10
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 256
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// Soak runs the fleet and the flood against one gateway (the full chain, in
// front of a TLS 1.0 / SHA-1 manager) and judges whether its memory is flat
// after warm-up: the peak RSS of the last half at most 1.1 × the peak at the
// end of warm-up.
func Soak(ctx context.Context, cfg SoakConfig) (*SoakReport, error) {
	cfg.defaults()
	mach := machine()
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "legacygate-soak-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	}
	m, err := startManager(tls.VersionTLS10, tls.VersionTLS10, certs.SHA1, manager.SignRSASHA1, cfg.ProfileSize)
	if err != nil {
		return nil, fmt.Errorf("starting the manager: %w", err)
	}
	defer m.Close()
	g, base, signing, err := startSoakGateway(cfg, m)
	if err != nil {
		return nil, err
	}
	defer g.stop()

	f, err := soakFleet(cfg, m, base, signing)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	fl := &flood{url: base + "/secars/secars.dll?action=index&hostid="}
	var wg sync.WaitGroup
	var summary fleet.Summary
	wg.Go(func() { summary = f.Run(ctx) })
	if cfg.FloodRate > 0 {
		wg.Go(func() { fl.run(ctx, cfg.FloodRate) })
	}
	samples := sampleGateway(ctx, cfg, g.tree(), f, fl)
	wg.Wait()

	mach.LoadAfter = loadAverage()
	rep := &SoakReport{Machine: mach, Clients: cfg.Clients, Duration: cfg.Duration.String(),
		Warmup: cfg.Warmup.String(), FloodRate: cfg.FloodRate, MaxKeys: cfg.MaxKeys, Samples: samples,
		FloodSent: fl.sent.Load(), FloodLimited: fl.limited.Load(), FloodErrors: fl.errors.Load(),
		Fleet: summary, ManagerCounts: m.RequestCounts()}
	rep.judge(cfg)
	if cfg.PNG != "" {
		if err := writePlot(cfg.PNG, samples, cfg.Warmup.Seconds()); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// judge fills the peaks and the verdict.
func (r *SoakReport) judge(cfg SoakConfig) {
	half := cfg.Duration.Seconds() / 2
	for _, s := range r.Samples {
		r.PeakRSSMB = max(r.PeakRSSMB, s.RSSMB)
		if s.Seconds <= cfg.Warmup.Seconds() {
			r.WarmupPeakMB = max(r.WarmupPeakMB, s.RSSMB)
		}
		if s.Seconds >= half {
			r.LastHalfPeakMB = max(r.LastHalfPeakMB, s.RSSMB)
		}
	}
	r.Flat = r.WarmupPeakMB > 0 && r.LastHalfPeakMB > 0 && r.LastHalfPeakMB <= 1.1*r.WarmupPeakMB
}

// startSoakGateway runs the full chain with a realistic per-client limit:
// the fleet's heartbeats pass, the flood's spoofed keys fill the table up to
// max_clients.
func startSoakGateway(cfg SoakConfig, m *manager.Manager) (*process, string, *certs.Pair, error) {
	fr, err := newFront(cfg.Dir)
	if err != nil {
		return nil, "", nil, err
	}
	signing, err := certs.New(certs.Modern, "gateway-signing.legacygate.test", 2048)
	if err != nil {
		return nil, "", nil, err
	}
	signCert, signKey, err := signing.WriteFiles(cfg.Dir, "gateway-signing")
	if err != nil {
		return nil, "", nil, err
	}
	mgrCert, err := writeFile(cfg.Dir, "manager.crt", m.Pair().CertPEM())
	if err != nil {
		return nil, "", nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, "", nil, err
	}
	limit := fmt.Sprintf("rate 1/%s\n\t\tburst 3\n\t\tmax_clients %d\n\t\tstatus 503\n\t\tjitter 0.5", (cfg.Interval / 2).String(), cfg.MaxKeys)
	dir := filepath.Join(cfg.Dir, "gateway")
	text, err := gatewayCaddyfile(dir, port, fr, m, mgrCert, signKey, signCert, true, limit)
	if err != nil {
		return nil, "", nil, err
	}
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	p, err := startCaddy("legacygate", cfg.Legacygate, dir, "", text, base)
	if err != nil {
		return nil, "", nil, err
	}
	return p, base, signing, nil
}

// soakFleet builds a fleet whose SyLink lists only the gateway, trusting
// the gateway's signing certificate, at the manager's current settings
// serial (so clients keep this list rather than adopt the manager's).
func soakFleet(cfg SoakConfig, m *manager.Manager, base string, signing *certs.Pair) (*fleet.Fleet, error) {
	probe, err := register(m, "soak-probe")
	if err != nil {
		return nil, err
	}
	serial, err := sylinkSerial(m, probe)
	if err != nil {
		return nil, err
	}
	var port int
	if _, err := fmt.Sscanf(base, "https://127.0.0.1:%d", &port); err != nil {
		return nil, fmt.Errorf("gateway address %q: %w", base, err)
	}
	sylink, err := fleet.BuildSyLink(&fleet.Settings{Serial: serial, Blocks: []fleet.PriorityBlock{{
		Name:    "Priority1",
		Servers: []fleet.Server{{Address: "127.0.0.1", HTTPSPort: port, VerifySignatures: true, Cert: signing.Cert}},
	}}})
	if err != nil {
		return nil, err
	}
	return fleet.New(fleet.Config{Count: cfg.Clients, SyLink: sylink, Interval: cfg.Interval,
		Randomize: cfg.Interval, Concurrency: cfg.Concurrency, Seed: 1})
}

// flood sends heartbeats with random host ids: a client (or attacker)
// spoofing keys to grow the limiter's table.
type flood struct {
	url                   string
	sent, limited, errors atomic.Int64
}

func (f *flood) run(ctx context.Context, rate int) {
	client := insecureClient(8, false)
	defer client.CloseIdleConnections()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	jobs := make(chan string, rate)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for u := range jobs {
				f.send(ctx, client, u)
			}
		})
	}
	defer wg.Wait()
	defer close(jobs)
	id := make([]byte, 16)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rand.Read(id)
		select {
		case jobs <- f.url + hex.EncodeToString(id):
		default: // the gateway is slower than the flood rate: drop, never queue without bound
		}
	}
}

func (f *flood) send(ctx context.Context, c interface {
	Do(*http.Request) (*http.Response, error)
}, u string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			f.errors.Add(1)
		}
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	f.sent.Add(1)
	if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
		f.limited.Add(1)
	}
}

// sampleGateway samples the gateway's RSS and the requests/s sent to it
// (fleet plus flood) every cfg.Sample until ctx ends.
func sampleGateway(ctx context.Context, cfg SoakConfig, tree procTree, f *fleet.Fleet, fl *flood) []SoakSample {
	start := time.Now()
	var out []SoakSample
	lastT, lastReq := start, int64(0)
	tick := time.NewTicker(cfg.Sample)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
		}
		now := time.Now()
		rss, err := tree.rss()
		if err != nil {
			fmt.Fprintf(cfg.Log, "soak: reading the gateway's RSS: %v\n", err)
			return out
		}
		s := f.Summary()
		req := s.Requests + fl.sent.Load() + fl.errors.Load()
		sample := SoakSample{Seconds: now.Sub(start).Seconds(), RSSMB: float64(rss) / (1 << 20),
			RPS: float64(req-lastReq) / now.Sub(lastT).Seconds(), Heartbeat: s.Heartbeats, Flood: fl.sent.Load()}
		out = append(out, sample)
		lastT, lastReq = now, req
		fmt.Fprintf(cfg.Log, "soak: t=%5.0fs rss=%7.1f MB req/s=%6.0f heartbeats=%d online=%d degraded=%d orphaned=%d flood=%d\n",
			sample.Seconds, sample.RSSMB, sample.RPS, s.Heartbeats, s.Online, s.Degraded, s.Orphaned, sample.Flood)
	}
}

// Print writes the series and the verdict.
func (r *SoakReport) Print(w io.Writer) {
	fmt.Fprintf(w, "machine: %d CPUs, %s, load average %s (before) / %s (after)\n", r.Machine.CPUs, r.Machine.Model, r.Machine.LoadBefore, r.Machine.LoadAfter)
	fmt.Fprintf(w, "soak: %d clients, %s, flood %d/s of spoofed keys, max_clients %d\n", r.Clients, r.Duration, r.FloodRate, r.MaxKeys)
	fmt.Fprintln(w, "t_s\trss_mb\treq_s")
	for _, s := range r.Samples {
		fmt.Fprintf(w, "%.0f\t%.1f\t%.0f\n", s.Seconds, s.RSSMB, s.RPS)
	}
	verdict := "FLAT"
	if !r.Flat {
		verdict = "GROWING"
	}
	fmt.Fprintf(w, "peak RSS %.1f MB; end of warm-up (%s) peak %.1f MB; last half peak %.1f MB (limit 1.1 x): %s\n",
		r.PeakRSSMB, r.Warmup, r.WarmupPeakMB, r.LastHalfPeakMB, verdict)
	fmt.Fprintf(w, "fleet: online %d, degraded %d, orphaned %d, heartbeats %d, rate_limited %d, errors %v\n",
		r.Fleet.Online, r.Fleet.Degraded, r.Fleet.Orphaned, r.Fleet.Heartbeats, r.Fleet.RateLimited, r.Fleet.Errors)
	rate := 0.0
	if n := len(r.Samples); n > 0 {
		rate = float64(r.FloodSent) / r.Samples[n-1].Seconds
	}
	fmt.Fprintf(w, "flood: sent %d (%.0f/s of the %d/s asked: it never queues past a saturated gateway), limited %d, errors %d\n",
		r.FloodSent, rate, r.FloodRate, r.FloodLimited, r.FloodErrors)
	fmt.Fprintf(w, "manager saw %v\n", r.ManagerCounts)
}

// Package bench measures legacygate against what an administrator would
// otherwise put in front of a manager, stock Caddy's reverse_proxy, nginx and
// HAProxy, on loopback, and soaks one gateway with a large simulated fleet.
//
// Run measures the gateway (a real `legacygate run` process with
// heartbeat_limit, policy_guard and the legacy_tls transport), stock Caddy
// (the same binary, a Caddyfile of stock directives only), nginx and HAProxy,
// driven alternately round after round so a busy machine hurts them alike.
//
// Fairness: stock Caddy, nginx and HAProxy cannot reach a TLS 1.0 / SHA-1
// manager at all, so the comparison runs against one emulated manager
// speaking TLS 1.2 with a modern certificate, reached by all four (the
// gateway through legacy_tls with the pin, the others verifying the
// certificate and its name). The gateway in front of a TLS 1.0 / SHA-1
// manager ("legacygate-tls10") is measured in the same rounds and reported
// beside them.
package bench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

// The paths a run can measure.
const (
	PathHeartbeat = "heartbeat" // the index, about 300 B out, keep-alive
	PathPolicy    = "policy"    // the 100 KB signed profile, cache hit, keep-alive
	PathHandshake = "handshake" // the index over a new TLS connection per request
)

// AllPaths is every path, in the order they are measured.
var AllPaths = []string{PathHeartbeat, PathPolicy, PathHandshake}

// Target names.
const (
	TargetGateway      = "legacygate"
	TargetGatewayTLS10 = "legacygate-tls10"
	TargetCaddy        = "caddy"
	TargetNginx        = "nginx"
	TargetHAProxy      = "haproxy"
)

// Config is one benchmark run.
type Config struct {
	// Legacygate is the legacygate binary (FindLegacygate).
	Legacygate string
	// Nginx is the nginx binary; empty leaves nginx out.
	Nginx string
	// HAProxy is the haproxy binary; empty leaves HAProxy out.
	HAProxy string
	// Wrk is the wrk binary for the keep-alive paths; empty uses the Go
	// generator. The handshake path always uses the Go generator.
	Wrk string
	// Duration of each target's share of a round. Default 10 s.
	Duration time.Duration
	// Rounds is how many times each target is measured per path. Default 3.
	Rounds int
	// Connections is the number of concurrent connections. Default 32.
	Connections int
	// Paths to measure; default AllPaths.
	Paths []string
	// Dir holds configurations, certificates and logs; default a temporary
	// directory removed at the end.
	Dir string
	// TargetCPUs, when set, runs every target on these CPUs only, and this
	// process (the emulated managers, the Go generator and wrk) on the
	// others, so that a target's throughput is what its CPUs give, not
	// what it wins from the load generator. Linux only.
	TargetCPUs []int
	// Log receives progress lines; default discard.
	Log io.Writer

	pin cpuSplit // set by Run from TargetCPUs
}

// Report is what Run measured. Figures are medians over the rounds.
type Report struct {
	Machine     Machine      `json:"machine"`
	Duration    string       `json:"duration_per_round"`
	Rounds      int          `json:"rounds"`
	Connections int          `json:"connections"`
	Paths       []PathReport `json:"paths"`
}

// Machine describes where the figures come from.
type Machine struct {
	CPUs        int    `json:"cpus"`
	TargetCPUs  string `json:"target_cpus,omitempty"` // taskset's list; empty: not pinned
	LoadCPUs    string `json:"load_cpus,omitempty"`   // the CPUs of the load generator and the managers
	Model       string `json:"model"`
	LoadBefore  string `json:"load_average_before"`
	LoadAfter   string `json:"load_average_after"`
	GoVersion   string `json:"go_version"`
	WithNginx   bool   `json:"nginx"`
	WithHAProxy bool   `json:"haproxy"`
}

// PathReport is one path's figures per target, and the gateway's ratios.
type PathReport struct {
	Path      string         `json:"path"`
	Generator string         `json:"generator"`
	Targets   []TargetReport `json:"targets"`
	Ratios    []Ratio        `json:"ratios"`
}

// TargetReport is one target's medians on one path.
type TargetReport struct {
	Name     string    `json:"name"`
	RPS      float64   `json:"requests_per_second"`
	P50Ms    float64   `json:"p50_ms"`
	P99Ms    float64   `json:"p99_ms"`
	CPUUs    float64   `json:"cpu_us_per_request"`
	PeakRSS  float64   `json:"peak_rss_mb"`
	Errors   int64     `json:"errors"`
	RoundRPS []float64 `json:"round_requests_per_second"`
	// ManagerHandshakesPer1000 is the TLS handshakes the manager saw per
	// 1,000 requests answered: what the target's upstream pool costs it.
	// Absent from reports older than the count.
	ManagerHandshakesPer1000 *float64 `json:"manager_handshakes_per_1000,omitempty"`
}

// Ratio is a gateway figure divided by a baseline's (requests/s above 1 is
// better; latency, CPU and memory below 1 are better).
type Ratio struct {
	Target   string  `json:"target"`
	Baseline string  `json:"baseline"`
	RPS      float64 `json:"requests_per_second"`
	P50      float64 `json:"p50"`
	P99      float64 `json:"p99"`
	CPU      float64 `json:"cpu_per_request"`
	PeakRSS  float64 `json:"peak_rss"`
}

func (c *Config) defaults() error {
	if c.Legacygate == "" {
		return errors.New("bench: no legacygate binary")
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	if c.Connections <= 0 {
		c.Connections = 32
	}
	if len(c.Paths) == 0 {
		c.Paths = AllPaths
	}
	for _, p := range c.Paths {
		if !slices.Contains(AllPaths, p) {
			return fmt.Errorf("bench: unknown path %q (want %s)", p, strings.Join(AllPaths, ", "))
		}
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// target is one proxy under test.
type target struct {
	name   string
	proc   *process
	base   string // https://127.0.0.1:PORT
	hostID string // registered at the manager behind it
	mgr    *manager.Manager
}

func (t *target) url(path string) string {
	action := "index"
	if path == PathPolicy {
		action = "profile"
	}
	return t.base + "/secars/secars.dll?action=" + action + "&hostid=" + t.hostID
}

// Run starts the managers and the proxies, measures every path and stops
// everything it started.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "legacygate-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	}
	rep := &Report{Duration: cfg.Duration.String(), Rounds: cfg.Rounds, Connections: cfg.Connections,
		Machine: machine()}
	rep.Machine.WithNginx = cfg.Nginx != ""
	rep.Machine.WithHAProxy = cfg.HAProxy != ""
	if len(cfg.TargetCPUs) > 0 {
		pin, err := pinLoad(cfg.TargetCPUs)
		if err != nil {
			return nil, err
		}
		cfg.pin = pin
		rep.Machine.TargetCPUs, rep.Machine.LoadCPUs = pin.targets, pin.load
	}

	lab, err := startLab(cfg)
	if lab != nil {
		defer lab.close()
	}
	if err != nil {
		return nil, err
	}
	for _, path := range cfg.Paths {
		pr, err := lab.measure(ctx, cfg, path)
		if err != nil {
			return nil, err
		}
		rep.Paths = append(rep.Paths, pr)
	}
	rep.Machine.LoadAfter = loadAverage()
	return rep, nil
}

// lab is the managers and the proxies of one run.
type lab struct {
	managers []*manager.Manager
	targets  []*target
}

func (l *lab) close() {
	for _, t := range l.targets {
		t.proc.stop()
	}
	for _, m := range l.managers {
		m.Close()
	}
}

func startLab(cfg Config) (*lab, error) {
	l := &lab{}
	modern, err := startManager(tls.VersionTLS12, tls.VersionTLS12, certs.Modern, manager.SignRSASHA256, 0)
	if err != nil {
		return l, fmt.Errorf("starting the TLS 1.2 manager: %w", err)
	}
	l.managers = append(l.managers, modern)
	legacy, err := startManager(tls.VersionTLS10, tls.VersionTLS10, certs.SHA1, manager.SignRSASHA1, 0)
	if err != nil {
		return l, fmt.Errorf("starting the TLS 1.0 manager: %w", err)
	}
	l.managers = append(l.managers, legacy)

	fr, err := newFront(cfg.Dir)
	if err != nil {
		return l, err
	}
	signing, err := certs.New(certs.Modern, "gateway-signing.legacygate.test", 2048)
	if err != nil {
		return l, err
	}
	signCert, signKey, err := signing.WriteFiles(cfg.Dir, "gateway-signing")
	if err != nil {
		return l, err
	}
	modernCert, err := writeFile(cfg.Dir, "manager-tls12.crt", modern.Pair().CertPEM())
	if err != nil {
		return l, err
	}
	legacyCert, err := writeFile(cfg.Dir, "manager-tls10.crt", legacy.Pair().CertPEM())
	if err != nil {
		return l, err
	}

	specs := []struct {
		name string
		mgr  *manager.Manager
		site func(port int) (string, error)
	}{
		{TargetGateway, modern, func(port int) (string, error) {
			return gatewayCaddyfile(filepath.Join(cfg.Dir, TargetGateway), port, fr, modern, modernCert, signKey, signCert, false, generousLimit)
		}},
		{TargetGatewayTLS10, legacy, func(port int) (string, error) {
			return gatewayCaddyfile(filepath.Join(cfg.Dir, TargetGatewayTLS10), port, fr, legacy, legacyCert, signKey, signCert, true, generousLimit)
		}},
		{TargetCaddy, modern, func(port int) (string, error) {
			return stockCaddyfile(filepath.Join(cfg.Dir, TargetCaddy), port, fr, modern, modernCert)
		}},
	}
	for _, s := range specs {
		port, err := freePort()
		if err != nil {
			return l, err
		}
		text, err := s.site(port)
		if err != nil {
			return l, err
		}
		base := fmt.Sprintf("https://127.0.0.1:%d", port)
		fmt.Fprintf(cfg.Log, "bench: starting %s on %s\n", s.name, base)
		p, err := startCaddy(s.name, cfg.Legacygate, filepath.Join(cfg.Dir, s.name), cfg.pin.targets, text, base)
		if err != nil {
			return l, err
		}
		t := &target{name: s.name, proc: p, base: base, mgr: s.mgr}
		l.targets = append(l.targets, t)
		if t.hostID, err = register(s.mgr, "bench-"+s.name); err != nil {
			return l, err
		}
	}
	baselines := []struct {
		name, bin string
		start     func(bin, dir, cpus, upstream string, port int, f front, managerCert string) (*process, error)
	}{
		{TargetNginx, cfg.Nginx, startNginx},
		{TargetHAProxy, cfg.HAProxy, startHAProxy},
	}
	for _, b := range baselines {
		if b.bin == "" {
			continue
		}
		port, err := freePort()
		if err != nil {
			return l, err
		}
		base := fmt.Sprintf("https://127.0.0.1:%d", port)
		fmt.Fprintf(cfg.Log, "bench: starting %s on %s\n", b.name, base)
		p, err := b.start(b.bin, filepath.Join(cfg.Dir, b.name), cfg.pin.targets, modern.Addrs().HTTPS, port, fr, modernCert)
		if err != nil {
			return l, err
		}
		t := &target{name: b.name, proc: p, base: base, mgr: modern}
		l.targets = append(l.targets, t)
		if t.hostID, err = register(modern, "bench-"+b.name); err != nil {
			return l, err
		}
	}
	return l, nil
}

// generousLimit lets every benchmark request through: the throughput runs
// measure the limiter's cost, not its rejections.
const generousLimit = "rate 1000000/1s\n\t\tburst 1000000"

// gatewayCaddyfile is the full chain as Caddyfile.example ships it:
// manager_request, heartbeat_limit, policy_guard, and reverse_proxy through
// legacy_tls pinned to the manager.
func gatewayCaddyfile(dir string, port int, fr front, m *manager.Manager, managerCert, signKey, signCert string, legacy bool, limit string) (string, error) {
	globals, err := caddyGlobals(dir, shippedLogging)
	if err != nil {
		return "", err
	}
	sha1, minVersion := "", "tls1.2"
	if legacy {
		sha1, minVersion = "\n\t\tallow_sha1", "tls1.0"
	}
	return globals + fmt.Sprintf(`https://127.0.0.1:%d {
	tls %s %s
	manager_request {
		allow GET POST /secars/secars.dll
		allow POST /secreg/secreg.dll
		decision_keys action hostid
	}
	heartbeat_limit /secars/secars.dll {
		key {query.hostid} {client_ip}
		%s
	}
	policy_guard /secars/secars.dll {
		upstream_cert %s
		signing_key %s %s
		roots Profile ServerSettings%s
		allow_non_xml text/plain
	}
	reverse_proxy %s {
		transport legacy_tls {
			pin %s
			min_version %s
			tls_server_name %s
		}
	}
}
`, port, fr.certFile, fr.keyFile, limit, managerCert, signKey, signCert, sha1, m.Addrs().HTTPS, m.Pin(), minVersion, managerName), nil
}

// shippedLogging is Caddyfile.example's default log: reverse_proxy's own
// logger off (docs/modules/legacy_tls.md#logging). Stock Caddy keeps
// Caddy's default logging.
const shippedLogging = "\tlog default {\n\t\texclude http.handlers.reverse_proxy\n\t}\n"

// stockCaddyfile uses stock directives only: reverse_proxy over Caddy's http
// transport, verifying the manager's certificate.
func stockCaddyfile(dir string, port int, fr front, m *manager.Manager, managerCert string) (string, error) {
	globals, err := caddyGlobals(dir, "")
	if err != nil {
		return "", err
	}
	return globals + fmt.Sprintf(`https://127.0.0.1:%d {
	tls %s %s
	reverse_proxy https://%s {
		transport http {
			tls_trust_pool file %s
			tls_server_name %s
			max_conns_per_host 64
			keepalive_idle_conns_per_host 64
		}
	}
}
`, port, fr.certFile, fr.keyFile, m.Addrs().HTTPS, managerCert, managerName), nil
}

// measure runs the rounds of one path: every target once per round, in turn,
// each round starting one target later.
func (l *lab) measure(ctx context.Context, cfg Config, path string) (PathReport, error) {
	var gen generator = goLoad{newConnEach: path == PathHandshake}
	if cfg.Wrk != "" && path != PathHandshake {
		gen = wrkLoad{bin: cfg.Wrk}
	}
	pr := PathReport{Path: path, Generator: gen.name()}
	client := insecureClient(1, true)
	for _, t := range l.targets {
		// Checks the path answers, and fills policy_guard's cache.
		if !fetch(ctx, client, t.url(path)) {
			return pr, fmt.Errorf("bench: %s does not answer %s with 2xx", t.name, t.url(path))
		}
	}
	type sample struct{ rps, p50, p99, cpu, handshakes float64 }
	samples := make([][]sample, len(l.targets))
	errs := make([]int64, len(l.targets))
	for round := 1; round <= cfg.Rounds; round++ {
		// Each round starts with the next target, so no target always runs
		// first (after another path's load) or last.
		for k := range l.targets {
			i := (k + round - 1) % len(l.targets)
			t := l.targets[i]
			cpu0, err := t.proc.tree().cpuSeconds()
			if err != nil {
				return pr, err
			}
			hs0 := t.mgr.Handshakes()
			res, err := gen.run(ctx, t.url(path), cfg.Connections, cfg.Duration)
			handshakes := t.mgr.Handshakes() - hs0
			if err != nil {
				return pr, err
			}
			cpu1, err := t.proc.tree().cpuSeconds()
			if err != nil {
				return pr, err
			}
			cpuUs, perK := 0.0, 0.0
			if res.Requests > 0 {
				cpuUs = (cpu1 - cpu0) * 1e6 / float64(res.Requests)
				perK = float64(handshakes) * 1000 / float64(res.Requests)
			}
			samples[i] = append(samples[i], sample{res.rps(), ms(res.P50), ms(res.P99), cpuUs, perK})
			errs[i] += res.Errors
			fmt.Fprintf(cfg.Log, "bench: %s round %d %-17s %9.0f req/s p50 %6.2f ms p99 %7.2f ms cpu %6.0f µs/req errors %d\n",
				path, round, t.name, res.rps(), ms(res.P50), ms(res.P99), cpuUs, res.Errors)
			if ctx.Err() != nil {
				return pr, ctx.Err()
			}
		}
	}
	for i, t := range l.targets {
		peak, err := t.proc.tree().peakRSS()
		if err != nil {
			return pr, err
		}
		tr := TargetReport{Name: t.name, Errors: errs[i], PeakRSS: float64(peak) / (1 << 20)}
		pick := func(f func(sample) float64) float64 {
			xs := make([]float64, 0, len(samples[i]))
			for _, s := range samples[i] {
				xs = append(xs, f(s))
			}
			return median(xs)
		}
		tr.RPS = pick(func(s sample) float64 { return s.rps })
		tr.P50Ms = pick(func(s sample) float64 { return s.p50 })
		tr.P99Ms = pick(func(s sample) float64 { return s.p99 })
		tr.CPUUs = pick(func(s sample) float64 { return s.cpu })
		perK := pick(func(s sample) float64 { return s.handshakes })
		tr.ManagerHandshakesPer1000 = &perK
		for _, s := range samples[i] {
			tr.RoundRPS = append(tr.RoundRPS, s.rps)
		}
		pr.Targets = append(pr.Targets, tr)
	}
	pr.Ratios = ratios(pr.Targets)
	return pr, nil
}

// baselineNames are the targets the gateway is compared with.
var baselineNames = []string{TargetCaddy, TargetNginx, TargetHAProxy}

// ratios compares each gateway target with each baseline.
func ratios(ts []TargetReport) []Ratio {
	var out []Ratio
	for _, g := range ts {
		if g.Name != TargetGateway && g.Name != TargetGatewayTLS10 {
			continue
		}
		for _, b := range ts {
			if !slices.Contains(baselineNames, b.Name) {
				continue
			}
			out = append(out, Ratio{Target: g.Name, Baseline: b.Name,
				RPS: div(g.RPS, b.RPS), P50: div(g.P50Ms, b.P50Ms), P99: div(g.P99Ms, b.P99Ms),
				CPU: div(g.CPUUs, b.CPUUs), PeakRSS: div(g.PeakRSS, b.PeakRSS)})
		}
	}
	return out
}

func div(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Print writes the report as tables.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "machine: %d CPUs, %s, load average %s (before) / %s (after), %s\n",
		r.Machine.CPUs, r.Machine.Model, r.Machine.LoadBefore, r.Machine.LoadAfter, r.Machine.GoVersion)
	if r.Machine.TargetCPUs != "" {
		fmt.Fprintf(w, "targets on CPU %s; load generator and managers on CPU %s\n", r.Machine.TargetCPUs, r.Machine.LoadCPUs)
	}
	for _, p := range r.Paths {
		fmt.Fprintf(w, "\npath %s: %s, %d connections, median of %d rounds of %s\n", p.Path, p.Generator, r.Connections, r.Rounds, r.Duration)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "target\treq/s\tp50 ms\tp99 ms\tCPU µs/req\tpeak RSS MB\terrors\t")
		for _, t := range p.Targets {
			fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t%.0f\t%.1f\t%d\t\n", t.Name, t.RPS, t.P50Ms, t.P99Ms, t.CPUUs, t.PeakRSS, t.Errors)
		}
		fmt.Fprintln(tw, "\t\t\t\t\t\t\t")
		fmt.Fprintln(tw, "ratio\treq/s\tp50\tp99\tCPU/req\tpeak RSS\t\t")
		for _, q := range p.Ratios {
			fmt.Fprintf(tw, "%s / %s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\t\n", q.Target, q.Baseline, q.RPS, q.P50, q.P99, q.CPU, q.PeakRSS)
		}
		tw.Flush()
	}
}

// JSON writes the report as one JSON document.
func (r *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Model: cpuModel(), LoadBefore: loadAverage(), GoVersion: runtime.Version()}
	return m
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown"
}

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

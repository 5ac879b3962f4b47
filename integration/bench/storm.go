package bench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

// StormConfig is one storm run: Clients simulated clients, on Connections
// keep-alive TLS connections (one each by default), heartbeat at the gateway (the example's
// heartbeat_limit, policy_guard and legacy_tls in front of a TLS 1.2
// manager) and at stock Caddy's reverse_proxy in front of the same manager,
// one after the other, at each offered rate in Rates.
type StormConfig struct {
	// Legacygate is the legacygate binary (FindLegacygate).
	Legacygate string
	// Clients is how many clients storm. Default 10,000.
	Clients int
	// Connections is how many keep-alive TLS connections carry their
	// heartbeats, each sent on whichever is free. Default Clients: one each.
	Connections int
	// Rates are the offered heartbeats/s, in total, one step each. Default 3,000.
	Rates []int
	// Duration of each step, per target. Default 20 s.
	Duration time.Duration
	// GlobalRate is heartbeat_limit's global_rate per second. Default 200,
	// as in Caddyfile.example.
	GlobalRate int
	// MaxWait is heartbeat_limit's max_wait. Default 2 s, as in Caddyfile.example.
	MaxWait time.Duration
	// Goal is the rate the gateway must sustain. Default 3,000/s.
	Goal int
	// RejectP99 is the most a rejection's p99 may take. Default 5 ms.
	RejectP99 time.Duration
	// NoCaddy leaves stock Caddy out.
	NoCaddy bool
	// Stall, when set, freezes the gateway's process this long (SIGSTOP)
	// once every StallEvery during each of its steps, as a long GC pause
	// would: the manager must still see at most global_rate.
	Stall time.Duration
	// StallEvery is how often a stall starts. Default 2 s.
	StallEvery time.Duration
	// Dir holds configurations, certificates and logs; default a temporary
	// directory removed at the end.
	Dir string
	// Log receives progress lines; default discard.
	Log io.Writer
}

// StormReport is what a storm run measured.
type StormReport struct {
	Machine     Machine     `json:"machine"`
	Clients     int         `json:"clients"`
	Connections int         `json:"connections"`
	Duration    string      `json:"duration_per_step"`
	GlobalRate  int         `json:"global_rate"`
	MaxWait     string      `json:"max_wait"`
	Stall       string      `json:"stall,omitempty"`
	StallEvery  string      `json:"stall_every,omitempty"`
	Goal        int         `json:"goal"`
	RejectP99   float64     `json:"reject_p99_goal_ms"`
	Steps       []StormStep `json:"steps"`
	// Sustained is the highest offered rate at which the gateway met every
	// goal; Pass is Sustained >= Goal.
	Sustained int  `json:"sustained"`
	Pass      bool `json:"pass"`
}

// StormStep is one offered rate, per target.
type StormStep struct {
	Rate    int           `json:"offered_rate"`
	Targets []StormTarget `json:"targets"`
}

// StormTarget is one target's figures during one step. Latencies run from
// sending a heartbeat to the end of its answer.
type StormTarget struct {
	Name    string `json:"name"`
	Connect string `json:"connect_time"`
	// Elapsed is how long the step took, to the last answer: longer than
	// the step's duration when heartbeats queued for a free connection.
	Elapsed  string           `json:"elapsed"`
	Answered float64          `json:"answered_per_second"`
	Allowed  int64            `json:"allowed"`
	Rejected int64            `json:"rejected"`
	Reasons  map[string]int64 `json:"rejected_by_reason,omitempty"`
	// ReasonP99Ms is each rejection reason's p99 latency.
	ReasonP99Ms   map[string]float64 `json:"rejected_p99_ms_by_reason,omitempty"`
	Errors        int64              `json:"errors"`
	BadRetry      int64              `json:"rejections_without_retry_after"`
	LateShare     float64            `json:"late_share"`
	AllowedP50Ms  float64            `json:"allowed_p50_ms"`
	AllowedP99Ms  float64            `json:"allowed_p99_ms"`
	RejectedP50Ms float64            `json:"rejected_p50_ms"`
	RejectedP99Ms float64            `json:"rejected_p99_ms"`
	RejectedMaxMs float64            `json:"rejected_max_ms"`
	ManagerRate   float64            `json:"manager_per_second"`
	ManagerPeak   int64              `json:"manager_busiest_second"`
	CPUUs         float64            `json:"cpu_us_per_answer"`
	RSSMB         float64            `json:"rss_mb"`
	// IdleKBPerConn is what each open, not yet used connection added to
	// the target's resident memory: RSS once every connection is open,
	// less RSS before the first was opened, over the connections.
	IdleKBPerConn float64 `json:"idle_kb_per_connection"`
	// Verdict is empty when the gateway met every goal at this rate, else
	// why not (stock Caddy has no goals and no verdict).
	Verdict string `json:"verdict,omitempty"`
}

func (c *StormConfig) defaults() error {
	if c.Legacygate == "" {
		return errors.New("storm: no legacygate binary")
	}
	setDefault(&c.Clients, 10_000)
	setDefault(&c.Connections, c.Clients)
	setDefault(&c.GlobalRate, 200)
	setDefault(&c.Goal, 3000)
	if len(c.Rates) == 0 {
		c.Rates = []int{3000}
	}
	for _, r := range c.Rates {
		if r <= 0 {
			return fmt.Errorf("storm: offered rate %d: want a positive number of heartbeats/s", r)
		}
	}
	if c.Duration <= 0 {
		c.Duration = 20 * time.Second
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 2 * time.Second
	}
	if c.RejectP99 <= 0 {
		c.RejectP99 = 5 * time.Millisecond
	}
	if c.StallEvery <= 0 {
		c.StallEvery = 2 * time.Second
	}
	if c.Stall < 0 || c.Stall >= c.StallEvery {
		return fmt.Errorf("storm: stall %v: want at least 0 and less than stall every (%v)", c.Stall, c.StallEvery)
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

func setDefault(v *int, d int) {
	if *v <= 0 {
		*v = d
	}
}

// stormLab is the manager and the targets of a storm run.
type stormLab struct {
	mgr     *manager.Manager
	targets []*target
	hosts   [][]string // per step, one host id per client
}

func (l *stormLab) close() {
	for _, t := range l.targets {
		t.proc.stop()
	}
	if l.mgr != nil {
		l.mgr.Close()
	}
}

// RunStorm starts the manager and the targets, storms each at every rate and
// stops everything it started.
func RunStorm(ctx context.Context, cfg StormConfig) (*StormReport, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "legacygate-storm-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	}
	rep := &StormReport{Machine: machine(), Clients: cfg.Clients, Connections: cfg.Connections, Duration: cfg.Duration.String(),
		GlobalRate: cfg.GlobalRate, MaxWait: cfg.MaxWait.String(), Goal: cfg.Goal, RejectP99: ms(cfg.RejectP99)}
	if cfg.Stall > 0 {
		rep.Stall, rep.StallEvery = cfg.Stall.String(), cfg.StallEvery.String()
	}
	lab := &stormLab{}
	defer lab.close()
	if err := lab.start(ctx, cfg); err != nil {
		return nil, err
	}
	for i, rate := range cfg.Rates {
		step := StormStep{Rate: rate}
		for _, t := range lab.targets {
			st, err := lab.stormOne(ctx, cfg, t, lab.hosts[i], rate)
			if err != nil {
				return nil, err
			}
			if t.name == TargetGateway {
				st.Verdict = cfg.verdict(st, rate)
				if st.Verdict == "" {
					rep.Sustained = max(rep.Sustained, rate)
				}
			}
			step.Targets = append(step.Targets, st)
		}
		rep.Steps = append(rep.Steps, step)
	}
	rep.Pass = rep.Sustained >= cfg.Goal
	rep.Machine.LoadAfter = loadAverage()
	return rep, nil
}

// stormBody is the rejection body: README's come-back-later index.
const stormBody = `<Index><Busy RetryAfter="{http.heartbeat_limit.retry_after}" Reason="{http.heartbeat_limit.reason}"/></Index>`

func (l *stormLab) start(ctx context.Context, cfg StormConfig) error {
	m, err := startManager(tls.VersionTLS12, tls.VersionTLS12, certs.Modern, manager.SignRSASHA256, 0)
	if err != nil {
		return fmt.Errorf("starting the manager: %w", err)
	}
	l.mgr = m
	fmt.Fprintf(cfg.Log, "storm: registering %d clients × %d steps\n", cfg.Clients, len(cfg.Rates))
	for range cfg.Rates {
		ids, err := registerMany(ctx, m, cfg.Clients)
		if err != nil {
			return err
		}
		l.hosts = append(l.hosts, ids)
	}
	fr, err := newFront(cfg.Dir)
	if err != nil {
		return err
	}
	signing, err := certs.New(certs.Modern, "gateway-signing.legacygate.test", 2048)
	if err != nil {
		return err
	}
	signCert, signKey, err := signing.WriteFiles(cfg.Dir, "gateway-signing")
	if err != nil {
		return err
	}
	mgrCert, err := writeFile(cfg.Dir, "manager.crt", m.Pair().CertPEM())
	if err != nil {
		return err
	}
	body, err := writeFile(cfg.Dir, "come-back-later.xml", []byte(stormBody))
	if err != nil {
		return err
	}
	limit := fmt.Sprintf("rate 1/60s\n\t\tburst 3\n\t\tglobal_rate %d/1s\n\t\tmax_wait %s\n\t\tstatus 503\n\t\tjitter 0.5\n\t\tbody_file %s",
		cfg.GlobalRate, cfg.MaxWait, body)
	sites := []struct {
		name string
		text func(port int) (string, error)
	}{
		{TargetGateway, func(port int) (string, error) {
			return gatewayCaddyfile(filepath.Join(cfg.Dir, TargetGateway), port, fr, m, mgrCert, signKey, signCert, false, limit)
		}},
	}
	if !cfg.NoCaddy {
		sites = append(sites, struct {
			name string
			text func(port int) (string, error)
		}{TargetCaddy, func(port int) (string, error) {
			return stockCaddyfile(filepath.Join(cfg.Dir, TargetCaddy), port, fr, m, mgrCert)
		}})
	}
	for _, s := range sites {
		port, err := freePort()
		if err != nil {
			return err
		}
		text, err := s.text(port)
		if err != nil {
			return err
		}
		base := fmt.Sprintf("https://127.0.0.1:%d", port)
		fmt.Fprintf(cfg.Log, "storm: starting %s on %s\n", s.name, base)
		p, err := startCaddy(s.name, cfg.Legacygate, filepath.Join(cfg.Dir, s.name), "", text, base)
		if err != nil {
			return err
		}
		l.targets = append(l.targets, &target{name: s.name, proc: p, base: base})
	}
	return nil
}

// registerMany registers n clients with the manager, 32 at a time, over one
// keep-alive pool.
func registerMany(ctx context.Context, m *manager.Manager, n int) ([]string, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ids := make([]string, n)
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				id, err := registerWith(client, m, fmt.Sprintf("storm-%d", i))
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				ids[i] = id
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return ids, firstErr
}

var hostIDAttr = regexp.MustCompile(`HostId="([0-9A-Fa-f]+)"`)

func registerWith(c *http.Client, m *manager.Manager, hostname string) (string, error) {
	resp, err := c.PostForm("http://"+m.Addrs().HTTP+"/secreg/secreg.dll?action=register", url.Values{"hostname": {hostname}})
	if err != nil {
		return "", fmt.Errorf("registering %s: %w", hostname, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	match := hostIDAttr.FindSubmatch(body)
	if resp.StatusCode != http.StatusOK || match == nil {
		return "", fmt.Errorf("registering %s: %d %q", hostname, resp.StatusCode, body)
	}
	return string(match[1]), nil
}

// stormOne opens the connections to t, storms it at rate for the step's
// duration, closes them and returns the figures.
func (l *stormLab) stormOne(ctx context.Context, cfg StormConfig, t *target, hosts []string, rate int) (StormTarget, error) {
	st := StormTarget{Name: t.name}
	addr := t.base[len("https://"):]
	tlsCfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: tls.NewLRUClientSessionCache(64)}
	reqs := make([][]byte, len(hosts))
	for i, h := range hosts {
		reqs[i] = heartbeatRequest(addr, h)
	}
	conns := make([]*stormConn, cfg.Connections)
	for i := range conns {
		conns[i] = &stormConn{addr: addr, tls: tlsCfg}
	}
	defer func() {
		for _, c := range conns {
			c.close()
		}
	}()
	rss0, err := t.proc.tree().rss()
	if err != nil {
		return st, err
	}
	t0 := time.Now()
	if err := connectAll(ctx, conns); err != nil {
		return st, fmt.Errorf("storm: %s: %w", t.name, err)
	}
	st.Connect = time.Since(t0).Round(10 * time.Millisecond).String()
	rssIdle, err := t.proc.tree().rss()
	if err != nil {
		return st, err
	}
	st.IdleKBPerConn = float64(rssIdle-rss0) / 1024 / float64(len(conns))
	fmt.Fprintf(cfg.Log, "storm: %d connections to %s open in %s; %d clients storming at %d/s for %s\n", len(conns), t.name, st.Connect, len(reqs), rate, cfg.Duration)

	cpu0, err := t.proc.tree().cpuSeconds()
	if err != nil {
		return st, err
	}
	watch := watchManager(l.mgr)
	begin := time.Now()
	stalls := cfg.stallDuring(t)
	answers := storm(ctx, conns, reqs, rate, cfg.Duration)
	elapsed := time.Since(begin)
	stallErr := stalls()
	arrivals := watch.stop()
	if stallErr != nil {
		return st, stallErr
	}
	cpu1, err := t.proc.tree().cpuSeconds()
	if err != nil {
		return st, err
	}
	rss, err := t.proc.tree().rss()
	if err != nil {
		return st, err
	}
	st.Elapsed = elapsed.Round(10 * time.Millisecond).String()
	st.summarize(answers, elapsed)
	st.ManagerRate = float64(arrivals.total()) / elapsed.Seconds()
	st.ManagerPeak = arrivals.busiestSecond()
	if n := st.Allowed + st.Rejected; n > 0 {
		st.CPUUs = (cpu1 - cpu0) * 1e6 / float64(n)
	}
	st.RSSMB = float64(rss) / (1 << 20)
	fmt.Fprintf(cfg.Log, "storm: %s at %d/s: answered %.0f/s, %d allowed, %d rejected (p99 %.2f ms), %d errors, manager %.0f/s (busiest second %d)\n",
		t.name, rate, st.Answered, st.Allowed, st.Rejected, st.RejectedP99Ms, st.Errors, st.ManagerRate, st.ManagerPeak)
	return st, ctx.Err()
}

// stallDuring starts stalling t, when the run asks for it and t is the
// gateway, and returns the function that stops and reports the first error.
func (c StormConfig) stallDuring(t *target) (stop func() error) {
	if c.Stall <= 0 || t.name != TargetGateway {
		return func() error { return nil }
	}
	done, result := make(chan struct{}), make(chan error, 1)
	go func() {
		tick := time.NewTicker(c.StallEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				result <- nil
				return
			case <-tick.C:
				if err := stall(t.proc.cmd.Process.Pid, c.Stall); err != nil {
					result <- err
					return
				}
			}
		}
	}()
	return func() error {
		close(done)
		return <-result
	}
}

// summarize turns the answers into the step's figures; elapsed is how long
// the step took, to its last answer.
func (st *StormTarget) summarize(answers []stormAnswer, elapsed time.Duration) {
	var allowed, rejected []time.Duration
	byReason := map[string][]time.Duration{}
	var late int
	for _, a := range answers {
		if a.late > stormLate {
			late++
		}
		switch a.status {
		case http.StatusOK:
			allowed = append(allowed, a.latency)
		case http.StatusServiceUnavailable:
			rejected = append(rejected, a.latency)
			byReason[a.reason] = append(byReason[a.reason], a.latency)
			if !a.retryOK {
				st.BadRetry++
			}
		default:
			st.Errors++
		}
	}
	st.Allowed, st.Rejected = int64(len(allowed)), int64(len(rejected))
	st.Answered = float64(len(allowed)+len(rejected)) / elapsed.Seconds()
	if len(answers) > 0 {
		st.LateShare = float64(late) / float64(len(answers))
	}
	st.AllowedP50Ms, st.AllowedP99Ms = ms(percentile(allowed, 0.50)), ms(percentile(allowed, 0.99))
	st.RejectedP50Ms, st.RejectedP99Ms = ms(percentile(rejected, 0.50)), ms(percentile(rejected, 0.99))
	if len(rejected) > 0 {
		st.RejectedMaxMs = ms(slices.Max(rejected))
		st.Reasons, st.ReasonP99Ms = map[string]int64{}, map[string]float64{}
	}
	for reason, xs := range byReason {
		st.Reasons[reason] = int64(len(xs))
		st.ReasonP99Ms[reason] = ms(percentile(xs, 0.99))
	}
}

// verdict says why the gateway did not meet the goals at rate, or "".
func (c StormConfig) verdict(st StormTarget, rate int) string {
	ceiling := c.managerCeiling()
	switch {
	case st.Errors > 0:
		return fmt.Sprintf("%d heartbeats failed", st.Errors)
	case st.Answered < 0.98*float64(rate):
		return fmt.Sprintf("answered %.0f/s of %d/s offered", st.Answered, rate)
	case st.LateShare > 0.01:
		return fmt.Sprintf("%.1f%% of heartbeats left more than %v late (no free connection, or the generator fell behind): %d/s was not offered", 100*st.LateShare, stormLate, rate)
	case st.ManagerPeak > ceiling:
		return fmt.Sprintf("the manager saw %d heartbeats in one second, global_rate %d/s", st.ManagerPeak, c.GlobalRate)
	case st.Rejected == 0:
		return "nothing was rejected: the storm did not exceed the limits"
	case st.BadRetry > 0:
		return fmt.Sprintf("%d rejections without a Retry-After", st.BadRetry)
	case st.RejectedP99Ms >= ms(c.RejectP99):
		return fmt.Sprintf("rejection p99 %.2f ms, goal under %v", st.RejectedP99Ms, c.RejectP99)
	}
	return ""
}

// managerCeiling is the most heartbeats the manager may see in a second:
// global_rate plus 1 %, at least one more (a second holds rate+1 sends
// spaced exactly one interval apart).
func (c StormConfig) managerCeiling() int64 {
	return int64(c.GlobalRate) + int64(math.Ceil(float64(c.GlobalRate)/100))
}

// Print writes the storm report as a table.
func (r *StormReport) Print(w io.Writer) {
	fmt.Fprintf(w, "machine: %d CPUs, %s, load average %s (before) / %s (after), %s\n",
		r.Machine.CPUs, r.Machine.Model, r.Machine.LoadBefore, r.Machine.LoadAfter, r.Machine.GoVersion)
	fmt.Fprintf(w, "storm: %d clients on %d keep-alive TLS connections, %s per step and target; gateway: global_rate %d/s, max_wait %s, rate 1/60s, burst 3\n\n",
		r.Clients, r.Connections, r.Duration, r.GlobalRate, r.MaxWait)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "offered/s\ttarget\tanswered/s\tallowed\trejected\terrors\tlate\tallowed p99 ms\trejected p50 ms\trejected p99 ms\tmanager/s\tbusiest s\tCPU µs/answer\tRSS MB\tidle KB/conn\t")
	for _, s := range r.Steps {
		for _, t := range s.Targets {
			fmt.Fprintf(tw, "%d\t%s\t%.0f\t%d\t%d\t%d\t%.1f%%\t%.2f\t%.2f\t%.2f\t%.0f\t%d\t%.0f\t%.0f\t%.1f\t\n",
				s.Rate, t.Name, t.Answered, t.Allowed, t.Rejected, t.Errors, 100*t.LateShare, t.AllowedP99Ms,
				t.RejectedP50Ms, t.RejectedP99Ms, t.ManagerRate, t.ManagerPeak, t.CPUUs, t.RSSMB, t.IdleKBPerConn)
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, s := range r.Steps {
		for _, t := range s.Targets {
			if t.Name != TargetGateway {
				continue
			}
			verdict := "every goal met"
			if t.Verdict != "" {
				verdict = t.Verdict
			}
			fmt.Fprintf(w, "at %d/s: %s; rejections by reason %v, their p99 in ms %v\n", s.Rate, verdict, t.Reasons, t.ReasonP99Ms)
		}
	}
	result := "PASS"
	if !r.Pass {
		result = "FAIL"
	}
	fmt.Fprintf(w, "%s: the gateway sustained %d heartbeats/s (goal %d/s: manager at most global_rate, rejections p99 under %.0f ms)\n",
		result, r.Sustained, r.Goal, r.RejectP99)
}

// JSON writes the storm report as one JSON document.
func (r *StormReport) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

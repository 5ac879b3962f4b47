package e2e

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/manager"
)

// The real-wire lab: the SEPM emulator speaking as real clients expect
// (opaque h= queries, definitions), Caddyfile.example in front of it, and
// a real-wire fleet with NAT'ed sites. Times are scaled: a 4 s heartbeat
// stands for SEPM's 5 minutes, so the accelerated heartbeat is 0-0.8 s
// and the example's rate of one heartbeat a minute is one per 800 ms.
const (
	realInterval   = 4 * time.Second
	realRate       = "1/800ms"
	realGlobalRate = 80 // a second: above the fleet's steady 50, below the manager's capacity
	realCapacity   = 100
)

// realLab is one manager, and optionally a gateway in front of it.
type realLab struct {
	mgr     *manager.Manager
	gw      *harness.Gateway
	port    int               // the gateway's HTTPS port
	signing *x509.Certificate // what clients of the gateway trust
}

// realVariant changes Caddyfile.example's heartbeat_limit for a measurement.
type realVariant struct {
	name      string
	kcs       bool   // give the gateway the site's KCS
	key       string // replaces the key line; "" keeps the example's
	lastIndex bool   // keep last_index (else the rejection is a 503)
	maxWait   string // "" keeps the example's
}

func startRealManager(t *testing.T, capacity int) *manager.Manager {
	t.Helper()
	m, err := manager.New(manager.Config{
		Wire: manager.WireReal, HTTPSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		ProfileSize: 8 << 10, ContentSize: 64 << 10, Capacity: capacity,
		HeartbeatSeconds: int(realInterval / time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// startRealGateway runs Caddyfile.example, changed as v says, in front of m.
func startRealGateway(t *testing.T, m *manager.Manager, v realVariant) *realLab {
	t.Helper()
	dir := t.TempDir()
	mgrCert, _, err := m.Pair().WriteFiles(dir, "manager")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := certs.New(certs.Modern, "gateway signing", 2048)
	if err != nil {
		t.Fatal(err)
	}
	gwCert, gwKey, err := gw.WriteFiles(dir, "gateway")
	if err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	kcs := "off"
	if v.kcs {
		kcs = m.KCS()
	}
	for k, val := range map[string]string{
		"LEGACYGATE_SITE": fmt.Sprintf("localhost:%d", port), "SEPM_MANAGER": m.Addrs().HTTPS,
		// The settings the example rewrites name this gateway.
		"LEGACYGATE_SITE_HOST": "localhost", "LEGACYGATE_SITE_PORT": strconv.Itoa(port),
		"SEPM_PIN": m.Pin(), "SEPM_SERVER_NAME": "sepm.legacygate.test", "SEPM_CERT": mgrCert,
		"LEGACYGATE_SIGNING_KEY": gwKey, "LEGACYGATE_SIGNING_CERT": gwCert, "SEPM_KCS": kcs,
		"LEGACYGATE_HEARTBEAT_RATE": realRate, "LEGACYGATE_HEARTBEAT_GLOBAL_RATE": fmt.Sprintf("%d/1s", realGlobalRate),
	} {
		t.Setenv(k, val)
	}
	if v.maxWait != "" {
		t.Setenv("LEGACYGATE_HEARTBEAT_MAX_WAIT", v.maxWait)
	}
	file := exampleCaddyfile(t)
	if v.key != "" {
		file = replaceLine(t, file, "key {sepm.hostid} {query.hostid} {client_ip}", "key "+v.key)
	}
	if !v.lastIndex {
		file = replaceLine(t, file, "last_index 500000", "")
	}
	g := harness.StartGateway(t, file)
	g.WaitCertificate(t, "localhost")
	return &realLab{mgr: m, gw: g, port: port, signing: gw.Cert}
}

func replaceLine(t *testing.T, file, line, with string) string {
	t.Helper()
	if !strings.Contains(file, "\t"+line+"\n") {
		t.Fatalf("Caddyfile.example has no line %q", line)
	}
	return strings.Replace(file, "\t"+line+"\n", "\t"+with+"\n", 1)
}

// realFleet is a real-wire fleet of n clients, nat per source address,
// talking to the gateway (l.gw set) or straight to the manager.
func (l *realLab) realFleet(t *testing.T, n, nat int, spread time.Duration) *fleet.Fleet {
	t.Helper()
	srv := fleet.Server{Address: "127.0.0.1", VerifySignatures: true, Cert: l.mgr.SigningCert()}
	if l.gw != nil {
		srv = fleet.Server{Address: "localhost", HTTPSPort: l.port, VerifySignatures: true, Cert: l.signing}
	} else {
		_, p, _ := net.SplitHostPort(l.mgr.Addrs().HTTPS)
		srv.HTTPSPort, _ = strconv.Atoi(p)
	}
	doc, err := fleet.BuildSyLink(&fleet.Settings{
		// The manager's own serial: the clients hold its settings and never
		// adopt its server list, which names the manager itself.
		Serial: l.mgr.Status()["sylink_serial"], KCS: l.mgr.KCS(),
		Blocks: []fleet.PriorityBlock{{Name: "Priority1", Servers: []fleet.Server{srv}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.New(fleet.Config{
		Count: n, SyLink: doc, Interval: realInterval, Randomize: realInterval / 4,
		Wire: fleet.WireReal, NAT: nat, StartSpread: spread,
		Concurrency: min(n, 256), Timeout: 20 * time.Second, Seed: 7,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// agentRequests is what reached the manager's agent endpoints.
func agentRequests(m *manager.Manager) int64 {
	var n int64
	for _, e := range []string{manager.CountRegister, manager.CountIndex, manager.CountProfile, manager.CountSyLink, manager.CountLog, manager.CountOverloaded, manager.CountBad} {
		n += m.Requests(e)
	}
	return n
}

// peakSampler reports the most agent requests the manager received in any
// one second.
type peakSampler struct {
	stop chan struct{}
	done chan int64
}

func samplePeak(m *manager.Manager) *peakSampler {
	s := &peakSampler{stop: make(chan struct{}), done: make(chan int64, 1)}
	go func() {
		type point struct {
			at time.Time
			n  int64
		}
		var pts []point
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				var peak int64
				for i, p := range pts {
					for _, q := range pts[i:] {
						if q.at.Sub(p.at) > time.Second {
							break
						}
						peak = max(peak, q.n-p.n)
					}
				}
				s.done <- peak
				return
			case now := <-tick.C:
				pts = append(pts, point{now, m.Requests(manager.CountIndex)})
			}
		}
	}()
	return s
}

func (s *peakSampler) peak() int64 {
	close(s.stop)
	return <-s.done
}

// realRun is one measured run.
type realRun struct {
	name                     string
	s                        fleet.Summary
	managerAgent, overloaded int64
	peakIndex                int64
	indexed                  int
	served                   float64 // heartbeats answered with a last index
}

func (r realRun) String() string {
	return fmt.Sprintf("%-34s clients %d orphaned %d (ever %d) starved %d (ever %d) heartbeats %d | at the gateway (or direct): %d requests, %.1f/client/min | manager: %d agent requests, %d overloaded, peak %d index/s, %d hosts indexed | last-index answers %.0f | errors %v",
		r.name, r.s.Clients, r.s.Orphaned, r.s.EverOrphaned, r.s.Starved, r.s.EverStarved, r.s.Heartbeats, r.s.Requests, r.s.RequestsPerClientPerMinute,
		r.managerAgent, r.overloaded, r.peakIndex, r.indexed, r.served, r.s.Errors)
}

// measure runs f for d; during runs storm(l) once, if set, after warm.
func (l *realLab) measure(t *testing.T, name string, f *fleet.Fleet, d time.Duration, storm func()) realRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	before := agentRequests(l.mgr)
	peak := samplePeak(l.mgr)
	var wg sync.WaitGroup
	if storm != nil {
		wg.Go(storm)
	}
	s := f.Run(ctx)
	wg.Wait()
	r := realRun{name: name, s: s, managerAgent: agentRequests(l.mgr) - before, overloaded: l.mgr.Requests(manager.CountOverloaded),
		peakIndex: peak.peak(), indexed: l.mgr.IndexedHosts()}
	if l.gw != nil {
		m := heartbeatMetrics(t, l.gw)
		r.served = m[`legacygate_heartbeat_limit_last_index_total{outcome="served"}`] + m[`legacygate_heartbeat_limit_last_index_total{outcome="served_on_error"}`]
	}
	t.Log(r)
	return r
}

// TestRealWireFleetThroughTheExampleHasNoOrphansAndNATedSitesAreNotStarved
// runs real-shaped clients, 20 behind each of 6 addresses, through
// Caddyfile.example as shipped with the site's KCS: every client's index
// reaches the manager, none is orphaned or starved, and the manager sees
// no more index requests a second than global_rate.
func TestRealWireFleetThroughTheExampleHasNoOrphansAndNATedSitesAreNotStarved(t *testing.T) {
	m := startRealManager(t, 0)
	l := startRealGateway(t, m, realVariant{kcs: true, lastIndex: true})
	const n = 120
	r := l.measure(t, "example, kcs, NAT 20", l.realFleet(t, n, 20, 0), 5*realInterval/2, nil)
	for k, v := range heartbeatMetrics(t, l.gw) {
		if strings.Contains(k, "heartbeat_limit") && v != 0 {
			t.Logf("%s %v", k, v)
		}
	}
	// EverStarved is logged, not judged: on a loaded host a client may be
	// limited three times in a row before it has a last index.
	if r.s.Orphaned != 0 || r.s.EverOrphaned != 0 || r.s.Starved != 0 || r.s.Online != n {
		t.Errorf("summary %+v, want every client online and none ever orphaned or starved at the end", r.s)
	}
	if r.indexed != n {
		t.Errorf("%d of %d clients' index reached the manager, want all: clients behind one address were starved", r.indexed, n)
	}
	if r.s.ContentDownloads != n || r.s.SignatureFailures != 0 {
		t.Errorf("%d definitions downloads, %d signature failures; want %d and 0", r.s.ContentDownloads, r.s.SignatureFailures, n)
	}
	if r.peakIndex > realGlobalRate+realGlobalRate/10 {
		t.Errorf("the manager saw %d index requests in one second, want at most global_rate %d", r.peakIndex, realGlobalRate)
	}
	if m.Requests(manager.CountBad) != 0 {
		t.Errorf("the manager refused %d requests through the gateway", m.Requests(manager.CountBad))
	}
}

// outage is the storm of KB 177654: the manager answers 503 (an
// overloaded IIS) for three intervals once the fleet has warmed up.
func outage(m *manager.Manager) func() {
	return func() {
		time.Sleep(3 * realInterval / 2)
		m.SetFault(manager.Fault{Status: 503})
		time.Sleep(3 * realInterval)
		m.SetFault(manager.Fault{})
	}
}

// TestRealWireStormThroughTheExampleCostsLessThanDirect is the outage
// storm, direct and through Caddyfile.example: directly every client
// falls into accelerated heartbeats; through the gateway, clients are told
// "nothing changed" with their last index and stay on their interval, so
// fewer requests reach the gateway than reached the manager directly, and
// fewer still reach the manager.
func TestRealWireStormThroughTheExampleCostsLessThanDirect(t *testing.T) {
	const n, nat = 60, 10
	d := 5 * realInterval
	mDirect := startRealManager(t, 0)
	direct := &realLab{mgr: mDirect}
	dr := direct.measure(t, "direct, outage", direct.realFleet(t, n, nat, 0), d, outage(mDirect))

	m := startRealManager(t, 0)
	l := startRealGateway(t, m, realVariant{kcs: true, lastIndex: true})
	gr := l.measure(t, "example (kcs, last_index), outage", l.realFleet(t, n, nat, 0), d, outage(m))

	if gr.s.Requests >= dr.s.Requests {
		t.Errorf("%d requests reached the gateway, %d reached the manager directly: the gateway amplified the storm", gr.s.Requests, dr.s.Requests)
	}
	if gr.managerAgent >= dr.managerAgent {
		t.Errorf("the manager got %d agent requests through the gateway, %d directly", gr.managerAgent, dr.managerAgent)
	}
	if gr.s.EverOrphaned != 0 || gr.s.EverStarved != 0 {
		t.Errorf("through the gateway: %d clients ever orphaned, %d ever starved; want 0", gr.s.EverOrphaned, gr.s.EverStarved)
	}
	if gr.peakIndex > realGlobalRate+realGlobalRate/10 {
		t.Errorf("peak %d index requests a second at the manager, want at most %d", gr.peakIndex, realGlobalRate)
	}
}

// TestRealWireKeyOptionsMeasured (LEGACYGATE_LONG=1) measures the ways of
// keying real clients, and both rejections, in a cold check-in storm (every
// client's first heartbeat within one accelerated window) against a
// manager that answers at most realCapacity requests a second, with 20
// clients behind each address. It prints one line per run; the figures are
// in docs/modules/heartbeat_limit.md.
func TestRealWireKeyOptionsMeasured(t *testing.T) {
	if os.Getenv("LEGACYGATE_LONG") != "1" {
		t.Skip("long measurement: set LEGACYGATE_LONG=1")
	}
	const n, nat = 400, 20
	d := 8 * realInterval
	spread := realInterval / 5
	m := startRealManager(t, realCapacity)
	direct := &realLab{mgr: m}
	runs := []realRun{direct.measure(t, "direct", direct.realFleet(t, n, nat, spread), d, nil)}
	for _, v := range []realVariant{
		{name: "per-IP, 503", key: "{client_ip}"},
		{name: "per-IP+UA, 503", key: "{client_ip} {header.User-Agent}"},
		{name: "per-h= value, 503", key: "{query.h}"},
		{name: "kcs host id, 503, max_wait 2s", kcs: true, maxWait: "2s"},
		{name: "kcs host id, 503", kcs: true},
		{name: "kcs host id, last_index, max_wait 2s", kcs: true, lastIndex: true, maxWait: "2s"},
		{name: "kcs host id, last_index (shipped)", kcs: true, lastIndex: true},
	} {
		t.Run(v.name, func(t *testing.T) {
			m := startRealManager(t, realCapacity)
			l := startRealGateway(t, m, v)
			runs = append(runs, l.measure(t, v.name, l.realFleet(t, n, nat, spread), d, nil))
		})
	}
	for _, r := range runs {
		fmt.Println(r)
	}
}

// TestOfficeScanExamplePassesOnlyAgentProgramsToTheServer runs
// examples/officescan.Caddyfile as shipped in front of a stand-in IIS:
// the agent programs pass; the console, the other CGI programs (where the
// pre-authentication CVEs live) and every encoded or Windows-equivalent
// spelling of an allowed path are refused and never reach the server.
func TestOfficeScanExamplePassesOnlyAgentProgramsToTheServer(t *testing.T) {
	var mu sync.Mutex
	var reached []string
	iis := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reached = append(reached, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Header().Set("Server", "Microsoft-IIS/8.5")
		w.Header().Set("X-Powered-By", "ASP.NET")
		io.WriteString(w, "-2")
	}))
	t.Cleanup(iis.Close)
	port := harness.FreePort(t)
	t.Setenv("LEGACYGATE_SITE", fmt.Sprintf("http://127.0.0.1:%d", port))
	t.Setenv("OFFICESCAN_SERVER", strings.TrimPrefix(iis.URL, "http://"))
	harness.StartGateway(t, shippedExample(t, "examples/officescan.Caddyfile"))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	tests := []struct {
		method, path string
		pass         bool
	}{
		{http.MethodGet, "/officescan/cgi/cgiOnStart.exe", true},
		{http.MethodPost, "/officescan/cgi/cgiLog.exe", true},
		{http.MethodGet, "/officescan/download/server.ini", true},
		{http.MethodGet, "/OfficeScan/CGI/cgionstart.exe", true}, // IIS ignores case; so does the allow list
		{http.MethodPost, "/officescan/cgi/cgiChkMasterPwd.exe", false},
		{http.MethodPost, "/officescan/cgi/cgiRecvFile.exe", false},
		{http.MethodGet, "/officescan/console/html/cgi/cgiShowClientAdm.exe", false},
		{http.MethodGet, "/officescan/cgi/cgiOnStart.exe/..%5ccgiRecvFile.exe", false},
		{http.MethodGet, "/officescan/cgi/..%2fcgi/cgiChkMasterPwd.exe", false},
		{http.MethodGet, "/officescan/download/../cgi/cgiRecvFile.exe", false},
		{http.MethodDelete, "/officescan/cgi/cgiLog.exe", false},
	}
	for _, tt := range tests {
		mu.Lock()
		before := len(reached)
		mu.Unlock()
		status, header := rawHTTP(t, base, tt.method, tt.path)
		mu.Lock()
		got := len(reached) > before
		mu.Unlock()
		if got != tt.pass || (tt.pass && status != http.StatusOK) || (!tt.pass && status < 400) {
			t.Errorf("%s %s: status %d, reached the server %v; want reached %v", tt.method, tt.path, status, got, tt.pass)
		}
		if header.Get("Server") != "" || header.Get("X-Powered-By") != "" {
			t.Errorf("%s %s: banners reached the agent: %v", tt.method, tt.path, header)
		}
	}
}

// rawHTTP sends one HTTP/1.1 request with the path exactly as given (Go's
// client would clean or re-encode it) and returns the status and headers.
func rawHTTP(t *testing.T, base, method, path string) (int, http.Header) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: OfficeScan\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", method, path, u.Host)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// shippedExample reads a file of the repository.
func shippedExample(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

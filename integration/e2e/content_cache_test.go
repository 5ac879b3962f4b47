package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/manager"
)

// byteCounter is a TCP relay in front of the manager that counts the bytes
// the manager sends: its "bytes out", TLS records included.
type byteCounter struct {
	ln  net.Listener
	out atomic.Int64
}

func startByteCounter(t *testing.T, target string) *byteCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &byteCounter{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.relay(c, target)
		}
	}()
	return b
}

func (b *byteCounter) relay(c net.Conn, target string) {
	defer c.Close()
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(&countingConn{Conn: c, n: &b.out}, up)
}

// countingConn counts what is written to it as it goes: the gateway keeps
// its connections to the manager open.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// offloadLab is the emulated manager behind a byte counter, and
// Caddyfile.example, as shipped (with policy_guard's offload), in front of it.
type offloadLab struct {
	m       *manager.Manager
	counter *byteCounter
	gateway string // https://localhost:PORT
	gw      *http.Client
	direct  *http.Client // to the manager through the counter, as a pinned client
	mgrURL  string
}

func startOffloadLab(t *testing.T, contentSize int64) *offloadLab {
	t.Helper()
	m, err := manager.New(manager.Config{HTTPSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ContentSize: contentSize, CommonName: "sepm.legacygate.test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	counter := startByteCounter(t, m.Addrs().HTTPS)

	port := harness.FreePort(t)
	t.Setenv("LEGACYGATE_SITE", fmt.Sprintf("localhost:%d", port))
	t.Setenv("SEPM_MANAGER", counter.ln.Addr().String())
	t.Setenv("SEPM_PIN", m.Pin())
	t.Setenv("SEPM_SERVER_NAME", "sepm.legacygate.test")
	// The measurement is of the manager's bytes, not of heartbeat limiting.
	t.Setenv("LEGACYGATE_HEARTBEAT_RATE", "1000/1s")
	t.Setenv("LEGACYGATE_HEARTBEAT_BURST", "1000")
	t.Setenv("LEGACYGATE_HEARTBEAT_GLOBAL_RATE", "100000/1s")
	setExampleKeyFiles(t, m.Pair())
	caddyfile := exampleCaddyfile(t)
	if !strings.Contains(caddyfile, "\t\t\toffload\n") {
		t.Fatal("Caddyfile.example's policy_guard has no offload line")
	}
	g := harness.StartGateway(t, caddyfile)
	g.WaitCertificate(t, "localhost")

	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: g.RootCAs(t)},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, p, _ := net.SplitHostPort(addr)
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort("127.0.0.1", p))
		},
		DisableKeepAlives: true, // each client its own connection
	}
	direct := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10}, // pinned clients do not check names
		DisableKeepAlives: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	t.Cleanup(direct.CloseIdleConnections)
	return &offloadLab{
		m: m, counter: counter, gateway: fmt.Sprintf("https://localhost:%d", port),
		gw:     &http.Client{Transport: tr, Timeout: 5 * time.Minute},
		direct: &http.Client{Transport: direct, Timeout: 5 * time.Minute},
		mgrURL: "https://" + counter.ln.Addr().String(),
	}
}

// figures are what the manager did during one phase.
type figures struct {
	requests map[string]int64 // by endpoint
	bytes    int64            // sent, on the wire
	failed   int64            // clients that did not get a verified, complete answer
	elapsed  time.Duration
	// scaledFrom is the number of clients measured, when the figures were
	// scaled up from them (0: all were measured).
	scaledFrom int
}

func (l *offloadLab) measure(run func() int64) figures {
	before, bytesBefore := l.m.RequestCounts(), l.counter.out.Load()
	start := time.Now()
	failed := run()
	elapsed := time.Since(start)
	after := l.m.RequestCounts()
	f := figures{requests: map[string]int64{}, bytes: l.counter.out.Load() - bytesBefore, failed: failed, elapsed: elapsed}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			f.requests[k] = d
		}
	}
	return f
}

// scaled is f for clients clients when it was measured on sample of them.
func (f figures) scaled(clients, sample int) figures {
	if clients == sample {
		return f
	}
	out := figures{requests: map[string]int64{}, failed: f.failed, elapsed: f.elapsed,
		bytes: f.bytes * int64(clients) / int64(sample), scaledFrom: sample}
	for k, v := range f.requests {
		out.requests[k] = v * int64(clients) / int64(sample)
	}
	return out
}

// runClients runs do for clients 0..n-1 on workers goroutines and returns
// how many failed.
func runClients(n, workers int, do func(i int) error, report func(error)) int64 {
	var next, failed atomic.Int64
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := do(i); err != nil {
					failed.Add(1)
					once.Do(func() { report(err) })
				}
			}
		})
	}
	wg.Wait()
	return failed.Load()
}

func fetchBody(c *http.Client, rawURL string) ([]byte, error) {
	req, _ := http.NewRequest(http.MethodGet, rawURL, nil)
	req.Header.Set("User-Agent", "Smc")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w after %d bytes", rawURL, err, len(body))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: status %d %q", rawURL, resp.StatusCode, body[:min(len(body), 80)])
	}
	return body, nil
}

// definitionsUpdate has n clients download one new definitions file from base.
func (l *offloadLab) definitionsUpdate(t *testing.T, c *http.Client, base, rev string, n, workers int, size int64) figures {
	t.Helper()
	path := "/content/{C60DC234-65F9-4674-94AE-62158EFCA433}/" + rev + "/full.zip"
	want := sha256.Sum256(manager.ContentBody(path, size))
	return l.measure(func() int64 {
		return runClients(n, workers, func(int) error {
			body, err := fetchBody(c, base+path)
			if err != nil {
				return err
			}
			if sha256.Sum256(body) != want {
				return fmt.Errorf("%s: %d bytes that are not the manager's file", path, len(body))
			}
			return nil
		}, func(err error) { t.Logf("definitions client (first failure): %v", err) })
	})
}

// registerHosts registers n clients at the manager directly (plain HTTP,
// outside any measurement) and returns their host ids.
func (l *offloadLab) registerHosts(t *testing.T, n int) []string {
	t.Helper()
	ids := make([]string, n)
	runClients(n, 32, func(i int) error {
		resp, err := http.PostForm("http://"+l.m.Addrs().HTTP+"/secreg/secreg.dll?action=register", url.Values{"hostname": {"client-" + strconv.Itoa(i)}})
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_, rest, _ := strings.Cut(string(body), `HostId="`)
		ids[i], _, _ = strings.Cut(rest, `"`)
		if ids[i] == "" {
			return fmt.Errorf("registration answered %q", body)
		}
		return nil
	}, func(err error) { t.Fatalf("register: %v", err) })
	return ids
}

// policyPush has every host fetch its index and then the profile, as
// clients do after the manager published a new policy.
func (l *offloadLab) policyPush(t *testing.T, c *http.Client, base string, hosts []string, workers int) figures {
	t.Helper()
	return l.measure(func() int64 {
		return runClients(len(hosts), workers, func(i int) error {
			q := "/secars/secars.dll?action=%s&hostid=" + hosts[i]
			index, err := fetchBody(c, base+fmt.Sprintf(q, "index"))
			if err != nil {
				return err
			}
			if !bytes.Contains(index, []byte("<Profile ")) {
				return fmt.Errorf("index %q", index)
			}
			profile, err := fetchBody(c, base+fmt.Sprintf(q, "profile"))
			if err != nil {
				return err
			}
			if !bytes.Contains(profile, []byte("<Profile ")) || !bytes.Contains(profile, []byte("SignatureValue")) {
				return fmt.Errorf("profile of %d bytes is not a signed Profile", len(profile))
			}
			return nil
		}, func(err error) { t.Logf("policy client (first failure): %v", err) })
	})
}

func offloadReport(t *testing.T, what string, n int, direct, through figures) float64 {
	t.Helper()
	ratio := float64(through.bytes) / float64(direct.bytes)
	measured := "measured"
	if direct.scaledFrom > 0 {
		measured = fmt.Sprintf("scaled from %d clients", direct.scaledFrom)
	}
	t.Logf("%s, %d clients: direct (%s) %d bytes %v in %v; through the gateway %d bytes %v in %v: %.3f%% of direct",
		what, n, measured, direct.bytes, direct.requests, direct.elapsed.Round(time.Millisecond),
		through.bytes, through.requests, through.elapsed.Round(time.Millisecond), 100*ratio)
	// Clients the manager failed directly are the baseline's (an
	// overloaded manager drops connections); through the gateway none may fail.
	if direct.failed > 0 {
		t.Logf("%s: %d clients failed talking to the manager directly", what, direct.failed)
	}
	if through.failed > 0 {
		t.Errorf("%s: %d clients failed through the gateway", what, through.failed)
	}
	return ratio
}

// TestContentCacheTheManagerServesEachDefinitionsFileOnce runs a
// definitions update and a policy push for a few hundred clients, directly
// and through Caddyfile.example (policy_guard with offload): the manager
// serves the new definitions once per gateway and the profile once.
func TestContentCacheTheManagerServesEachDefinitionsFileOnce(t *testing.T) {
	offloadRun(t, 200, 20, 50, 128<<10)
}

// TestContentCacheOffloadTenThousandClients is the full measurement of
// docs/design/offload.md: LEGACYGATE_LONG=1 go test ./integration/e2e -run TenThousand -v
func TestContentCacheOffloadTenThousandClients(t *testing.T) {
	if os.Getenv("LEGACYGATE_LONG") != "1" {
		t.Skip("set LEGACYGATE_LONG=1 for the 10,000-client measurement")
	}
	size := int64(4 << 20)
	if s := os.Getenv("LEGACYGATE_CONTENT_SIZE"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("LEGACYGATE_CONTENT_SIZE: %v", err)
		}
		size = v
	}
	offloadRun(t, 10_000, 10_000, 200, size)
}

// offloadRun measures a definitions update and a policy push of clients
// clients through the gateway, and directly for sample of them: the direct
// cost is the same for every client, so it is scaled to clients.
func offloadRun(t *testing.T, clients, sample, workers int, size int64) {
	l := startOffloadLab(t, size)

	direct := l.definitionsUpdate(t, l.direct, l.mgrURL, "120120a011", sample, workers, size).scaled(clients, sample)
	through := l.definitionsUpdate(t, l.gw, l.gateway, "120121a011", clients, workers, size)
	if n := through.requests[manager.CountContent]; n != 1 {
		t.Errorf("the manager served the definitions %d times through the gateway, want once", n)
	}
	if ratio := offloadReport(t, "definitions update", clients, direct, through); ratio > 0.01 {
		t.Errorf("definitions through the gateway cost the manager %.2f%% of the direct bytes, want at most 1%%", 100*ratio)
	}

	hosts := l.registerHosts(t, clients)
	direct = l.policyPush(t, l.direct, l.mgrURL, hosts[:sample], workers).scaled(clients, sample)
	through = l.policyPush(t, l.gw, l.gateway, hosts, workers)
	if n := through.requests[manager.CountProfile]; n != 1 {
		t.Errorf("the manager served the profile %d times through the gateway, want once", n)
	}
	if ratio := offloadReport(t, "policy push", clients, direct, through); ratio > 0.10 {
		t.Errorf("a policy push through the gateway cost the manager %.2f%% of the direct bytes, want at most 10%%", 100*ratio)
	}
}

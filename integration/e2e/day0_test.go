package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
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
	"github.com/legacygate/legacygate/policyguard"
)

// initLab is `legacygate init` run against the emulated TLS 1.0, SHA-1
// manager of keyChangeLab, and the Caddyfile it wrote started unchanged.
type initLab struct {
	*keyChangeLab
	out   string // init's --out
	admin string // the gateway's admin endpoint
}

// runInit runs `legacygate init` against the lab's manager with args added.
func (l *initLab) runInit(t *testing.T, args ...string) string {
	t.Helper()
	l.out = t.TempDir()
	stdout, stderr, err := harness.Run(t, append([]string{"init", "--manager", l.mgr.Addrs().HTTPS, "--site", "localhost", "--out", l.out}, args...)...)
	if err != nil {
		t.Fatalf("%v\n%s%s", err, stdout, stderr)
	}
	return stdout
}

// startWritten runs `legacygate run` on the Caddyfile init wrote, unchanged:
// only environment variables the file documents move it to free loopback
// ports (the HTTPS port, the admin endpoint) and fit its heartbeat limits
// to a fleet beating every half second; HOME/XDG keep Caddy's storage in a
// test folder.
func (l *initLab) startWritten(t *testing.T) {
	t.Helper()
	l.port = harness.FreePort(t)
	l.admin = "127.0.0.1:" + strconv.Itoa(harness.FreePort(t))
	home := t.TempDir()
	cmd := exec.Command(harness.Binary(t), "run", "--config", filepath.Join(l.out, "Caddyfile"))
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home,
		"LEGACYGATE_HTTPS_PORT="+strconv.Itoa(l.port), "LEGACYGATE_ADMIN="+l.admin,
		// The fleet beats every 0.5 s, not every 5 min.
		"LEGACYGATE_HEARTBEAT_RATE=10/1s", "LEGACYGATE_HEARTBEAT_GLOBAL_RATE=100000/1s")
	logs := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = nil, &syncWriter{b: logs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(l.port)),
			&tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("legacygate run on the written Caddyfile exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the written Caddyfile did not serve localhost:%d within 30 s: %v\n%s", l.port, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fleetTrusting is a fleet whose settings list the gateway (the manager's
// name moved to it) and trust cert.
func (l *initLab) fleetTrusting(t *testing.T, cert *x509.Certificate) *fleet.Fleet {
	t.Helper()
	doc, err := fleet.BuildSyLink(&fleet.Settings{Blocks: []fleet.PriorityBlock{{Name: "Priority1", Servers: []fleet.Server{{
		Address: "localhost", HTTPSPort: l.port, VerifySignatures: true, Cert: cert,
	}}}}})
	if err != nil {
		t.Fatal(err)
	}
	return newKeyChangeFleet(t, doc, 3)
}

func (l *initLab) managerCert(t *testing.T) *x509.Certificate {
	t.Helper()
	return loadCert(t, filepath.Join(l.mgrDir, manager.SigningCertFile))
}

func loadCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	certs, err := policyguard.LoadCertificates(file)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// serveCycles runs f until every client is online and then n more
// heartbeat cycles, and returns the final summary.
func serveCycles(t *testing.T, f *fleet.Fleet, n int) fleet.Summary {
	t.Helper()
	run := runFleet(t, f)
	online := run.waitAllOnline(t, "through the written Caddyfile")
	run.waitFor(30*time.Second, func(s fleet.Summary) bool { return s.Heartbeats >= online.Heartbeats+int64(n)*s.Clients })
	return run.stop()
}

// TestInitWrittenCaddyfileStartsAsWrittenAndServesTheFleet runs `legacygate
// init` against a TLS 1.0-only manager with a SHA-1 certificate that signs
// with RSA-SHA1, starts the Caddyfile it wrote unchanged, and runs a fleet
// through it: without the manager's key the fleet trusts the gateway.crt
// init made; with it (the day-0 configuration, window not yet open) the
// fleet trusts the manager's certificate, as deployed clients do. Neither
// sees a signature failure.
func TestInitWrittenCaddyfileStartsAsWrittenAndServesTheFleet(t *testing.T) {
	t.Run("gateway key, fleet trusting gateway.crt", func(t *testing.T) {
		l := &initLab{keyChangeLab: startKeyChangeManager(t)}
		report := l.runInit(t)
		for _, want := range []string{"TLS versions accepted: TLS 1.0\n", "SHA-1, self-signed", "pin: " + l.mgr.Pin()} {
			if !strings.Contains(report, want) {
				t.Fatalf("init's report lacks %q:\n%s", want, report)
			}
		}
		l.startWritten(t)
		s := serveCycles(t, l.fleetTrusting(t, loadCert(t, filepath.Join(l.out, "gateway.crt"))), 3)
		t.Logf("written Caddyfile, gateway key: %s", summaryLine(s))
		if s.SignatureFailures != 0 || s.EverOrphaned != 0 || s.Online != s.Clients || s.ProfileUpdates < s.Clients {
			t.Fatalf("want every client online with its profile and no signature failure: %s", summaryLine(s))
		}
	})
	t.Run("day 0, fleet trusting the manager's certificate", func(t *testing.T) {
		l := &initLab{keyChangeLab: startKeyChangeManager(t)}
		l.runInit(t, "--manager-key", filepath.Join(l.mgrDir, manager.TLSKeyFile),
			"--window-start", time.Now().Add(24*time.Hour).UTC().Format(time.RFC3339))
		l.startWritten(t)
		s := serveCycles(t, l.fleetTrusting(t, l.managerCert(t)), 3)
		t.Logf("written Caddyfile, day 0 before the window: %s", summaryLine(s))
		if s.SignatureFailures != 0 || s.EverOrphaned != 0 || s.Online != s.Clients || s.ProfileUpdates < s.Clients {
			t.Fatalf("want every client online with its profile and no signature failure: %s", summaryLine(s))
		}
	})
}

// TestDay0CutOverMovesAFleetTrustingTheManagerToTheGatewayKey is the day-0
// cut-over: a fleet that trusts the manager's certificate, behind the
// Caddyfile `legacygate init --manager-key` wrote (window open from now),
// ends confirmed on the gateway's key, and no client is ever orphaned.
func TestDay0CutOverMovesAFleetTrustingTheManagerToTheGatewayKey(t *testing.T) {
	l := &initLab{keyChangeLab: startKeyChangeManager(t)}
	l.runInit(t, "--manager-key", filepath.Join(l.mgrDir, manager.TLSKeyFile))
	l.startWritten(t)
	gw := &harness.Gateway{AdminAddr: l.admin}

	run := runFleet(t, l.fleetTrusting(t, l.managerCert(t)))
	n := int64(fleetClients())
	fetched, ok := run.waitFor(30*time.Second, func(s fleet.Summary) bool { return s.SyLinkUpdates >= s.Clients })
	if !ok {
		t.Fatalf("not every client fetched the settings carrying the gateway's certificate within 30 s: %s", summaryLine(fetched))
	}
	counts, ok := waitConfirmedCount(t, gw, n, 5*fleetCycle+30*time.Second)
	if !ok {
		t.Fatalf("%d of %d clients confirmed the gateway's key: %+v, fleet %s", counts.Confirmed, n, counts, summaryLine(run.f.Summary()))
	}
	// A few more cycles on the gateway's key: a client that could not
	// verify it would now fail and be orphaned.
	base := run.f.Summary()
	run.waitFor(30*time.Second, func(s fleet.Summary) bool { return s.Heartbeats >= base.Heartbeats+3*s.Clients })
	s := run.stop()
	t.Logf("day-0 cut-over: %+v; %s", counts, summaryLine(s))
	if s.Orphaned != 0 || s.EverOrphaned != 0 || s.SignatureFailures != 0 {
		t.Fatalf("the cut-over orphaned clients or failed signatures: %s", summaryLine(s))
	}
	if s.Online != n || s.OnNewAnchor != n {
		t.Fatalf("want every client online and holding the gateway's certificate: %s", summaryLine(s))
	}

	// A confirmed client's profile is signed with the gateway's key.
	c := gatewayClient()
	host := registerThrough(t, c, "https://localhost:"+strconv.Itoa(l.port))
	base2 := "https://localhost:" + strconv.Itoa(l.port) + manager.SecarsPath + "?hostid=" + host + "&action="
	guardGet(t, c, http.MethodGet, base2+"sylink")
	for range 3 {
		guardGet(t, c, http.MethodGet, base2+"index")
	}
	p := guardGet(t, c, http.MethodGet, base2+"profile")
	if gwCert := loadCert(t, filepath.Join(l.out, "gateway.crt")); p.status != http.StatusOK || !verifies(t, gwCert, p.body) {
		t.Fatalf("a confirmed client's profile (%d) is not signed with the gateway's key from init", p.status)
	}
}

// gatewayClient reaches the gateway on 127.0.0.1 whatever the URL's host,
// without verifying its internal CA (the fleet does not either).
func gatewayClient() *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
		},
		DisableKeepAlives: true,
	}}
}

// syncWriter serialises writes from a process's output.
type syncWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// adaptExample adapts Caddyfile.example with env set (and its other
// variables unset) and returns the JSON, or the error with stderr.
func adaptExample(t *testing.T, env map[string]string) (string, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(exampleCaddyfile(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"LEGACYGATE_SITE", "LEGACYGATE_SITE_HOST", "LEGACYGATE_SITE_PORT", "SEPM_MANAGER", "SEPM_PIN",
		"SEPM_SERVER_NAME", "LEGACYGATE_BIND", "LEGACYGATE_ALLOW_SHA1", "LEGACYGATE_ERROR_LOG"} {
		t.Setenv(name, "") // restores the variable after the test
		os.Unsetenv(name)
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	stdout, stderr, err := harness.Run(t, "adapt", "--config", file)
	if err != nil {
		return "", fmt.Errorf("%w\n%s", err, stderr)
	}
	return stdout, nil
}

// TestCaddyfileExampleIsSwitchedByItsEnvironment: allow_sha1, the bind
// address, the error log and the settings rewrite follow the variables the
// file documents; the trust store is never touched; definitions downloads
// have a route of their own, without policy_guard, flushed as they arrive.
func TestCaddyfileExampleIsSwitchedByItsEnvironment(t *testing.T) {
	tests := []struct {
		name   string
		env    map[string]string
		want   []string
		absent []string
		err    string
	}{
		{"defaults", nil,
			[]string{`"listen":[":443"]`, `"logs":{"default":{"exclude":["http.handlers.reverse_proxy"]},"errors":{"writer":{"filename":"legacygate-errors.log","output":"file"},"encoder":{"format":"json"},"level":"ERROR","exclude":["http.handlers.reverse_proxy"]}}`,
				`"install_trust":false`, `"addresses":["sepm.example.com"]`, `"https_port":443`, `"drop_http_only":true`,
				`"flush_interval":-1,"handler":"reverse_proxy"`},
			[]string{`"allow_sha1":true`}, ""},
		{"SHA-1 on, bound, logged elsewhere, another site",
			map[string]string{"LEGACYGATE_ALLOW_SHA1": "on", "LEGACYGATE_BIND": "127.0.0.1", "LEGACYGATE_ERROR_LOG": "/tmp/x/errors.log",
				"LEGACYGATE_SITE_HOST": "sepm.corp.example", "LEGACYGATE_SITE_PORT": "8443"},
			[]string{`"allow_sha1":true`, `"listen":["127.0.0.1:443"]`, `"filename":"/tmp/x/errors.log"`, `"addresses":["sepm.corp.example"]`, `"https_port":8443`},
			nil, ""},
		{"SHA-1 off", map[string]string{"LEGACYGATE_ALLOW_SHA1": "off"}, nil, []string{`"allow_sha1":true`}, ""},
		{"SHA-1 neither on nor off", map[string]string{"LEGACYGATE_ALLOW_SHA1": "yes"}, nil, nil, `allow_sha1: \"yes\" is neither on nor off`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := adaptExample(t, tt.env)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("adapted JSON lacks %s", w)
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(out, a) {
					t.Errorf("adapted JSON has %s", a)
				}
			}
			// The definitions route (its handlers, then its match, in JSON)
			// comes before the one with policy_guard and holds none.
			content := strings.Index(out, `"match":[{"path":["/content/*"]}]`)
			guard := strings.Index(out, `"handler":"policy_guard"`)
			flush := strings.Index(out, `"flush_interval":-1`)
			if content < 0 || flush > content || guard < content || strings.Count(out, `"handler":"policy_guard"`) != 1 {
				t.Errorf("want the /content/* route first and one policy_guard after it (at %d and %d)", content, guard)
			}
		})
	}
}

// TestCaddyfileExampleRefusesThePlaceholderPin: with SEPM_PIN unset the
// example's placeholder pin passes adapt but not validate, and the message
// says how to get the real one.
func TestCaddyfileExampleRefusesThePlaceholderPin(t *testing.T) {
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	setExampleKeyFiles(t, pair)
	if _, err := adaptExample(t, nil); err != nil {
		t.Fatalf("adapt must still translate the example on a clean machine: %v", err)
	}
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(exampleCaddyfile(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	// validate opens the error log too: not in this package's folder.
	t.Setenv("LEGACYGATE_ERROR_LOG", filepath.Join(t.TempDir(), "errors.log"))
	_, stderr, err := harness.Run(t, "validate", "--config", file)
	if err == nil || !strings.Contains(stderr, "is a placeholder") || !strings.Contains(stderr, "legacygate pin HOST:PORT") {
		t.Fatalf("validate: %v, want a refusal of the placeholder pin naming legacygate pin:\n%s", err, stderr)
	}
}

// TestCaddyfileExampleStreamsDefinitions: a definitions download reaches
// the client chunk by chunk as the manager sends it; a buffered answer
// would hold the first chunk until the manager finished.
func TestCaddyfileExampleStreamsDefinitions(t *testing.T) {
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair.TLS()}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A known length, as a real definitions file has: without one
		// Caddy flushes every write anyway.
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len("first chunk\nthe rest\n")))
		w.Write([]byte("first chunk\n"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		w.Write([]byte("the rest\n"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { close(release); srv.Close() })

	port := harness.FreePort(t)
	for k, v := range map[string]string{"LEGACYGATE_SITE": "localhost:" + strconv.Itoa(port), "SEPM_MANAGER": ln.Addr().String(),
		"SEPM_PIN": pair.Pin(), "SEPM_SERVER_NAME": "manager.test"} {
		t.Setenv(k, v)
	}
	setExampleKeyFiles(t, pair)
	g := harness.StartGateway(t, exampleCaddyfile(t))
	g.WaitCertificate(t, "localhost")
	resp, err := g.Client(t).Get("https://localhost:" + strconv.Itoa(port) + "/content/{535CB6A4-441F-4e8a-A897-804CD859100E}/190901001/full.zip")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 64)
		n, _ := resp.Body.Read(buf)
		got <- string(buf[:n])
	}()
	select {
	case first := <-got:
		if resp.StatusCode != http.StatusOK || first != "first chunk\n" {
			t.Fatalf("status %d, first read %q, want 200 and the first chunk", resp.StatusCode, first)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first chunk did not arrive while the manager was still sending: the download is buffered")
	}
}

package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
)

// legacyManager is an in-test HTTPS server standing in for a manager that
// speaks old TLS. It answers every request with the TLS version and SNI it saw.
type legacyManager struct {
	addr       string
	pair       *certs.Pair
	certFile   string
	requests   atomic.Int64
	handshakes atomic.Int64 // TLS handshakes begun
}

type managerTLS struct {
	kind       certs.Kind
	minVersion uint16
	maxVersion uint16
	suites     []uint16      // nil: Go's defaults
	delay      time.Duration // before answering
}

func startLegacyManager(t *testing.T, opts managerTLS) *legacyManager {
	t.Helper()
	pair, err := certs.New(opts.kind, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	certFile, _, err := pair.WriteFiles(t.TempDir(), "manager")
	if err != nil {
		t.Fatal(err)
	}
	m := &legacyManager{pair: pair, certFile: certFile}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()},
		MinVersion:   opts.minVersion,
		MaxVersion:   opts.maxVersion,
		CipherSuites: opts.suites,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m.handshakes.Add(1)
			return nil, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.addr = ln.Addr().String()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m.requests.Add(1)
			time.Sleep(opts.delay)
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
				return
			}
			// The banners a real manager's Apache/IIS sends.
			w.Header().Set("Server", "Apache/2.2.22 (Win32)")
			w.Header().Set("X-Powered-By", "PHP/5.2.17")
			fmt.Fprintf(w, "manager: %s sni=%q cipher=%s", tls.VersionName(r.TLS.Version), r.TLS.ServerName, tls.CipherSuiteName(r.TLS.CipherSuite))
		}),
		ReadHeaderTimeout: 5 * time.Second,
		// Refused handshakes are what several tests expect; they are asserted
		// through the gateway, not logged here.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return m
}

// transportCaddyfile is a plain-HTTP front on frontPort proxying to upstream with
// the given transport block.
func transportCaddyfile(frontPort int, upstream, transport string) string {
	return fmt.Sprintf("http://127.0.0.1:%d {\n\treverse_proxy %s {\n\t\t%s\n\t}\n}\n", frontPort, upstream, transport)
}

func transportGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 15 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// transportMetric reads one sample's value from the gateway's admin /metrics.
func transportMetric(t *testing.T, g *harness.Gateway, sample string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + g.AdminAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if value, ok := strings.CutPrefix(line, sample+" "); ok {
			return value
		}
	}
	return ""
}

func TestLegacyTLSReachesManagersStockGoRefuses(t *testing.T) {
	otherPin := "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
	tests := []struct {
		name        string
		manager     managerTLS
		transport   func(m *legacyManager) string
		wantBody    string
		wantVersion string
	}{
		{
			name:    "TLS 1.0-only manager with SHA-1 certificate",
			manager: managerTLS{kind: certs.SHA1, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10},
			transport: func(m *legacyManager) string {
				return "transport legacy_tls {\n\t\t\tpin " + m.pair.Pin() + "\n\t\t\tmin_version tls1.0\n\t\t}"
			},
			wantBody:    "manager: TLS 1.0",
			wantVersion: "tls1.0",
		},
		{
			name:    "TLS 1.1 manager, next key pinned beside the current one",
			manager: managerTLS{kind: certs.SHA1, minVersion: tls.VersionTLS11, maxVersion: tls.VersionTLS11},
			transport: func(m *legacyManager) string {
				return "transport legacy_tls {\n\t\t\tpin " + otherPin + " " + m.pair.Pin() + "\n\t\t\tmin_version tls1.0\n\t\t}"
			},
			wantBody:    "manager: TLS 1.1",
			wantVersion: "tls1.1",
		},
		{
			name:    "CN-only certificate",
			manager: managerTLS{kind: certs.CNOnly, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS12},
			transport: func(m *legacyManager) string {
				return "transport legacy_tls {\n\t\t\tpin " + m.pair.Pin() + "\n\t\t}"
			},
			wantBody:    "manager: TLS 1.2",
			wantVersion: "tls1.2",
		},
		{
			name:    "expired certificate",
			manager: managerTLS{kind: certs.Expired, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10},
			transport: func(m *legacyManager) string {
				return "transport legacy_tls {\n\t\t\tpin " + m.pair.Pin() + "\n\t\t\tmin_version tls1.0\n\t\t}"
			},
			wantBody:    "manager: TLS 1.0",
			wantVersion: "tls1.0",
		},
		{
			name:    "http transport option tls_server_name still applies",
			manager: managerTLS{kind: certs.SHA1, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10},
			transport: func(m *legacyManager) string {
				return "transport legacy_tls {\n\t\t\tpin " + m.pair.Pin() + "\n\t\t\tmin_version tls1.0\n\t\t\ttls_server_name sepm.example\n\t\t\tdial_timeout 2s\n\t\t}"
			},
			wantBody:    `manager: TLS 1.0 sni="sepm.example"`,
			wantVersion: "tls1.0",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := startLegacyManager(t, tc.manager)
			port := harness.FreePort(t)
			g := harness.StartGateway(t, transportCaddyfile(port, m.addr, tc.transport(m)))
			code, body := transportGet(t, fmt.Sprintf("http://127.0.0.1:%d/secars/secars.dll?hello,secars", port))
			if code != http.StatusOK || !strings.HasPrefix(body, tc.wantBody) {
				t.Fatalf("got %d %q, want 200 starting with %q", code, body, tc.wantBody)
			}
			if got := transportMetric(t, g, `legacygate_upstream_tls_handshakes_total{result="pin_ok",tls_version="`+tc.wantVersion+`"}`); got != "1" {
				t.Errorf("pin_ok counter for %s = %q, want 1", tc.wantVersion, got)
			}
		})
	}
}

func TestLegacyTLSWrongPinGives502AndLogsPins(t *testing.T) {
	m := startLegacyManager(t, managerTLS{kind: certs.SHA1, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10})
	other, err := certs.New(certs.Modern, "next.manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	g := harness.StartGateway(t, transportCaddyfile(port, m.addr,
		"transport legacy_tls {\n\t\t\tpin "+other.Pin()+"\n\t\t\tmin_version tls1.0\n\t\t}"))

	code, _ := transportGet(t, fmt.Sprintf("http://127.0.0.1:%d/secars/secars.dll?hello,secars", port))
	if code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", code)
	}
	if n := m.requests.Load(); n != 0 {
		t.Fatalf("the manager received %d requests over a connection whose pin failed", n)
	}
	if got := transportMetric(t, g, `legacygate_upstream_tls_handshakes_total{result="pin_mismatch",tls_version="tls1.0"}`); got == "" || got == "0" {
		t.Errorf("pin_mismatch counter = %q, want at least 1", got)
	}
	line := g.WaitLog(t, 5*time.Second, "upstream certificate does not match any pin")
	for _, want := range []string{
		`"upstream":"` + m.addr + `"`,
		`"expected_pins":["` + other.Pin() + `"]`,
		`"seen_pin":"` + m.pair.Pin() + `"`,
		`"tls_version":"TLS 1.0"`,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("log line lacks %s:\n%s", want, line)
		}
	}
}

// TestStockHTTPTransportFailsAgainstLegacyManagers shows why legacy_tls
// exists: Caddy's own transport cannot reach these managers, however it is
// configured (trusting the manager's certificate, or even skipping
// verification).
func TestStockHTTPTransportFailsAgainstLegacyManagers(t *testing.T) {
	tests := []struct {
		name      string
		manager   managerTLS
		transport func(m *legacyManager) string
	}{
		{
			name:    "TLS 1.0 manager, certificate trusted",
			manager: managerTLS{kind: certs.Modern, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10},
			transport: func(m *legacyManager) string {
				return "transport http {\n\t\t\ttls_trust_pool file " + m.certFile + "\n\t\t\ttls_server_name localhost\n\t\t}"
			},
		},
		{
			name:    "TLS 1.0 manager, verification skipped",
			manager: managerTLS{kind: certs.SHA1, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10},
			transport: func(*legacyManager) string {
				return "transport http {\n\t\t\ttls_insecure_skip_verify\n\t\t}"
			},
		},
		{
			name: "TLS 1.2 manager offering only RSA key exchange, certificate trusted",
			manager: managerTLS{kind: certs.Modern, minVersion: tls.VersionTLS12, maxVersion: tls.VersionTLS12,
				suites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}},
			transport: func(m *legacyManager) string {
				return "transport http {\n\t\t\ttls_trust_pool file " + m.certFile + "\n\t\t\ttls_server_name localhost\n\t\t}"
			},
		},
		{
			name:    "TLS 1.2 manager with CN-only certificate, certificate trusted",
			manager: managerTLS{kind: certs.CNOnly, minVersion: tls.VersionTLS12, maxVersion: tls.VersionTLS12},
			transport: func(m *legacyManager) string {
				return "transport http {\n\t\t\ttls_trust_pool file " + m.certFile + "\n\t\t\ttls_server_name manager.test\n\t\t}"
			},
		},
		{
			name:    "TLS 1.2 manager with expired certificate, certificate trusted",
			manager: managerTLS{kind: certs.Expired, minVersion: tls.VersionTLS12, maxVersion: tls.VersionTLS12},
			transport: func(m *legacyManager) string {
				return "transport http {\n\t\t\ttls_trust_pool file " + m.certFile + "\n\t\t\ttls_server_name localhost\n\t\t}"
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := startLegacyManager(t, tc.manager)
			port := harness.FreePort(t)
			harness.StartGateway(t, transportCaddyfile(port, "https://"+m.addr, tc.transport(m)))
			code, body := transportGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port))
			if code != http.StatusBadGateway {
				t.Fatalf("stock transport got %d %q, want 502", code, body)
			}
			if n := m.requests.Load(); n != 0 {
				t.Fatalf("the manager received %d requests", n)
			}
		})
	}
}

func TestLegacyTLSRSAKeyExchangeOnlyWhenListed(t *testing.T) {
	rsaKex := managerTLS{
		kind: certs.SHA1, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10,
		suites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA},
	}
	tests := []struct {
		name     string
		suites   string
		wantCode int
	}{
		{"listed", "\n\t\t\tcipher_suites TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA TLS_RSA_WITH_AES_128_CBC_SHA", http.StatusOK},
		{"not listed", "", http.StatusBadGateway},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := startLegacyManager(t, rsaKex)
			port := harness.FreePort(t)
			harness.StartGateway(t, transportCaddyfile(port, m.addr,
				"transport legacy_tls {\n\t\t\tpin "+m.pair.Pin()+"\n\t\t\tmin_version tls1.0"+tc.suites+"\n\t\t}"))
			code, body := transportGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port))
			if code != tc.wantCode {
				t.Fatalf("got %d %q, want %d", code, body, tc.wantCode)
			}
			if code == http.StatusOK && !strings.Contains(body, "cipher=TLS_RSA_WITH_AES_128_CBC_SHA") {
				t.Fatalf("manager reports %q, want RSA key exchange", body)
			}
		})
	}
}

func TestLegacyTLSSlowManagerTimesOut(t *testing.T) {
	m := startLegacyManager(t, managerTLS{kind: certs.SHA1, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10, delay: 3 * time.Second})
	port := harness.FreePort(t)
	harness.StartGateway(t, transportCaddyfile(port, m.addr,
		"transport legacy_tls {\n\t\t\tpin "+m.pair.Pin()+"\n\t\t\tmin_version tls1.0\n\t\t\tresponse_header_timeout 300ms\n\t\t}"))
	start := time.Now()
	code, _ := transportGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port))
	if code != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", code)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("answered after %v; response_header_timeout 300ms did not apply", elapsed)
	}
}

func TestLegacyTLSDeadManagerGives502(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	port := harness.FreePort(t)
	harness.StartGateway(t, transportCaddyfile(port, dead,
		"transport legacy_tls {\n\t\t\tpin sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\t\t}"))
	if code, _ := transportGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", code)
	}
}

func TestLegacyTLSConfigMistakesStopTheGateway(t *testing.T) {
	tests := []struct {
		name, transport, want string
	}{
		{"no pin and no trust pool", "transport legacy_tls {\n\t\t\tmin_version tls1.0\n\t\t}", "no pin and no trust pool"},
		{"bad pin", "transport legacy_tls {\n\t\t\tpin sha256/short\n\t\t}", "pin"},
		{"min above max", "transport legacy_tls {\n\t\t\tpin sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\t\t\tmin_version tls1.2\n\t\t\tmax_version tls1.1\n\t\t}", "min_version TLS 1.2 is above max_version TLS 1.1"},
		{"plain http upstream", "transport legacy_tls {\n\t\t\tpin sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\t\t}", "HTTP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			upstream := "127.0.0.1:9"
			if tc.name == "plain http upstream" {
				upstream = "http://127.0.0.1:9"
			}
			_, err := harness.TryStartGateway(t, transportCaddyfile(harness.FreePort(t), upstream, tc.transport))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

package e2e

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/manager"
)

// Fault tests run the full chain (heartbeat_limit, policy_guard,
// reverse_proxy with lb_retries over legacy_tls to a TLS 1.0 / SHA-1
// manager) against a manager failing in each way a real one does. Covered
// elsewhere: a mid-body close behind a plain-HTTP upstream
// (TestPolicyGuardThroughCaddyNeverForwardsBadPayloads), a slow and a dead
// manager behind legacy_tls alone (TestLegacyTLSSlowManagerTimesOut,
// TestLegacyTLSDeadManagerGives502).

// faultyManager is an upstream failing one way.
type faultyManager struct {
	addr     string
	pin      string
	certFile string       // the certificate policy_guard trusts for signatures
	logs     func() int64 // log uploads the manager received (handled)
	hostID   string
	// accepted, when set, counts TCP connections the manager accepted, to
	// prove a failure that happens before HTTP was really reached.
	accepted func() int64
}

// faultEmulator is the emulated manager (TLS 1.0, SHA-1) with a fault set
// after one client registered.
func faultEmulator(t *testing.T, fault manager.Fault) faultyManager {
	t.Helper()
	m, err := manager.New(manager.Config{
		HTTPSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		TLSMin: tls.VersionTLS10, TLSMax: tls.VersionTLS10, Cert: certs.SHA1, Sign: manager.SignRSASHA1,
		CommonName: "sepm.legacygate.test",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	certFile, _, err := m.Pair().WriteFiles(t.TempDir(), "manager")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.PostForm("http://"+m.Addrs().HTTP+"/secreg/secreg.dll?action=register", url.Values{"hostname": {"fault-client"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	_, rest, _ := strings.Cut(string(body), `HostId="`)
	hostID, _, _ := strings.Cut(rest, `"`)
	if hostID == "" {
		t.Fatalf("registration answered %q", body)
	}
	m.SetFault(fault)
	return faultyManager{addr: m.Addrs().HTTPS, pin: m.Pin(), certFile: certFile, hostID: hostID,
		logs: func() int64 { return m.Requests(manager.CountLog) }}
}

// faultCutManager is a TLS 1.0 manager that announces the whole answer
// (a 100 KB signed profile), sends half of it and closes the connection.
func faultCutManager(t *testing.T) faultyManager {
	t.Helper()
	pair, err := certs.New(certs.SHA1, "sepm.legacygate.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	certFile, _, err := pair.WriteFiles(t.TempDir(), "manager")
	if err != nil {
		t.Fatal(err)
	}
	profile := guardProfile(t, pair, 100<<10)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair.TLS()},
		MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10})
	if err != nil {
		t.Fatal(err)
	}
	var logs atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Query().Get("action") == "log" {
			logs.Add(1)
		}
		w.Header().Set("Content-Type", "text/xml")
		w.Header().Set("Content-Length", strconv.Itoa(len(profile)))
		w.Write(profile[:len(profile)/2])
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return faultyManager{addr: ln.Addr().String(), pin: pair.Pin(), certFile: certFile, hostID: "AB12", logs: logs.Load}
}

// faultResetManager accepts TCP connections, reads the ClientHello and
// resets the connection (RST, SO_LINGER 0) instead of answering it.
func faultResetManager(t *testing.T, k *guardKeys) faultyManager {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				c.Read(make([]byte, 4096)) // the ClientHello
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}()
		}
	}()
	return faultyManager{addr: ln.Addr().String(), pin: k.manager.Pin(), certFile: k.managerCertFile, hostID: "AB12",
		logs: func() int64 { return 0 }, accepted: accepted.Load}
}

// faultRefusingManager is an address where nothing listens.
func faultRefusingManager(t *testing.T, k *guardKeys) faultyManager {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return faultyManager{addr: addr, pin: k.manager.Pin(), certFile: k.managerCertFile, hostID: "AB12",
		logs: func() int64 { return 0 }}
}

// faultGateway runs the full chain in front of m, with retries configured.
func faultGateway(t *testing.T, k *guardKeys, m faultyManager) (*harness.Gateway, string) {
	t.Helper()
	port := harness.FreePort(t)
	g := harness.StartGateway(t, fmt.Sprintf(`{
	grace_period 1s
}

localhost:%d {
	tls internal
	heartbeat_limit /secars/secars.dll {
		key {query.hostid} {client_ip}
		rate 100/1s
		burst 100
	}
	policy_guard /secars/secars.dll {
		upstream_cert %s
		signing_key %s %s
		roots Profile ServerSettings
		allow_sha1
	}
	reverse_proxy %s {
		lb_retries 3
		lb_try_duration 3s
		transport legacy_tls {
			pin %s
			min_version tls1.0
			tls_server_name sepm.legacygate.test
			dial_timeout 1s
			response_header_timeout 500ms
		}
	}
}
`, port, m.certFile, k.gatewayKeyFile, k.gatewayCertFile, m.addr, m.pin))
	g.WaitCertificate(t, "localhost")
	return g, fmt.Sprintf("https://localhost:%d", port)
}

func faultDo(t *testing.T, c *http.Client, method, rawURL string, body []byte) guardResponse {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("User-Agent", "Smc")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: the client got a broken answer instead of a clear status: %v", rawURL, err)
	}
	return guardResponse{resp.StatusCode, resp.Header, got}
}

func TestFaultsGiveAClearStatusNeverAPartialBodyNorADuplicatedUpload(t *testing.T) {
	k := newGuardKeys(t)
	tests := []struct {
		name    string
		manager func(t *testing.T) faultyManager
		status  int
		// uploads is how many log uploads the manager may have handled: one
		// when the request reached it, zero when it never did. Never more:
		// lb_retries must not repeat a POST.
		uploads int64
		// settle is how long the manager may still be working on a request
		// the gateway gave up on; the count is taken after it.
		settle time.Duration
	}{
		{"closes the connection after reading the request", func(t *testing.T) faultyManager {
			return faultEmulator(t, manager.Fault{Abort: true})
		}, http.StatusBadGateway, 1, 0},
		{"closes the connection mid-body", faultCutManager, http.StatusBadGateway, 1, 0},
		{"answers after the timeout", func(t *testing.T) faultyManager {
			return faultEmulator(t, manager.Fault{Delay: 3 * time.Second})
		}, http.StatusGatewayTimeout, 1, 3500 * time.Millisecond},
		{"refuses connections", func(t *testing.T) faultyManager { return faultRefusingManager(t, k) }, http.StatusBadGateway, 0, 0},
		{"resets during the TLS handshake", func(t *testing.T) faultyManager { return faultResetManager(t, k) }, http.StatusBadGateway, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := tc.manager(t)
			g, base := faultGateway(t, k, m)
			c := g.Client(t)
			requests := []struct {
				method, action string
				body           []byte
			}{
				{"GET", "profile", nil},
				{"POST", "log", bytes.Repeat([]byte("log line\r\n"), 100)},
			}
			for _, r := range requests {
				start := time.Now()
				resp := faultDo(t, c, r.method, base+"/secars/secars.dll?action="+r.action+"&hostid="+m.hostID, r.body)
				if resp.status != tc.status {
					t.Errorf("%s %s: status %d, want %d (body %q)", r.method, r.action, resp.status, tc.status, resp.body)
				}
				if bytes.Contains(resp.body, []byte("<")) || bytes.Contains(resp.body, []byte(guardMarker)) {
					t.Errorf("%s %s: the client got (part of) the manager's body: %q", r.method, r.action, resp.body)
				}
				if cl := resp.header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(resp.body)) {
					t.Errorf("%s %s: Content-Length %s for %d bytes", r.method, r.action, cl, len(resp.body))
				}
				// Bounded by lb_try_duration (3 s, GETs are retried) plus one
				// response_header_timeout (500 ms).
				if elapsed := time.Since(start); elapsed > 4500*time.Millisecond {
					t.Errorf("%s %s: answered after %v: the client waited past the configured bounds", r.method, r.action, elapsed)
				}
			}
			// A request the gateway gave up on may still be handled by a slow
			// manager, once: wait it out before counting.
			time.Sleep(tc.settle)
			if got := m.logs(); got > tc.uploads || (tc.settle == 0 && got != tc.uploads) {
				t.Errorf("the manager handled %d log uploads, want %d (lb_retries must never repeat a POST)", got, tc.uploads)
			}
			if m.accepted != nil && m.accepted() == 0 {
				t.Error("the manager never saw a connection: the case proved nothing")
			}
		})
	}
}

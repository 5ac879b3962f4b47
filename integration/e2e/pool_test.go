package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
)

// TestPoolKeepsManagerHandshakesBelow5Per1000Requests: 128 keep-alive
// clients through legacy_tls with its default pool cost the manager a
// handshake only when the pool grows.
func TestPoolKeepsManagerHandshakesBelow5Per1000Requests(t *testing.T) {
	const clients, perClient = 128, 160 // the pool grows to max_conns (64) once: 64 handshakes
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	var handshakes atomic.Int64
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()},
		MinVersion:   tls.VersionTLS10,
		MaxVersion:   tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			handshakes.Add(1)
			return nil, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	front := harness.FreePort(t)
	g := harness.StartGateway(t, transportCaddyfile(front, ln.Addr().String(),
		"transport legacy_tls {\n\t\t\tpin "+pair.Pin()+"\n\t\t}"))
	url := fmt.Sprintf("http://127.0.0.1:%d/heartbeat", front)

	requests := clients * perClient
	if n := keepAliveClients(clients, perClient, func() *http.Client {
		return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	}, func(int) string { return url }); n != 0 {
		t.Fatalf("%d of %d requests failed", n, requests)
	}
	per1000 := float64(handshakes.Load()) * 1000 / float64(requests)
	t.Logf("%d upstream handshakes for %d proxied requests: %.2f per 1,000", handshakes.Load(), requests, per1000)
	if per1000 >= 5 {
		t.Fatalf("%.2f upstream handshakes per 1,000 requests, want fewer than 5", per1000)
	}
	if idle := transportMetric(t, g, `legacygate_upstream_connections{state="idle"}`); idle == "" || idle == "0" {
		t.Fatalf("idle connections gauge %q after the run, want the pool's connections", idle)
	}
}

// TestCaddyfileExampleCostsTheManagerFewerThan5HandshakesPer1000Requests:
// Caddyfile.example as shipped (its heartbeat limits raised through their
// environment variables, so that every request reaches the manager), 128
// keep-alive clients over TLS, each its own host id: no request fails and
// the manager sees a handshake only while the pool grows.
func TestCaddyfileExampleCostsTheManagerFewerThan5HandshakesPer1000Requests(t *testing.T) {
	const clients, perClient = 128, 160
	m := startLegacyManager(t, managerTLS{kind: certs.Modern, minVersion: tls.VersionTLS12, maxVersion: tls.VersionTLS12})
	port := harness.FreePort(t)
	for name, value := range map[string]string{
		"LEGACYGATE_SITE": fmt.Sprintf("localhost:%d", port), "SEPM_MANAGER": m.addr,
		"SEPM_PIN": m.pair.Pin(), "SEPM_SERVER_NAME": "manager.test",
		"LEGACYGATE_HEARTBEAT_RATE": "1000000/1s", "LEGACYGATE_HEARTBEAT_BURST": "1000000",
		"LEGACYGATE_HEARTBEAT_GLOBAL_RATE": "1000000/1s",
	} {
		t.Setenv(name, value)
	}
	setExampleKeyFiles(t, m.pair)
	g := harness.StartGateway(t, exampleCaddyfile(t))
	g.WaitCertificate(t, "localhost")
	roots := g.RootCAs(t)
	requests := clients * perClient
	failed := keepAliveClients(clients, perClient, func() *http.Client {
		return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 1,
			TLSClientConfig:     &tls.Config{RootCAs: roots, ServerName: "localhost"},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
			},
		}}
	}, func(i int) string {
		return fmt.Sprintf("https://localhost:%d/secars/secars.dll?action=index&hostid=%032X", port, i)
	})
	if failed != 0 {
		t.Fatalf("%d of %d requests through Caddyfile.example failed", failed, requests)
	}
	if got := m.requests.Load(); got != int64(requests) {
		t.Fatalf("the manager received %d of %d requests", got, requests)
	}
	per1000 := float64(m.handshakes.Load()) * 1000 / float64(requests)
	t.Logf("Caddyfile.example: %d manager handshakes for %d requests: %.2f per 1,000", m.handshakes.Load(), requests, per1000)
	if per1000 >= 5 {
		t.Fatalf("%.2f manager handshakes per 1,000 requests through Caddyfile.example, want fewer than 5", per1000)
	}
}

// keepAliveClients runs n clients (newClient each) sending perClient GETs
// of url(client) one after the other, and returns how many failed or did
// not answer 200.
func keepAliveClients(n, perClient int, newClient func() *http.Client, url func(int) string) int64 {
	var failed atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			client := newClient()
			defer client.CloseIdleConnections()
			for range perClient {
				resp, err := client.Get(url(i))
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return failed.Load()
}

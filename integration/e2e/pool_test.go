package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
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

	var failed atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			for range perClient {
				resp, err := client.Get(url)
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
	requests := clients * perClient
	if n := failed.Load(); n != 0 {
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

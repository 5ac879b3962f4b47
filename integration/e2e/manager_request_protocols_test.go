package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/legacygate/legacygate/integration/harness"
)

// managerRequestH3Gateway is a TLS gateway serving HTTP/1.1, HTTP/2 and
// HTTP/3 (UDP) on 127.0.0.1 with manager_request in front of a raw upstream.
func managerRequestH3Gateway(t *testing.T) (port int, g *harness.Gateway, up *harness.RawUpstream) {
	t.Helper()
	up = harness.StartRawUpstream(t, func([]byte) []byte {
		return harness.RawAnswer("200 OK", []string{"Content-Type: text/plain", "Server: Microsoft-IIS/10.0"}, "OK")
	})
	port = harness.FreePort(t)
	g = harness.StartGateway(t, fmt.Sprintf(`{
	servers {
		protocols h1 h2 h3
	}
}

localhost:%d {
	bind 127.0.0.1
	tls internal
	manager_request {
		allow GET POST /secars/secars.dll
		decision_keys action hostid
	}
	reverse_proxy %s
}
`, port, up.Addr))
	g.WaitCertificate(t, "localhost")
	return port, g, up
}

// h3Client speaks only HTTP/3, to 127.0.0.1 whatever host the URL names.
func h3Client(t *testing.T, g *harness.Gateway) *http.Client {
	t.Helper()
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: g.RootCAs(t), MinVersion: tls.VersionTLS13},
		Dial: func(ctx context.Context, addr string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return quic.DialAddrEarly(ctx, net.JoinHostPort("127.0.0.1", port), tlsCfg, cfg)
		},
	}
	t.Cleanup(func() { _ = tr.Close() })
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// h2Client speaks only HTTP/2 over TLS, to 127.0.0.1.
func h2Client(t *testing.T, g *harness.Gateway) *http.Client {
	t.Helper()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: g.RootCAs(t), MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
		},
		Protocols: new(http.Protocols),
	}
	tr.Protocols.SetHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// unknownLength hides the body's length, so the client sends it without
// Content-Length, as DATA frames on an open stream.
type unknownLength struct{ io.Reader }

func TestManagerRequestJudgesBodiesOverHTTP2AndHTTP3(t *testing.T) {
	port, g, up := managerRequestH3Gateway(t)
	url := "https://localhost:" + strconv.Itoa(port) + "/secars/secars.dll?action=index"
	clients := map[string]*http.Client{"HTTP/2.0": h2Client(t, g), "HTTP/3.0": h3Client(t, g)}

	for _, tc := range []struct {
		name, proto string
		body        io.Reader
		refused     bool
	}{
		{"HTTP/3 GET reaches the upstream without a body", "HTTP/3.0", nil, false},
		{"HTTP/2 GET reaches the upstream without a body", "HTTP/2.0", nil, false},
		{"HTTP/2 GET with a Content-Length body is refused", "HTTP/2.0", strings.NewReader("hello"), true},
		{"HTTP/2 GET with a body of unknown length is refused", "HTTP/2.0", unknownLength{strings.NewReader("hello")}, true},
		{"HTTP/3 GET with a Content-Length body is refused", "HTTP/3.0", strings.NewReader("hello"), true},
		{"HTTP/3 GET with a body of unknown length is refused", "HTTP/3.0", unknownLength{strings.NewReader("hello")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up.Reset()
			req, err := http.NewRequest(http.MethodGet, url, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := clients[tc.proto].Do(req)
			if err != nil {
				t.Fatalf("%s GET: %v", tc.proto, err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Proto != tc.proto {
				t.Fatalf("answered over %s, want %s", resp.Proto, tc.proto)
			}
			reqs := up.Requests()
			if tc.refused {
				if resp.StatusCode != http.StatusBadRequest || string(body) != "400 Bad Request\n" {
					t.Errorf("answer %d %q, want 400 with the fixed body", resp.StatusCode, body)
				}
				if v := resp.Header.Values("Connection"); len(v) != 0 {
					t.Errorf("Connection %q on an %s answer", v, tc.proto)
				}
				if len(reqs) != 0 {
					t.Errorf("the upstream received %q with body %q", reqs[0].Line(), reqs[0].Body)
				}
				g.WaitLog(t, 5*time.Second, `"manager request refused"`, `"reason":"body_not_allowed"`)
				return
			}
			if resp.StatusCode != http.StatusOK || string(body) != "OK" {
				t.Fatalf("answer %d %q, want the upstream's 200 OK", resp.StatusCode, body)
			}
			if len(reqs) != 1 {
				t.Fatalf("the upstream received %d requests, want 1", len(reqs))
			}
			if got, want := reqs[0].Line(), "GET /secars/secars.dll?action=index HTTP/1.1"; got != want {
				t.Errorf("upstream request line %q, want %q", got, want)
			}
			for _, name := range []string{"Content-Length", "Transfer-Encoding"} {
				if v := reqs[0].Header(name); len(v) != 0 {
					t.Errorf("the GET reached the upstream with %s %q", name, v)
				}
			}
		})
	}
}

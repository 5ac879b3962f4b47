package manager

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
)

// Key pairs are slow to make on a busy machine; tests that only need some
// pair share one per kind.
var (
	pairsMu sync.Mutex
	pairs   = map[certs.Kind]*certs.Pair{}
)

func testPair(t testing.TB, kind certs.Kind) *certs.Pair {
	t.Helper()
	pairsMu.Lock()
	defer pairsMu.Unlock()
	if p, ok := pairs[kind]; ok {
		return p
	}
	p, err := certs.New(kind, "sepm.legacygate.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	pairs[kind] = p
	return p
}

// startManager starts a manager on free loopback ports, closed at test end.
func startManager(t testing.TB, cfg Config) *Manager {
	t.Helper()
	if cfg.HTTPSAddr == "" {
		cfg.HTTPSAddr = "127.0.0.1:0"
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.Initial == nil {
		kind := cfg.Cert
		if kind == "" {
			kind = certs.Modern
		}
		cfg.Initial = testPair(t, kind)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := m.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// testClient speaks HTTPS within the given TLS versions, without chain checks
// (as a SEPM client with HttpsVerifyCA="0"), and plain HTTP.
func testClient(minV, maxV uint16) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: minV, MaxVersion: maxV},
		},
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
	close  bool // the server asked to close the connection
}

func do(t testing.TB, c *http.Client, method, rawURL string, body io.Reader, contentType string) response {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("User-Agent", "Smc")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, rawURL, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b, close: resp.Close}
}

// register registers a client over base ("https://…" or "http://…") and
// returns its HostId.
func register(t testing.TB, c *http.Client, base string) string {
	t.Helper()
	form := url.Values{"hostname": {"pc-0001"}, "group": {`My Company\Laptops`}}
	r := do(t, c, http.MethodPost, base+SecregPath+"?action=register", strings.NewReader(form.Encode()), "application/x-www-form-urlencoded")
	if r.status != http.StatusOK {
		t.Fatalf("register: status %d body %q", r.status, r.body)
	}
	s := string(r.body)
	i := strings.Index(s, `HostId="`)
	if i < 0 {
		t.Fatalf("register: no HostId in %q", s)
	}
	id := s[i+len(`HostId="`):]
	return id[:strings.IndexByte(id, '"')]
}

// servedCert does a TLS handshake with the manager and returns its leaf.
func servedCert(t testing.TB, addr string) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10})
	if err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// needTool returns the path of an external tool, skipping the test when it is
// absent, unless CI=true, where its absence fails the test.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required under CI=true: %v", name, err)
	}
	t.Skipf("%s not installed", name)
	return ""
}

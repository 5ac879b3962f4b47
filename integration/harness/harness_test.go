package harness

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
)

func get(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
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

func TestGatewayServesReloadsAndLogs(t *testing.T) {
	port := FreePort(t)
	site := func(body string) string {
		return fmt.Sprintf("http://127.0.0.1:%d {\n\trespond %q\n}\n", port, body)
	}
	g := StartGateway(t, site("first"))
	client := &http.Client{Timeout: 5 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)

	if code, body := get(t, client, url); code != 200 || body != "first" {
		t.Fatalf("before reload: %d %q, want 200 \"first\"", code, body)
	}
	g.Reload(t, site("second"))
	if code, body := get(t, client, url); code != 200 || body != "second" {
		t.Fatalf("after reload: %d %q, want 200 \"second\"", code, body)
	}
	g.WaitLog(t, 5*time.Second, "serving initial configuration")
	if !strings.Contains(g.Logs(), g.AdminAddr) {
		t.Errorf("log does not mention the admin address %s:\n%s", g.AdminAddr, g.Logs())
	}
}

func TestGatewayWithGlobalBlockAndInternalTLS(t *testing.T) {
	port := FreePort(t)
	g := StartGateway(t, fmt.Sprintf(`{
	grace_period 1s
}

localhost:%d {
	tls internal
	respond "secure"
}
`, port))
	g.WaitCertificate(t, "localhost")
	code, body := get(t, g.Client(t), fmt.Sprintf("https://localhost:%d/", port))
	if code != 200 || body != "secure" {
		t.Fatalf("got %d %q, want 200 \"secure\"", code, body)
	}
}

func TestBadConfigurationIsReported(t *testing.T) {
	tests := []struct {
		name      string
		caddyfile string
		want      string
	}{
		{"unknown directive", "http://127.0.0.1:1 {\n\tno_such_directive\n}\n", "no_such_directive"},
		{"bad port", "http://127.0.0.1:99999 {\n\trespond ok\n}\n", "99999"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := TryStartGateway(t, tc.caddyfile)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestFailedReloadKeepsOldConfiguration(t *testing.T) {
	port := FreePort(t)
	g := StartGateway(t, fmt.Sprintf("http://127.0.0.1:%d {\n\trespond old\n}\n", port))
	if err := g.TryReload(t, fmt.Sprintf("http://127.0.0.1:%d {\n\tno_such_directive\n}\n", port)); err == nil {
		t.Fatal("reload with an unknown directive succeeded")
	}
	code, body := get(t, &http.Client{Timeout: 5 * time.Second}, fmt.Sprintf("http://127.0.0.1:%d/", port))
	if code != 200 || body != "old" {
		t.Fatalf("after failed reload: %d %q, want 200 \"old\"", code, body)
	}
}

func TestRunReturnsOutput(t *testing.T) {
	stdout, _, err := Run(t, "version")
	if err != nil || !strings.Contains(stdout, "v2.") {
		t.Fatalf("legacygate version: %q, %v", stdout, err)
	}
}

func TestWithGlobalsFindsTheGlobalBlock(t *testing.T) {
	g := &Gateway{AdminAddr: "127.0.0.1:1", Dir: "/d", HTTPPort: 2, HTTPSPort: 3}
	globals := "\tadmin 127.0.0.1:1\n\tstorage file_system /d/storage\n\thttp_port 2\n\thttps_port 3\n\tpersist_config off\n\tskip_install_trust\n"
	tests := []struct {
		name, in, want string
	}{
		{"no block", "localhost {\n}\n", "{\n" + globals + "}\n\nlocalhost {\n}\n"},
		{"block first", "{\n\tdebug\n}\n", "{\n" + globals + "\tdebug\n}\n"},
		{"block after comments", "# a\n\n  # b\n{\n\tdebug\n}\n", "# a\n\n  # b\n{\n" + globals + "\tdebug\n}\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := g.withGlobals(tc.in); got != tc.want {
				t.Fatalf("withGlobals:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestSitePortsAreTheTLSSitesOfTheName(t *testing.T) {
	t.Setenv("HARNESS_TEST_SITE", "")
	tests := []struct {
		name      string
		caddyfile string
		want      []int
	}{
		{"explicit sites", "localhost:3 {\n}\nhttps://localhost:2 {\n}\n", []int{3, 2}},
		{"plain HTTP site has no certificate", "http://localhost:1 {\n}\nlocalhost:5 {\n}\n", []int{5}},
		{"environment default", "{$HARNESS_TEST_SITE:localhost:4} {\n}\n", []int{4}},
		{"other names only", "example.com:7 {\n}\n", []int{9}},
		{"no port: the https_port", "localhost {\n}\n", []int{9}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &Gateway{Dir: t.TempDir(), HTTPSPort: 9}
			if err := os.WriteFile(filepath.Join(g.Dir, "Caddyfile"), []byte(tc.caddyfile), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := g.sitePorts("localhost"); !slices.Equal(got, tc.want) {
				t.Errorf("sitePorts = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestWaitCertificateWaitsUntilTheCertificateIsServed stands in for
// certmagic's gap between logging "certificate obtained successfully" and
// caching the certificate: the line is already logged, but the server's
// GetCertificate fails (as certmagic's does, giving the client "tls:
// internal error") for 300 ms. WaitCertificate must not return before a
// handshake finds the certificate.
func TestWaitCertificateWaitsUntilTheCertificateIsServed(t *testing.T) {
	pair, err := certs.New(certs.Modern, "localhost", 2048)
	if err != nil {
		t.Fatal(err)
	}
	cert := pair.TLS()
	cachedAt := time.Now().Add(300 * time.Millisecond)
	addr := HandshakeServer(t, cert, &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if time.Now().Before(cachedAt) {
				return nil, errors.New("no certificate available for 'localhost'")
			}
			return &cert, nil
		},
	})
	_, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	g := &Gateway{Dir: t.TempDir(), logs: &lockedBuffer{}}
	if err := os.WriteFile(filepath.Join(g.Dir, "Caddyfile"), fmt.Appendf(nil, "localhost:%d {\n\ttls internal\n}\n", port), 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(g.logs, `{"level":"info","logger":"tls.obtain","msg":"certificate obtained successfully","identifier":"localhost","issuer":"local"}`)

	g.WaitCertificate(t, "localhost")
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("WaitCertificate returned while the certificate was not served yet: %v", err)
	}
	conn.Close()
}

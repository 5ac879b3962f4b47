package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
)

// frontGateway is a gateway serving https://localhost:PORT with a
// certificate from Caddy's internal CA and no TLS options of its own: what
// it accepts is Caddy's default, which is what these tests pin down.
// globals are extra global options (e.g. "key_type rsa2048").
func frontGateway(t *testing.T, globals string) (addr string, roots *x509.CertPool) {
	t.Helper()
	port := harness.FreePort(t)
	g := harness.StartGateway(t, fmt.Sprintf("{\n\t%s\n}\n\nlocalhost:%d {\n\ttls internal\n\trespond \"front\"\n}\n", globals, port))
	g.WaitCertificate(t, "localhost")
	return fmt.Sprintf("127.0.0.1:%d", port), g.RootCAs(t)
}

// frontHandshake tries a handshake as a client limited to cfg's versions
// and suites, verifying the gateway's certificate for "localhost".
func frontHandshake(addr string, roots *x509.CertPool, cfg *tls.Config) (tls.ConnectionState, error) {
	cfg.RootCAs = roots
	cfg.ServerName = "localhost"
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	conn, err := dialer.Dial("tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState(), nil
}

func TestFrontAcceptsOnlyTLS12And13(t *testing.T) {
	addr, roots := frontGateway(t, "")
	tests := []struct {
		version uint16
		accept  bool
	}{
		{tls.VersionTLS10, false},
		{tls.VersionTLS11, false},
		{tls.VersionTLS12, true},
		{tls.VersionTLS13, true},
	}
	for _, tc := range tests {
		t.Run(tls.VersionName(tc.version), func(t *testing.T) {
			state, err := frontHandshake(addr, roots, &tls.Config{
				MinVersion:   tc.version,
				MaxVersion:   tc.version,
				CipherSuites: tls12Suites(), // every suite, so only the version can be refused
			})
			switch {
			case tc.accept && err != nil:
				t.Fatalf("%s handshake refused: %v", tls.VersionName(tc.version), err)
			case tc.accept && state.Version != tc.version:
				t.Fatalf("negotiated %s, want %s", tls.VersionName(state.Version), tls.VersionName(tc.version))
			case !tc.accept && err == nil:
				t.Fatalf("%s handshake accepted (negotiated %s, %s)", tls.VersionName(tc.version),
					tls.VersionName(state.Version), tls.CipherSuiteName(state.CipherSuite))
			case !tc.accept && !strings.Contains(err.Error(), "protocol version"):
				t.Fatalf("%s refused for another reason than the version: %v", tls.VersionName(tc.version), err)
			}
		})
	}
}

func TestFrontOffersOnlyECDHEAEADSuitesOnTLS12(t *testing.T) {
	// Which suites can be negotiated at all depends on the certificate's key
	// type, so both kinds of key are tried.
	for _, keyType := range []string{"p256", "rsa2048"} {
		t.Run(keyType, func(t *testing.T) {
			t.Parallel()
			addr, roots := frontGateway(t, "key_type "+keyType)
			probe, err := frontHandshake(addr, roots, &tls.Config{MaxVersion: tls.VersionTLS12})
			if err != nil {
				t.Fatalf("default TLS 1.2 handshake: %v", err)
			}
			checkTLS12Suites(t, addr, roots, probe.PeerCertificates[0].PublicKeyAlgorithm)
		})
	}
}

// checkTLS12Suites offers each TLS 1.2 suite alone and expects exactly the
// ECDHE AEAD suites matching the key to be accepted.
func checkTLS12Suites(t *testing.T, addr string, roots *x509.CertPool, keyAlg x509.PublicKeyAlgorithm) {
	t.Helper()
	accepted := 0
	for _, s := range slices.Concat(tls.CipherSuites(), tls.InsecureCipherSuites()) {
		if !slices.Contains(s.SupportedVersions, tls.VersionTLS12) {
			continue
		}
		want := ecdheAEAD(s.Name) && suiteMatchesKey(s.Name, keyAlg)
		state, err := frontHandshake(addr, roots, &tls.Config{
			MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{s.ID},
		})
		switch {
		case want && err != nil:
			t.Errorf("%s (ECDHE AEAD) refused with a %v key: %v", s.Name, keyAlg, err)
		case !want && err == nil:
			t.Errorf("%s accepted with a %v key (negotiated %s)", s.Name, keyAlg, tls.CipherSuiteName(state.CipherSuite))
		case want:
			accepted++
		}
	}
	if accepted == 0 {
		t.Fatalf("no ECDHE AEAD suite matches the front's %v key; the test proves nothing", keyAlg)
	}
}

// ecdheAEAD reports whether a TLS 1.2 suite has forward secrecy (ECDHE) and
// an AEAD cipher (GCM or ChaCha20-Poly1305).
func ecdheAEAD(name string) bool {
	return strings.HasPrefix(name, "TLS_ECDHE_") &&
		(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20_POLY1305"))
}

func suiteMatchesKey(name string, alg x509.PublicKeyAlgorithm) bool {
	switch alg {
	case x509.ECDSA:
		return strings.HasPrefix(name, "TLS_ECDHE_ECDSA_")
	case x509.RSA:
		return strings.HasPrefix(name, "TLS_ECDHE_RSA_")
	}
	return false
}

// tls12Suites is every TLS 1.0-1.2 suite Go implements.
func tls12Suites() []uint16 {
	var ids []uint16
	for _, s := range slices.Concat(tls.CipherSuites(), tls.InsecureCipherSuites()) {
		if !slices.Equal(s.SupportedVersions, []uint16{tls.VersionTLS13}) {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

// setExampleKeyFiles writes the manager's certificate and a gateway signing
// key where Caddyfile.example's environment variables point.
func setExampleKeyFiles(t *testing.T, mgr *certs.Pair) {
	t.Helper()
	dir := t.TempDir()
	mgrCert, _, err := mgr.WriteFiles(dir, "manager")
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
	t.Setenv("SEPM_CERT", mgrCert)
	t.Setenv("LEGACYGATE_SIGNING_KEY", gwKey)
	t.Setenv("LEGACYGATE_SIGNING_CERT", gwCert)
}

// exampleCaddyfile is the repository's Caddyfile.example.
func exampleCaddyfile(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	file := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "Caddyfile.example")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCaddyfileExampleAdaptsOnACleanMachine(t *testing.T) {
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(exampleCaddyfile(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"LEGACYGATE_SITE", "SEPM_MANAGER", "SEPM_PIN", "SEPM_SERVER_NAME"} {
		t.Setenv(name, "") // restores the variable after the test
		os.Unsetenv(name)
	}
	stdout, stderr, err := harness.Run(t, "adapt", "--config", file)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if strings.Contains(stderr, "WARN") {
		t.Errorf("adapt warned:\n%s", stderr)
	}
	for _, want := range []string{
		`"not":[{"header":{"Content-Length":["*"]}}]`,
		`"protocol":"legacy_tls"`, `"min_version":"tls1.0"`, `"pins":["sha256/`,
		`"protocol_min":"tls1.2"`,
		`"allow":[{"methods":["GET","POST"],"path":"/secars/secars.dll"},{"methods":["POST"],"path":"/secreg/secreg.dll"},{"methods":["GET"],"path":"/content/*"}]`,
		`"decision_keys":["action","hostid","h"]`,
		`"delete":["Server","X-Powered-By"]`, `"max_header_bytes":16000`, `"max_size":1000000`,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, stdout)
		}
	}
}

// TestCaddyfileExampleFrontsAManager runs Caddyfile.example as shipped, with
// its environment variables pointing at an in-test TLS 1.0 manager.
func TestCaddyfileExampleFrontsAManager(t *testing.T) {
	m := startLegacyManager(t, managerTLS{kind: certs.SHA1, minVersion: tls.VersionTLS10, maxVersion: tls.VersionTLS10})
	port := harness.FreePort(t)
	t.Setenv("LEGACYGATE_SITE", fmt.Sprintf("localhost:%d", port))
	t.Setenv("SEPM_MANAGER", m.addr)
	t.Setenv("SEPM_PIN", m.pair.Pin())
	t.Setenv("SEPM_SERVER_NAME", "manager.test")
	setExampleKeyFiles(t, m.pair)
	g := harness.StartGateway(t, exampleCaddyfile(t))
	g.WaitCertificate(t, "localhost")
	client := g.Client(t)
	base := fmt.Sprintf("https://localhost:%d", port)

	big := strings.Repeat("x", 2<<20)
	tests := []struct {
		name        string
		method      string
		path        string
		header      http.Header
		body        io.Reader
		length      int64 // -1: chunked
		wantCode    int
		wantManager bool
	}{
		{"agent path proxied", http.MethodGet, "/secars/secars.dll?hello,secars", nil, nil, 0, 200, true},
		{"registration path proxied", http.MethodPost, "/secreg/secreg.dll?action=register", nil, strings.NewReader("hostname=a&group=b"), 18, 200, true},
		{"log upload of 300 KB proxied", http.MethodPost, "/secars/secars.dll?action=log&hostid=H", nil, strings.NewReader(big[:300<<10]), 300 << 10, 200, true},
		{"console path refused", http.MethodGet, "/console/apps/sepm", nil, nil, 0, 404, false},
		{"root refused", http.MethodGet, "/", nil, nil, 0, 404, false},
		{"oversized URI refused", http.MethodGet, "/secars/secars.dll?h=" + strings.Repeat("A", 3000), nil, nil, 0, 414, false},
		{"oversized headers refused", http.MethodGet, "/secars/secars.dll?hello,secars", http.Header{"X-Fill": {strings.Repeat("B", 20000)}}, nil, 0, 431, false},
		// With Expect: 100-continue (as .NET and WinHTTP clients send it) the
		// client learns of the 413 or 411 before it writes the body; without it, the
		// gateway closes the connection while the client is still writing,
		// and whether the client reads the 413 first is a race in its stack.
		{"oversized body refused", http.MethodPost, "/secars/secars.dll?action=log&hostid=H", http.Header{"Expect": {"100-continue"}}, strings.NewReader(big), int64(len(big)), 413, false},
		{"chunked upload refused", http.MethodPost, "/secars/secars.dll?action=log&hostid=H", http.Header{"Expect": {"100-continue"}}, strings.NewReader(big), -1, 411, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := m.requests.Load()
			req, err := http.NewRequest(tc.method, base+tc.path, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			req.ContentLength = tc.length
			for k, v := range tc.header {
				req.Header[k] = v
			}
			req.Header.Set("User-Agent", "Smc")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, tc.wantCode)
			}
			if reached := m.requests.Load() > before; reached != tc.wantManager {
				t.Fatalf("manager reached = %v, want %v", reached, tc.wantManager)
			}
			for _, h := range []string{"Server", "X-Powered-By"} {
				if v := resp.Header.Get(h); v != "" {
					t.Errorf("banner header %s: %q reached the client", h, v)
				}
			}
			if tc.wantManager && !strings.HasPrefix(string(body), "manager: TLS 1.0") {
				t.Errorf("body %q, want the manager's answer over TLS 1.0", body)
			}
		})
	}

	// The example runs no legacygate app: rotation status still answers.
	out, errOut, err := harness.Run(t, "rotation", "status", "--address", g.AdminAddr)
	if err != nil {
		t.Fatalf("rotation status without the legacygate app: %v\n%s", err, errOut)
	}
	for _, want := range []string{"no rotation configured", "Plaintext clients  not tracked", "policy_guard key id ", "pin sha256/"} {
		if !strings.Contains(out, want) {
			t.Errorf("rotation status output lacks %q:\n%s", want, out)
		}
	}
}

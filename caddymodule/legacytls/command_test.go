package legacytls

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
)

func pinTestPair(t *testing.T, kind certs.Kind) *certs.Pair {
	t.Helper()
	pair, err := certs.New(kind, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func TestPrintPinDescribesLegacyCertificates(t *testing.T) {
	tests := []struct {
		name   string
		kind   certs.Kind
		server *tls.Config
		want   []string
	}{
		{
			name:   "TLS 1.0 only, SHA-1 signed",
			kind:   certs.SHA1,
			server: &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10},
			want:   []string{"signature:  SHA1-RSA", "SANs:       localhost, manager.test, 127.0.0.1", "negotiated: TLS 1.0", "CN=manager.test"},
		},
		{
			name:   "RSA key exchange only",
			kind:   certs.CNOnly,
			server: &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}},
			want:   []string{"SANs:       (none: the name is only in the subject CN)", "negotiated: TLS 1.2, TLS_RSA_WITH_AES_128_CBC_SHA"},
		},
		{
			name:   "expired",
			kind:   certs.Expired,
			server: &tls.Config{},
			want:   []string{"(expired)", "negotiated: TLS 1.3"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pair := pinTestPair(t, tc.kind)
			addr := harness.HandshakeServer(t, pair.TLS(), tc.server)
			var out bytes.Buffer
			if err := printPin(context.Background(), &out, addr, "", 5*time.Second); err != nil {
				t.Fatalf("printPin: %v", err)
			}
			if first, _, _ := strings.Cut(out.String(), "\n"); first != "pin "+pair.Pin() {
				t.Errorf("first line %q, want %q", first, "pin "+pair.Pin())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestPrintPinSendsServerName(t *testing.T) {
	pair := pinTestPair(t, certs.Modern)
	seen := make(chan string, 1)
	addr := harness.HandshakeServer(t, pair.TLS(), &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		seen <- h.ServerName
		return nil, nil
	}})
	if err := printPin(context.Background(), &bytes.Buffer{}, addr, "sepm.example", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; got != "sepm.example" {
		t.Fatalf("server saw SNI %q, want sepm.example", got)
	}
}

func TestPrintPinFailures(t *testing.T) {
	// A listener that accepts and never answers: the handshake must time out.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() })
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name, addr, want string
	}{
		{"nothing listening", closedAddr, closedAddr},
		{"no TLS answer", silent.Addr().String(), "deadline exceeded"},
		{"bad address", "127.0.0.1:notaport", "127.0.0.1:notaport"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := printPin(context.Background(), &bytes.Buffer{}, tc.addr, "", time.Second)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
			if time.Since(start) > 3*time.Second {
				t.Fatalf("took %v with a 1s timeout", time.Since(start))
			}
		})
	}
}

func TestWithDefaultPort(t *testing.T) {
	tests := map[string]string{
		"10.0.0.5":       "10.0.0.5:443",
		"10.0.0.5:8443":  "10.0.0.5:8443",
		"sepm.example":   "sepm.example:443",
		"[::1]":          "[::1]:443",
		"[::1]:4443":     "[::1]:4443",
		"sepm.example:1": "sepm.example:1",
	}
	for in, want := range tests {
		if got := withDefaultPort(in); got != want {
			t.Errorf("withDefaultPort(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPinCommandExitStatus(t *testing.T) {
	pair := pinTestPair(t, certs.SHA1)
	addr := harness.HandshakeServer(t, pair.TLS(), &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10})

	stdout, _, err := harness.Run(t, "pin", addr)
	if err != nil || !strings.HasPrefix(stdout, "pin "+pair.Pin()+"\n") {
		t.Fatalf("legacygate pin %s: err %v, stdout:\n%s", addr, err, stdout)
	}
	_, stderr, err := harness.Run(t, "pin", "--timeout", "1s", "127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Fatalf("legacygate pin on a closed port: err %v, stderr %q; want exit 1 naming the address", err, stderr)
	}
}

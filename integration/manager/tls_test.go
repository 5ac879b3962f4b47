package manager

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
)

func handshake(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.ConnectionState(), nil
}

func TestTLSVersionBounds(t *testing.T) {
	tests := []struct {
		name                 string
		serverMin, serverMax uint16
		cert                 certs.Kind
		clientMin, clientMax uint16
		ciphers              []uint16
		wantVersion          uint16 // 0: the handshake must fail
	}{
		{"1.0-only SHA-1 manager, 1.0 client", tls.VersionTLS10, tls.VersionTLS10, certs.SHA1, tls.VersionTLS10, tls.VersionTLS10, nil, tls.VersionTLS10},
		{"1.0-only manager refuses a 1.2 client", tls.VersionTLS10, tls.VersionTLS10, certs.SHA1, tls.VersionTLS12, tls.VersionTLS13, nil, 0},
		{"1.0-only manager, client up to 1.3 gets 1.0", tls.VersionTLS10, tls.VersionTLS10, certs.Modern, tls.VersionTLS10, tls.VersionTLS13, nil, tls.VersionTLS10},
		{"1.1 client on a 1.0-1.2 manager", tls.VersionTLS10, tls.VersionTLS12, certs.CNOnly, tls.VersionTLS11, tls.VersionTLS11, nil, tls.VersionTLS11},
		{"1.2-only manager refuses a 1.0 client", tls.VersionTLS12, tls.VersionTLS12, certs.Modern, tls.VersionTLS10, tls.VersionTLS10, nil, 0},
		{"1.2-only manager refuses a 1.1 client", tls.VersionTLS12, tls.VersionTLS12, certs.Modern, tls.VersionTLS10, tls.VersionTLS11, nil, 0},
		{"1.2-only manager, 1.2 client", tls.VersionTLS12, tls.VersionTLS12, certs.Expired, tls.VersionTLS12, tls.VersionTLS13, nil, tls.VersionTLS12},
		{"1.3 manager, 1.3 client", tls.VersionTLS12, tls.VersionTLS13, certs.Modern, tls.VersionTLS13, tls.VersionTLS13, nil, tls.VersionTLS13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startManager(t, Config{TLSMin: tt.serverMin, TLSMax: tt.serverMax, Cert: tt.cert})
			st, err := handshake(m.Addrs().HTTPS, &tls.Config{InsecureSkipVerify: true, MinVersion: tt.clientMin, MaxVersion: tt.clientMax})
			if tt.wantVersion == 0 {
				if err == nil {
					t.Fatalf("handshake succeeded with TLS %s, want refusal", versionName(st.Version))
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if st.Version != tt.wantVersion {
				t.Errorf("negotiated TLS %s, want %s", versionName(st.Version), versionName(tt.wantVersion))
			}
			if !st.PeerCertificates[0].Equal(m.SigningCert()) {
				t.Error("the TLS certificate is not the signing certificate")
			}
		})
	}
}

func TestTLSCipherSuites(t *testing.T) {
	tests := []struct {
		name      string
		server    []uint16
		client    []uint16
		wantSuite uint16 // 0: the handshake must fail
	}{
		{"RSA key exchange when the client lists it", RSAKexCipherSuites, []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}, tls.TLS_RSA_WITH_AES_128_CBC_SHA},
		{"RSA-kex-only manager refuses Go's default client suites", RSAKexCipherSuites, nil, 0},
		{"legacy manager, default client: ECDHE", LegacyCipherSuites, nil, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA},
		{"legacy manager offers 3DES", LegacyCipherSuites, []uint16{tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA}, tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startManager(t, Config{TLSMin: tls.VersionTLS10, TLSMax: tls.VersionTLS10, Cert: certs.SHA1, CipherSuites: tt.server})
			st, err := handshake(m.Addrs().HTTPS, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10, CipherSuites: tt.client})
			if tt.wantSuite == 0 {
				if err == nil {
					t.Fatalf("handshake succeeded with %s, want refusal", tls.CipherSuiteName(st.CipherSuite))
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if st.CipherSuite != tt.wantSuite {
				t.Errorf("negotiated %s, want %s", tls.CipherSuiteName(st.CipherSuite), tls.CipherSuiteName(tt.wantSuite))
			}
		})
	}
}

func TestParseCipherSuites(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"legacy", len(LegacyCipherSuites), false},
		{"modern", len(ModernCipherSuites), false},
		{"rsa-kex", len(RSAKexCipherSuites), false},
		{"TLS_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 2, false},
		{"TLS_RSA_WITH_RC4_128_SHA", 1, false},
		{"TLS_NO_SUCH_SUITE", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseCipherSuites(tt.in)
		if (err != nil) != tt.wantErr || len(got) != tt.want {
			t.Errorf("ParseCipherSuites(%q) = %d suites, %v; want %d, error %v", tt.in, len(got), err, tt.want, tt.wantErr)
		}
	}
}

func TestTLS10SHA1ManagerServesClientsOverTLS10(t *testing.T) {
	m := startManager(t, Config{TLSMin: tls.VersionTLS10, TLSMax: tls.VersionTLS10, Cert: certs.SHA1, Sign: SignRSASHA1})
	c := testClient(tls.VersionTLS10, tls.VersionTLS10)
	base := "https://" + m.Addrs().HTTPS
	host := register(t, c, base)
	r := do(t, c, "GET", base+SecarsPath+"?action=index&hostid="+host, nil, "")
	if r.status != 200 {
		t.Fatalf("index over TLS 1.0: status %d", r.status)
	}
	checkIndex(t, r.body)
}

package manager

import (
	"crypto/tls"
	"fmt"
	"strings"
)

// TLS versions by the names the mgrsim flags use.
var tlsVersions = map[string]uint16{
	"1.0": tls.VersionTLS10,
	"1.1": tls.VersionTLS11,
	"1.2": tls.VersionTLS12,
	"1.3": tls.VersionTLS13,
}

// ParseTLSVersion turns "1.0", "1.1", "1.2" or "1.3" into a crypto/tls version.
func ParseTLSVersion(s string) (uint16, error) {
	v, ok := tlsVersions[s]
	if !ok {
		return 0, fmt.Errorf("unknown TLS version %q: want 1.0, 1.1, 1.2 or 1.3", s)
	}
	return v, nil
}

// versionName is the inverse of ParseTLSVersion, for messages.
func versionName(v uint16) string {
	for name, id := range tlsVersions {
		if id == v {
			return name
		}
	}
	return fmt.Sprintf("0x%04x", v)
}

// LegacyCipherSuites is what an old manager's Apache/OpenSSL offers: ECDHE-RSA
// and plain RSA key exchange, AES-CBC and AES-GCM, and 3DES. Listing the RSA
// key-exchange and 3DES suites explicitly is what enables them in Go 1.22+
// servers; no GODEBUG is needed.
var LegacyCipherSuites = []uint16{
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
	tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_RSA_WITH_AES_256_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA,
	tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
}

// ModernCipherSuites offers only ECDHE key exchange (Go's own default list
// for RSA certificates, without the RSA key-exchange suites).
var ModernCipherSuites = []uint16{
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
}

// RSAKexCipherSuites offers only RSA key exchange, so a client that does not
// list such a suite cannot connect (TLS 1.3 clients still can, if allowed).
var RSAKexCipherSuites = []uint16{
	tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_RSA_WITH_AES_256_CBC_SHA,
}

// ParseCipherSuites reads a --ciphers value: a preset ("legacy", "modern",
// "rsa-kex") or a comma-separated list of Go cipher suite names.
func ParseCipherSuites(s string) ([]uint16, error) {
	switch s {
	case "", "legacy":
		return LegacyCipherSuites, nil
	case "modern":
		return ModernCipherSuites, nil
	case "rsa-kex":
		return RSAKexCipherSuites, nil
	}
	byName := map[string]uint16{}
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		byName[cs.Name] = cs.ID
	}
	var ids []uint16
	for _, name := range strings.Split(s, ",") {
		id, ok := byName[strings.TrimSpace(name)]
		if !ok {
			return nil, fmt.Errorf("unknown cipher suite %q: want legacy, modern, rsa-kex or Go cipher suite names", name)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// serverTLSConfig is the HTTPS listener's configuration. The certificate is
// looked up per handshake, so a key change takes effect on the next handshake.
func (m *Manager) serverTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   m.cfg.TLSMin,
		MaxVersion:   m.cfg.TLSMax,
		CipherSuites: m.cfg.CipherSuites,
		// An old Apache speaks HTTP/1.1 only.
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return &m.id.Load().tlsCert, nil
		},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m.handshakes.Add(1)
			return nil, nil
		},
	}
}

// Handshakes returns how many TLS handshakes clients began on the HTTPS
// listener, resumed ones included.
func (m *Manager) Handshakes() int64 { return m.handshakes.Load() }

package initcmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/legacygate/legacygate/caddymodule/legacytls"
)

// Probe is what init learned from the manager's TLS listener.
type Probe struct {
	// Addr is the address probed, host:port.
	Addr string
	// ServerName is the SNI sent (empty for an IP address).
	ServerName string
	// Versions are the TLS versions the manager completed a handshake
	// with, lowest first.
	Versions []uint16
	// DefaultSuitesVersion is the highest version below TLS 1.3 at which a
	// handshake offering only Go's default cipher suites succeeded; 0 when
	// none did (the manager needs RSA key exchange or 3DES).
	DefaultSuitesVersion uint16
	// Suites are the TLS 1.0-1.2 cipher suites the manager accepted, in
	// the order of crypto/tls's lists (secure ones first).
	Suites []uint16
	// SHA1HandshakeSignatures: the manager's TLS 1.2 handshake failed on
	// its signature algorithm (it signs with SHA-1, which Go refuses since
	// RFC 9155), or the manager speaks only TLS 1.0/1.1, whose forward-
	// secret handshakes are signed with MD5+SHA-1.
	SHA1HandshakeSignatures bool
	// TLS12SignatureRefused: the TLS 1.2 handshake failed on the manager's
	// signature algorithm, so the gateway must stay below TLS 1.2.
	TLS12SignatureRefused bool
	// Leaf is the certificate the manager presented.
	Leaf *x509.Certificate
	// Pin is the leaf's legacy_tls pin.
	Pin string
}

// Best is the highest TLS version the manager accepted.
func (p *Probe) Best() uint16 { return p.Versions[len(p.Versions)-1] }

// CNOnly says the certificate names its host only in the subject CN.
func (p *Probe) CNOnly() bool {
	l := p.Leaf
	return len(l.DNSNames) == 0 && len(l.IPAddresses) == 0 && len(l.URIs) == 0
}

// SelfSigned says the certificate is its own issuer (and its signature
// checks out with its own key).
func (p *Probe) SelfSigned() bool {
	l := p.Leaf
	if !bytes.Equal(l.RawIssuer, l.RawSubject) {
		return false
	}
	// SHA-1 signatures do not verify in Go: a matching issuer suffices then.
	// CheckSignatureFrom would also want the certificate to be a CA.
	return isSHA1(l.SignatureAlgorithm) || l.CheckSignature(l.SignatureAlgorithm, l.RawTBSCertificate, l.Signature) == nil
}

// SHA1Certificate says the certificate's own signature uses SHA-1 (or MD5).
func (p *Probe) SHA1Certificate() bool { return isSHA1(p.Leaf.SignatureAlgorithm) }

func isSHA1(a x509.SignatureAlgorithm) bool {
	switch a {
	case x509.SHA1WithRSA, x509.DSAWithSHA1, x509.ECDSAWithSHA1, x509.MD5WithRSA, x509.MD2WithRSA:
		return true
	}
	return false
}

// probeVersions are the versions init tries, lowest first.
var probeVersions = []uint16{tls.VersionTLS10, tls.VersionTLS11, tls.VersionTLS12, tls.VersionTLS13}

// ProbeManager handshakes with addr once per TLS version and once per
// cipher suite, verifying nothing (the point is to learn the key to pin),
// and reports what the manager accepts. It fails when no handshake
// succeeds, saying why the last one failed.
func ProbeManager(ctx context.Context, addr, serverName string, timeout time.Duration) (*Probe, error) {
	if serverName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil && net.ParseIP(host) == nil {
			serverName = host
		}
	}
	p := &Probe{Addr: addr, ServerName: serverName}
	hs := func(minV, maxV uint16, suites []uint16) (tls.ConnectionState, error) {
		return handshake(ctx, addr, &tls.Config{
			ServerName:         serverName,
			InsecureSkipVerify: true, // only reading the certificate, to pin it
			MinVersion:         minV,
			MaxVersion:         maxV,
			CipherSuites:       suites,
		}, timeout)
	}

	// A dead address fails fast here, before a dozen more handshakes.
	if _, err := hs(tls.VersionTLS10, tls.VersionTLS13, legacytls.AllCipherSuites()); err != nil {
		var netErr net.Error
		var opErr *net.OpError
		if errors.As(err, &opErr) || errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("--manager %s: the manager is unreachable: %w", addr, err)
		}
		return nil, fmt.Errorf("--manager %s: no TLS handshake succeeded with any version from TLS 1.0 and any cipher suite Go has: %w", addr, err)
	}
	for _, v := range probeVersions {
		state, err := hs(v, v, legacytls.AllCipherSuites())
		if err != nil {
			if v == tls.VersionTLS12 && signatureRefused(err) {
				p.SHA1HandshakeSignatures, p.TLS12SignatureRefused = true, true
			}
			continue
		}
		p.Versions = append(p.Versions, v)
		if p.Leaf == nil {
			p.Leaf = state.PeerCertificates[0]
		}
	}
	if len(p.Versions) == 0 {
		return nil, fmt.Errorf("--manager %s: the manager answered, but no handshake at a single TLS version succeeded", addr)
	}
	p.Pin = legacytls.PinOf(p.Leaf)
	if p.Best() < tls.VersionTLS12 {
		p.SHA1HandshakeSignatures = true
	}
	for _, v := range slices.Backward(p.Versions) {
		if v == tls.VersionTLS13 {
			continue
		}
		if _, err := hs(v, v, nil); err == nil {
			p.DefaultSuitesVersion = v
			break
		}
	}
	for _, s := range legacytls.AllCipherSuites() {
		if _, err := hs(tls.VersionTLS10, tls.VersionTLS12, []uint16{s}); err == nil {
			p.Suites = append(p.Suites, s)
		}
	}
	return p, nil
}

// signatureRefused says a handshake failed because Go refused the
// manager's handshake signature algorithm (SHA-1 in TLS 1.2).
func signatureRefused(err error) bool {
	s := err.Error()
	return strings.Contains(s, "signature algorithm") || strings.Contains(s, "SHA-1") || strings.Contains(s, "sha1")
}

// handshake dials addr and completes one TLS handshake.
func handshake(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	state := conn.(*tls.Conn).ConnectionState()
	if len(state.PeerCertificates) == 0 {
		return state, errors.New("no certificate presented")
	}
	return state, nil
}

// versionName is the name legacy_tls's min_version takes.
func versionName(v uint16) string {
	return strings.ToLower(strings.ReplaceAll(tls.VersionName(v), "TLS ", "tls"))
}

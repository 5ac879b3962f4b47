// Package certs makes the self-signed certificates that legacy managers present,
// for emulators, demos and tests: modern, SHA-1-signed, CN-only and expired.
package certs

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Kind names the certificate shapes docs/protocol.md lists.
type Kind string

// The certificate kinds a manager can present.
const (
	Modern  Kind = "modern"  // RSA-2048, SHA-256, SAN
	SHA1    Kind = "sha1"    // SHA-1-signed, SAN
	CNOnly  Kind = "cn-only" // SHA-256, no SAN
	Expired Kind = "expired" // SHA-256, SAN, validity ended a year ago
)

// ParseKind checks a --cert flag value.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case Modern, SHA1, CNOnly, Expired:
		return k, nil
	}
	return "", fmt.Errorf("unknown certificate kind %q: want modern, sha1, cn-only or expired", s)
}

// Pair is a self-signed certificate with its key.
type Pair struct {
	Cert *x509.Certificate
	Key  *rsa.PrivateKey
}

// New makes a self-signed RSA certificate of the given kind for commonName,
// with 127.0.0.1 and localhost as SANs unless the kind is CN-only.
func New(kind Kind, commonName string, bits int) (*Pair, error) {
	if bits == 0 {
		bits = 2048
	}
	key, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, fmt.Errorf("generating RSA-%d key: %w", bits, err)
	}
	return NewWithKey(kind, commonName, key)
}

// NewWithKey is New with a key the caller already has.
func NewWithKey(kind Kind, commonName string, key *rsa.PrivateKey) (*Pair, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("generating serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"legacygate emulated manager"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		SignatureAlgorithm:    x509.SHA256WithRSA,
	}
	switch kind {
	case Modern:
	case SHA1:
		tmpl.SignatureAlgorithm = x509.SHA1WithRSA
	case CNOnly:
	case Expired:
		tmpl.NotBefore = now.AddDate(-3, 0, 0)
		tmpl.NotAfter = now.AddDate(-1, 0, 0)
	default:
		return nil, fmt.Errorf("unknown certificate kind %q", kind)
	}
	if kind != CNOnly {
		tmpl.DNSNames = []string{"localhost", commonName}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating %s certificate: %w", kind, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate just made: %w", err)
	}
	return &Pair{Cert: cert, Key: key}, nil
}

// TLS returns the pair as a tls.Certificate for a server.
func (p *Pair) TLS() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{p.Cert.Raw}, PrivateKey: p.Key, Leaf: p.Cert}
}

// CertPEM is the certificate in PEM.
func (p *Pair) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Cert.Raw})
}

// KeyPEM is the private key in PKCS#8 PEM.
func (p *Pair) KeyPEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(p.Key)
	if err != nil {
		// An RSA key always marshals; anything else is a bug in this package.
		panic(fmt.Sprintf("marshalling RSA key: %v", err))
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// Pin is the legacy_tls pin of the certificate: "sha256/" and the base64
// SHA-256 of its SubjectPublicKeyInfo.
func (p *Pair) Pin() string { return Pin(p.Cert) }

// Pin computes "sha256/<base64 of SHA-256(SPKI)>" for any certificate.
func Pin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256/" + base64.StdEncoding.EncodeToString(sum[:])
}

// WriteFiles writes name.crt and name.key under dir and returns their paths.
func (p *Pair) WriteFiles(dir, name string) (certFile, keyFile string, err error) {
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, p.CertPEM(), 0o644); err != nil {
		return "", "", fmt.Errorf("writing %s: %w", certFile, err)
	}
	if err := os.WriteFile(keyFile, p.KeyPEM(), 0o600); err != nil {
		return "", "", fmt.Errorf("writing %s: %w", keyFile, err)
	}
	return certFile, keyFile, nil
}

package policyguard

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"
)

// LoadCertificates reads PEM (one or more CERTIFICATE blocks) or DER
// certificates from each file.
func LoadCertificates(paths ...string) ([]*x509.Certificate, error) {
	if len(paths) == 0 {
		return nil, errors.New("no certificate file given")
	}
	var certs []*x509.Certificate
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("certificate file: %w", err)
		}
		found, err := ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("certificate file %s: %w", path, err)
		}
		certs = append(certs, found...)
	}
	return certs, nil
}

// ParseCertificates parses PEM CERTIFICATE blocks, or one DER certificate.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 {
		return certs, nil
	}
	c, err := x509.ParseCertificate(data)
	if err != nil {
		return nil, fmt.Errorf("no PEM CERTIFICATE block, and not DER: %w", err)
	}
	return []*x509.Certificate{c}, nil
}

// LoadSigner reads a PEM private key (PKCS#1 or PKCS#8) and its PEM
// certificate and returns a Signer.
func LoadSigner(keyFile, certFile string) (*Signer, error) {
	certs, err := LoadCertificates(certFile)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	key, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", keyFile, err)
	}
	s, err := NewSigner(key, certs[0])
	if err != nil {
		return nil, fmt.Errorf("key file %s with certificate %s: %w", keyFile, certFile, err)
	}
	return s, nil
}

// ParsePrivateKey parses the first PEM private key block.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("PKCS#8 key %T cannot sign", k)
		}
		return signer, nil
	}
	return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
}

// GenerateSigningKey makes an RSA key of 2048, 3072 or 4096 bits and a
// self-signed certificate for it, valid for ten years, for the gateway's
// policy signatures.
func GenerateSigningKey(bits int, cn string) (crypto.Signer, *x509.Certificate, error) {
	if bits != 2048 && bits != 3072 && bits != 4096 {
		return nil, nil, fmt.Errorf("key size %d: want 2048, 3072 or 4096", bits)
	}
	if cn == "" {
		return nil, nil, errors.New("empty common name")
	}
	key, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return key, cert, nil
}

// EncodeKeyPair returns the PEM (PKCS#8) key and PEM certificate.
func EncodeKeyPair(key crypto.Signer, cert *x509.Certificate) (keyPEM, certPEM []byte, err error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return keyPEM, certPEM, nil
}

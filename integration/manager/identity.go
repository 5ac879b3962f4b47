package manager

import (
	"bytes"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/legacygate/legacygate/integration/certs"
)

// Files the manager writes to Config.Dir, and reads from Config.NextDir.
const (
	TLSCertFile     = "tls.crt"     // the certificate the HTTPS listener presents
	TLSKeyFile      = "tls.key"     // its private key, PKCS#8 PEM
	SigningCertFile = "signing.crt" // the certificate that signs profiles and SyLink (the same one, as in SEPM)
	PinFile         = "pin"         // "sha256/<base64>" of the certificate, and a newline
	SyLinkFile      = "sylink.xml"  // the signed communication settings clients download (sepm flavor)
	NextCertFile    = "next.crt"    // in NextDir: the certificate Import switches to
	NextKeyFile     = "next.key"    // in NextDir: its private key, PKCS#8 or PKCS#1 PEM
)

// identity is one key pair as the manager uses it: for TLS and for signing.
type identity struct {
	pair    *certs.Pair
	tlsCert tls.Certificate
	pin     string
	gen     uint64 // 1 for the first key, +1 on each change
}

func newIdentity(p *certs.Pair, gen uint64) *identity {
	return &identity{pair: p, tlsCert: p.TLS(), pin: p.Pin(), gen: gen}
}

// writeIdentity writes the TLS certificate, key, signing certificate and pin
// to dir, each file replaced atomically so a reader never sees half a file.
func writeIdentity(dir string, id *identity) error {
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{TLSCertFile, id.pair.CertPEM(), 0o644},
		{TLSKeyFile, id.pair.KeyPEM(), 0o600},
		{SigningCertFile, id.pair.CertPEM(), 0o644},
		{PinFile, []byte(id.pin + "\n"), 0o644},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// LoadDir reads the key pair a manager left in dir (tls.crt and tls.key),
// so that a restarted manager keeps its key as a real one does. found is
// false, with no error, when neither file is there (a first start). It is
// an error when only one of them is there, when either cannot be read or
// parsed, when the key does not match the certificate, or when signing.crt
// is there and is not the same certificate (the manager signs with its TLS
// key).
func LoadDir(dir string) (pair *certs.Pair, found bool, err error) {
	certFile, keyFile := filepath.Join(dir, TLSCertFile), filepath.Join(dir, TLSKeyFile)
	_, certErr := os.Stat(certFile)
	_, keyErr := os.Stat(keyFile)
	switch {
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
		return nil, false, nil
	case errors.Is(certErr, os.ErrNotExist):
		return nil, false, fmt.Errorf("%s is there but %s is missing: restore it, or regenerate both", keyFile, certFile)
	case errors.Is(keyErr, os.ErrNotExist):
		return nil, false, fmt.Errorf("%s is there but %s is missing: restore it, or regenerate both", certFile, keyFile)
	}
	if pair, err = LoadPair(certFile, keyFile); err != nil {
		return nil, false, err
	}
	signing, err := os.ReadFile(filepath.Join(dir, SigningCertFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, false, fmt.Errorf("reading signing certificate: %w", err)
	case !bytes.Equal(bytes.TrimSpace(signing), bytes.TrimSpace(pair.CertPEM())):
		return nil, false, fmt.Errorf("%s is not the certificate in %s: the manager signs with its TLS key, so they must be the same",
			filepath.Join(dir, SigningCertFile), certFile)
	}
	return pair, true, nil
}

// LoadOrCreateNext reads the next key pair (next.crt, next.key) from dir. If
// neither file exists it makes a pair of the given kind and writes it there
// first, as an administrator would before a planned change.
func LoadOrCreateNext(dir string, kind certs.Kind, commonName string) (*certs.Pair, error) {
	certFile := filepath.Join(dir, NextCertFile)
	keyFile := filepath.Join(dir, NextKeyFile)
	_, certErr := os.Stat(certFile)
	_, keyErr := os.Stat(keyFile)
	if errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating next key directory %s: %w", dir, err)
		}
		p, err := certs.New(kind, commonName, 2048)
		if err != nil {
			return nil, err
		}
		if _, _, err := p.WriteFiles(dir, "next"); err != nil {
			return nil, err
		}
		return p, nil
	}
	return LoadPair(certFile, keyFile)
}

// LoadPair reads a PEM certificate and its RSA private key (PKCS#8 or PKCS#1)
// and checks that they belong together.
func LoadPair(certFile, keyFile string) (*certs.Pair, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading certificate: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block", certFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading key: %w", err)
	}
	key, err := parseRSAKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s does not match the public key of %s", keyFile, certFile)
	}
	return &certs.Pair{Cert: cert, Key: key}, nil
}

func parseRSAKey(data []byte) (*rsa.PrivateKey, error) {
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
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("key is %T, want RSA (managers sign with RSA)", k)
		}
		return rk, nil
	}
	return nil, fmt.Errorf("PEM block %q, want PRIVATE KEY or RSA PRIVATE KEY", block.Type)
}

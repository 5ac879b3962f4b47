package initcmd

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/legacygate/legacygate/caddymodule/legacytls"
	"github.com/legacygate/legacygate/policyguard"
)

// publicKeyEqual is implemented by every crypto/... public key type.
type publicKeyEqual interface {
	Equal(crypto.PublicKey) bool
}

// LoadManagerKey reads the manager's private key (SEPM:
// apache\conf\ssl\server.key, PEM, PKCS#1 or PKCS#8) and checks that it is
// the key of cert, the certificate the manager presents and signs with.
func LoadManagerKey(file string, cert *x509.Certificate) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--manager-key: %w", err)
	}
	if block, _ := pem.Decode(data); block != nil && (block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] != "") {
		return nil, fmt.Errorf("--manager-key %s: the key is encrypted; decrypt it first (openssl pkey -in %s -out server-plain.key) and keep the copy as private as the original", file, filepath.Base(file))
	}
	key, err := policyguard.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("--manager-key %s: not a PEM private key (PKCS#1 or PKCS#8; from keystore.jks: keytool -importkeystore to PKCS#12, then openssl pkcs12 -nocerts -nodes): %w", file, err)
	}
	pub, ok := key.Public().(publicKeyEqual)
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("--manager-key %s: this key does not match the manager's certificate (%s, pin %s): it is not the key the manager signs with; on SEPM take apache\\conf\\ssl\\server.key from the manager that presented this certificate",
			file, cert.Subject, legacytls.PinOf(cert))
	}
	return data, nil
}

// newGatewayKey makes the gateway's signing key and certificate, in the
// form policy_guard's and the legacygate app's signing_key read.
func newGatewayKey(cn string) (keyPEM, certPEM []byte, cert *x509.Certificate, err error) {
	key, cert, err := policyguard.GenerateSigningKey(2048, cn)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generating the gateway's signing key: %w", err)
	}
	keyPEM, certPEM, err = policyguard.EncodeKeyPair(key, cert)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("encoding the gateway's signing key: %w", err)
	}
	return keyPEM, certPEM, cert, nil
}

func certPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// writeFiles writes every file into dir, refusing to replace one that
// exists unless force; nothing is written when one is refused.
func writeFiles(dir string, force bool, files []outFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	if !force {
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(dir, f.name)); err == nil {
				return fmt.Errorf("--out %s: %s exists; pass --force to replace the files init writes", dir, f.name)
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("--out: %w", err)
			}
		}
	}
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if err := os.WriteFile(path, f.data, f.mode); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		// WriteFile keeps an existing file's mode: a key must not stay readable.
		if err := os.Chmod(path, f.mode); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	return nil
}

type outFile struct {
	name string
	data []byte
	mode os.FileMode
}

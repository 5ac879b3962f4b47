package manager

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/beevik/etree"

	"github.com/legacygate/legacygate/integration/certs"
)

// indexSerials fetches the index and returns the profile and SyLink serials.
func indexSerials(t *testing.T, c *http.Client, base, host string) (profile, sylink string) {
	t.Helper()
	r := do(t, c, http.MethodGet, base+SecarsPath+"?action=index&hostid="+host, nil, "")
	root := parseXML(t, r.body)
	return root.SelectElement("Profile").SelectAttrValue("SerialNumber", ""),
		root.SelectElement("SyLink").SelectAttrValue("Serial", "")
}

func readCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// keyChange is what a test observes around a key change.
type keyChange struct {
	oldCert, newCert *x509.Certificate
}

// checkKeyChange asserts what every key change must do: a new pin, a new
// served certificate, new files, both serials bumped, documents signed by
// the new key and not by the old one.
func checkKeyChange(t *testing.T, m *Manager, change func() error) keyChange {
	t.Helper()
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	base := "https://" + m.Addrs().HTTPS
	host := register(t, c, base)
	oldPin, oldCert := m.Pin(), m.SigningCert()
	oldProfile, oldSyLink := indexSerials(t, c, base, host)

	if err := change(); err != nil {
		t.Fatalf("key change: %v", err)
	}

	if m.Pin() == oldPin {
		t.Error("pin unchanged")
	}
	newCert := m.SigningCert()
	if newCert.Equal(oldCert) {
		t.Error("signing certificate unchanged")
	}
	if got := servedCert(t, m.Addrs().HTTPS); !got.Equal(newCert) {
		t.Error("a new handshake does not present the new certificate")
	}
	if got := readCertFile(t, filepath.Join(m.Config().Dir, SigningCertFile)); !got.Equal(newCert) {
		t.Errorf("%s is not the new certificate", SigningCertFile)
	}
	pinFile, err := os.ReadFile(filepath.Join(m.Config().Dir, PinFile))
	if err != nil || strings.TrimSpace(string(pinFile)) != m.Pin() {
		t.Errorf("pin file %q (%v), want %s", pinFile, err, m.Pin())
	}
	// The keep-alive connection opened before the change is closed after
	// this response, as a manager's web server restart would.
	r := do(t, c, http.MethodGet, base+SecarsPath+"?action=index&hostid="+host, nil, "")
	if !r.close {
		t.Error("first response on a connection from before the change does not close it")
	}
	newProfile, newSyLink := indexSerials(t, c, base, host)
	if newProfile == oldProfile || newSyLink == oldSyLink {
		t.Errorf("serials unchanged: profile %q→%q, SyLink %q→%q", oldProfile, newProfile, oldSyLink, newSyLink)
	}
	for _, action := range []string{ActionProfile, ActionSyLink} {
		doc := do(t, c, http.MethodGet, base+SecarsPath+"?action="+action+"&hostid="+host, nil, "").body
		if _, err := verifyGoxmldsig(doc, newCert); err != nil {
			t.Errorf("%s does not verify with the new certificate: %v", action, err)
		}
		if _, err := verifyGoxmldsig(doc, oldCert); err == nil {
			t.Errorf("%s still verifies with the old certificate: clients trusting it would not notice", action)
		}
	}
	return keyChange{oldCert: oldCert, newCert: newCert}
}

func TestRegenerateChangesPinAndSigningCert(t *testing.T) {
	m := startManager(t, Config{Dir: t.TempDir()})
	kc := checkKeyChange(t, m, m.Regenerate)
	if kc.newCert.SignatureAlgorithm != x509.SHA256WithRSA {
		t.Errorf("regenerated certificate is %v, want the configured kind (modern, SHA-256)", kc.newCert.SignatureAlgorithm)
	}
}

func TestImportSwitchesToPreloadedKey(t *testing.T) {
	nextDir := t.TempDir()
	next := testPair(t, certs.CNOnly)
	if _, _, err := next.WriteFiles(nextDir, "next"); err != nil {
		t.Fatal(err)
	}
	m := startManager(t, Config{Dir: t.TempDir(), NextDir: nextDir})
	if !m.NextCert().Equal(next.Cert) {
		t.Fatal("NextCert is not the pair in NextDir")
	}
	kc := checkKeyChange(t, m, m.Import)
	if !kc.newCert.Equal(next.Cert) || m.Pin() != next.Pin() {
		t.Errorf("after Import the manager uses %s, want the preloaded %s", m.Pin(), next.Pin())
	}
	if err := m.Import(); err == nil {
		t.Error("a second Import of the same pair succeeded")
	}
}

func TestImportAfterRegenerateReadsNextDirAgain(t *testing.T) {
	nextDir := t.TempDir()
	m := startManager(t, Config{NextDir: nextDir})
	created := readCertFile(t, filepath.Join(nextDir, NextCertFile))
	if !m.NextCert().Equal(created) {
		t.Fatal("the pair created in an empty NextDir is not NextCert")
	}
	replacement := testPair(t, certs.SHA1)
	if _, _, err := replacement.WriteFiles(nextDir, "next"); err != nil {
		t.Fatal(err)
	}
	if err := m.Import(); err != nil {
		t.Fatal(err)
	}
	if m.Pin() != replacement.Pin() {
		t.Errorf("Import used %s, want the pair written to NextDir since start, %s", m.Pin(), replacement.Pin())
	}
}

func TestImportErrors(t *testing.T) {
	mismatched := t.TempDir()
	a, b := testPair(t, certs.Modern), testPair(t, certs.Expired)
	os.WriteFile(filepath.Join(mismatched, NextCertFile), a.CertPEM(), 0o644)
	os.WriteFile(filepath.Join(mismatched, NextKeyFile), b.KeyPEM(), 0o600)
	tests := []struct {
		name    string
		cfg     Config
		prepare func(m *Manager)
		want    string
	}{
		{"no next pair", Config{}, nil, "no next key pair"},
		{"next is current", Config{Next: testPair(t, certs.Modern)}, nil, "already the manager's key"},
		{"next files removed", Config{NextDir: t.TempDir()}, func(m *Manager) {
			os.Remove(filepath.Join(m.Config().NextDir, NextKeyFile))
		}, "reading key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startManager(t, tt.cfg)
			if tt.prepare != nil {
				tt.prepare(m)
			}
			pin := m.Pin()
			err := m.Import()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Import error %v, want one containing %q", err, tt.want)
			}
			if m.Pin() != pin {
				t.Error("a failed Import changed the key")
			}
		})
	}
	t.Run("key and certificate do not match", func(t *testing.T) {
		_, err := New(Config{HTTPAddr: "127.0.0.1:0", Initial: a, NextDir: mismatched})
		if err == nil || !strings.Contains(err.Error(), "does not match") {
			t.Errorf("New error %v, want a key/certificate mismatch", err)
		}
	})
}

// TestKeyChangesUnderLoadServeConsistentDocuments fetches SyLink documents
// while the key changes: each must be signed by the key of the certificate
// it carries, never a mix of the old and the new.
func TestKeyChangesUnderLoadServeConsistentDocuments(t *testing.T) {
	m := startManager(t, Config{ProfileSize: 8 << 10})
	c := testClient(tls.VersionTLS10, tls.VersionTLS12)
	base := "http://" + m.Addrs().HTTP
	host := register(t, c, base)
	done := make(chan struct{})
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				resp, err := c.Get(base + SecarsPath + "?action=sylink&hostid=" + host)
				if err != nil {
					errs <- err
					return
				}
				doc, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					errs <- err
					return
				}
				if err := sylinkSignedByItsOwnCert(doc); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 3 {
		if err := m.Regenerate(); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func sylinkSignedByItsOwnCert(doc []byte) error {
	d := etree.NewDocument()
	if err := d.ReadFromBytes(doc); err != nil {
		return err
	}
	el := d.FindElement("//ServerCertificate")
	if el == nil {
		return errors.New("no ServerCertificate")
	}
	der, err := base64.StdEncoding.DecodeString(el.Text())
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	if _, err := verifyGoxmldsig(doc, cert); err != nil {
		return fmt.Errorf("SyLink not signed by the certificate it carries: %w", err)
	}
	return nil
}

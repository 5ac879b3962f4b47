package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// One key for all kinds: the properties under test are the certificate's.
func testKey(t *testing.T) *Pair {
	t.Helper()
	p, err := New(Modern, "mgr.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKindsHaveTheirProperty(t *testing.T) {
	key := testKey(t).Key
	now := time.Now()
	tests := []struct {
		kind    Kind
		sigAlg  x509.SignatureAlgorithm
		wantSAN bool
		expired bool
	}{
		{Modern, x509.SHA256WithRSA, true, false},
		{SHA1, x509.SHA1WithRSA, true, false},
		{CNOnly, x509.SHA256WithRSA, false, false},
		{Expired, x509.SHA256WithRSA, true, true},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			p, err := NewWithKey(tt.kind, "mgr.test", key)
			if err != nil {
				t.Fatal(err)
			}
			c := p.Cert
			if c.SignatureAlgorithm != tt.sigAlg {
				t.Errorf("signature algorithm %v, want %v", c.SignatureAlgorithm, tt.sigAlg)
			}
			hasSAN := len(c.DNSNames)+len(c.IPAddresses) > 0
			if hasSAN != tt.wantSAN {
				t.Errorf("has SAN %v, want %v (DNS %v, IP %v)", hasSAN, tt.wantSAN, c.DNSNames, c.IPAddresses)
			}
			if c.Subject.CommonName != "mgr.test" {
				t.Errorf("CN %q, want mgr.test", c.Subject.CommonName)
			}
			if isExpired := now.After(c.NotAfter); isExpired != tt.expired {
				t.Errorf("expired %v (NotAfter %v), want %v", isExpired, c.NotAfter, tt.expired)
			}
			// Self-signed, with the stated algorithm.
			if err := c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
				t.Errorf("self-signature does not verify as %v: %v", c.SignatureAlgorithm, err)
			}
			if tt.wantSAN && !slicesContainIP(c.IPAddresses, net.IPv4(127, 0, 0, 1)) {
				t.Error("SAN lacks 127.0.0.1")
			}
		})
	}
}

func slicesContainIP(ips []net.IP, want net.IP) bool {
	for _, ip := range ips {
		if ip.Equal(want) {
			return true
		}
	}
	return false
}

// Go's verifier refuses the CN-only and expired kinds for the reason their
// names give, which is why the gateway pins instead. (A SHA-1 self-signed
// certificate added to a pool as a root does verify: Go never checks a
// root's own signature; it refuses SHA-1 on certificates a root signs.)
func TestGoVerifierRefusesWeakKinds(t *testing.T) {
	key := testKey(t).Key
	tests := []struct {
		kind Kind
		want string
	}{
		{CNOnly, "legacy Common Name field"},
		{Expired, "expired"},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			p, err := NewWithKey(tt.kind, "mgr.test", key)
			if err != nil {
				t.Fatal(err)
			}
			pool := x509.NewCertPool()
			pool.AddCert(p.Cert)
			_, err = p.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "mgr.test"})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Verify error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
	t.Run("modern verifies", func(t *testing.T) {
		p, err := NewWithKey(Modern, "mgr.test", key)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(p.Cert)
		if _, err := p.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "mgr.test"}); err != nil {
			t.Errorf("Verify: %v", err)
		}
	})
}

func TestPinMatchesOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("openssl is required under CI=true: %v", err)
		}
		t.Skip("openssl not installed")
	}
	p := testKey(t)
	dir := t.TempDir()
	certFile, _, err := p.WriteFiles(dir, "mgr")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The pipeline issue 2 documents for administrators.
	script := `"$0" x509 -in "$1" -pubkey -noout | "$0" pkey -pubin -outform der | "$0" dgst -sha256 -binary | "$0" base64`
	out, err := exec.CommandContext(ctx, "sh", "-c", script, openssl, certFile).Output()
	if err != nil {
		t.Fatalf("openssl: %v", err)
	}
	if want := "sha256/" + strings.TrimSpace(string(out)); p.Pin() != want {
		t.Errorf("Pin() = %s, openssl says %s", p.Pin(), want)
	}
}

func TestWriteFilesRoundTrip(t *testing.T) {
	p := testKey(t)
	dir := t.TempDir()
	certFile, keyFile, err := p.WriteFiles(dir, "mgr")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("written files do not load as a key pair: %v", err)
	}
	if !pair.Leaf.Equal(p.Cert) {
		t.Error("loaded certificate differs")
	}
	info, err := os.Stat(keyFile)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v (%v), want 0600", info.Mode().Perm(), err)
	}
	b, _ := os.ReadFile(keyFile)
	if block, _ := pem.Decode(b); block == nil || block.Type != "PRIVATE KEY" {
		t.Error("key file is not PKCS#8 PEM")
	}
}

func TestParseKind(t *testing.T) {
	for _, s := range []string{"modern", "sha1", "cn-only", "expired"} {
		if k, err := ParseKind(s); err != nil || string(k) != s {
			t.Errorf("ParseKind(%q) = %q, %v", s, k, err)
		}
	}
	for _, s := range []string{"", "SHA1", "ecdsa", "md5"} {
		if _, err := ParseKind(s); err == nil {
			t.Errorf("ParseKind(%q) accepted", s)
		}
	}
}

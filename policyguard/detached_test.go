package policyguard

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"
)

// detachedSign makes a detached CMS signature over content.
func detachedSign(t *testing.T, content []byte, cert *x509.Certificate, key *rsa.PrivateKey, sha1 bool) []byte {
	t.Helper()
	sd, err := pkcs7.NewSignedData(content)
	if err != nil {
		t.Fatal(err)
	}
	sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	if sha1 {
		sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA1)
	}
	if err := sd.AddSigner(cert, key, pkcs7.SignerInfoConfig{}); err != nil {
		t.Fatal(err)
	}
	sd.Detach()
	p7s, err := sd.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return p7s
}

// issuedBy makes a leaf certificate for a fresh key, signed by p.
func issuedBy(t *testing.T, p *party) (*x509.Certificate, *rsa.PrivateKey) {
	t.Helper()
	key := mustRSA(t, 2048)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "package signer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestDetachedVerify(t *testing.T) {
	manager, attacker := testParty(t, "manager"), testParty(t, "attacker")
	content := []byte("package bytes \x00\x01 policy blob")
	leaf, leafKey := issuedBy(t, manager)
	selfSignedLeaf := newLeaf(t)
	tests := []struct {
		name    string
		content []byte
		p7s     []byte
		opts    VerifyOptions
		want    string
	}{
		{"pinned signer", content, detachedSign(t, content, manager.cert, manager.key, false), VerifyOptions{}, ""},
		{"pinned non-CA leaf signs itself", content, detachedSign(t, content, selfSignedLeaf.cert, selfSignedLeaf.key, false), VerifyOptions{}, ""},
		{"signer issued by the pinned certificate", content, detachedSign(t, content, leaf, leafKey, false), VerifyOptions{}, ""},
		{"content changed", append([]byte("x"), content...), detachedSign(t, content, manager.cert, manager.key, false), VerifyOptions{}, ReasonDigestMismatch},
		{"attacker signer", content, detachedSign(t, content, attacker.cert, attacker.key, false), VerifyOptions{}, ReasonUntrustedKey},
		{"SHA-1 without AllowSHA1", content, detachedSign(t, content, manager.cert, manager.key, true), VerifyOptions{}, ReasonSHA1NotAllowed},
		{"SHA-1 with AllowSHA1", content, detachedSign(t, content, manager.cert, manager.key, true), VerifyOptions{AllowSHA1: true}, ""},
		{"garbage signature", content, []byte("not a p7s"), VerifyOptions{}, ReasonMalformedCMS},
		{"over-size content", content, detachedSign(t, content, manager.cert, manager.key, false), VerifyOptions{MaxBytes: 8}, ReasonTooLarge},
		{"pinned certificate expired", content, detachedSign(t, content, manager.cert, manager.key, false), VerifyOptions{Now: func() time.Time { return time.Now().AddDate(3, 0, 0) }}, ReasonExpiredCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NewDetachedVerifier([]*x509.Certificate{manager.cert, selfSignedLeaf.cert}, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			err = v.Verify(tt.content, tt.p7s)
			if got := Reason(err); got != tt.want {
				t.Fatalf("reason %q (%v), want %q", got, err, tt.want)
			}
		})
	}
}

// newLeaf makes a self-signed certificate that is not a CA, like the
// managers' own certificates: only its key can vouch for it.
func newLeaf(t *testing.T) *party {
	t.Helper()
	key := mustRSA(t, 2048)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "manager leaf"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &party{key: key, cert: cert}
}

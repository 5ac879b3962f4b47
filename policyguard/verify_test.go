package policyguard

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

func TestVerifyAcceptsManagerSignedProfiles(t *testing.T) {
	manager := testParty(t, "manager")
	tests := []struct {
		name string
		doc  string
		sign managerSignOptions
		opts VerifyOptions
	}{
		{"small exclusive c14n", sepmProfile(2 << 10), managerSignOptions{}, VerifyOptions{}},
		{"100KB beyond goxmldsig's 1000-element search", sepmProfile(100 << 10), managerSignOptions{}, VerifyOptions{}},
		{"inclusive c14n", sepmProfile(4 << 10), managerSignOptions{inclusive: true}, VerifyOptions{}},
		{"reference to the root Id", sepmProfile(4 << 10), managerSignOptions{withID: "profile-1"}, VerifyOptions{}},
		{"rsa-sha1 with AllowSHA1", sepmProfile(4 << 10), managerSignOptions{sha1: true}, VerifyOptions{AllowSHA1: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newTestVerifier(t, tt.opts, "manager")
			got, err := v.Verify(managerSign(t, manager, tt.doc, tt.sign))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got.Root.Tag != "Profile" || got.Cert != manager.cert {
				t.Fatalf("Verified root <%s> cert %v, want <Profile> and the manager's", got.Root.Tag, got.Cert.Subject)
			}
			if n := len(got.Root.FindElements("//AntiVirusPolicy")); n != strings.Count(tt.doc, "<AntiVirusPolicy ") {
				t.Fatalf("verified root has %d policies, want all %d", n, strings.Count(tt.doc, "<AntiVirusPolicy "))
			}
		})
	}
}

func TestVerifyPicksWhicheverPinnedCertSigned(t *testing.T) {
	v := newTestVerifier(t, VerifyOptions{}, "manager", "manager-next")
	next := testParty(t, "manager-next")
	got, err := v.Verify(managerSign(t, next, sepmProfile(1<<10), managerSignOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	if got.Cert != next.cert {
		t.Fatalf("verified by %s, want manager-next", got.Cert.Subject)
	}
}

func TestVerifyExpiredPinnedCertificate(t *testing.T) {
	doc := managerSign(t, testParty(t, "expired"), sepmProfile(1<<10), managerSignOptions{})
	strict := newTestVerifier(t, VerifyOptions{}, "expired")
	if _, err := strict.Verify(doc); Reason(err) != ReasonExpiredCert {
		t.Fatalf("strict verifier: got %v, want %s", err, ReasonExpiredCert)
	}
	lenient := newTestVerifier(t, VerifyOptions{IgnoreExpiry: true}, "expired")
	if _, err := lenient.Verify(doc); err != nil {
		t.Fatalf("IgnoreExpiry verifier: %v", err)
	}
}

func TestVerifyHonoursInjectedClock(t *testing.T) {
	doc := managerSign(t, testParty(t, "manager"), sepmProfile(1<<10), managerSignOptions{})
	future := func() time.Time { return time.Now().AddDate(5, 0, 0) }
	v := newTestVerifier(t, VerifyOptions{Now: future}, "manager")
	if _, err := v.Verify(doc); Reason(err) != ReasonExpiredCert {
		t.Fatalf("got %v, want %s five years on", err, ReasonExpiredCert)
	}
}

func TestNewVerifierRejectsBadConfiguration(t *testing.T) {
	tests := []struct {
		name string
		run  func() error
	}{
		{"no pinned certificate", func() error { _, err := NewVerifier(nil, VerifyOptions{}); return err }},
		{"negative MaxBytes", func() error {
			_, err := NewVerifier([]*x509.Certificate{testParty(t, "manager").cert}, VerifyOptions{MaxBytes: -1})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestSignOutputVerifiesWithGatewayCertOnly(t *testing.T) {
	gw := testParty(t, "gateway")
	v := newTestVerifier(t, VerifyOptions{}, "manager")
	verified, err := v.Verify(managerSign(t, testParty(t, "manager"), sepmProfile(8<<10), managerSignOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	out, err := gw.signer(t).Sign(verified.Root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newTestVerifier(t, VerifyOptions{}, "gateway").Verify(out); err != nil {
		t.Fatalf("gateway output does not verify with the gateway cert: %v", err)
	}
	if _, err := v.Verify(out); Reason(err) != ReasonUntrustedKey {
		t.Fatalf("gateway output against the manager pin: got %v, want %s", err, ReasonUntrustedKey)
	}
	if bytes.Count(out, []byte("<ds:Signature ")) != 1 {
		t.Fatal("output must carry exactly one signature, the gateway's")
	}
}

func TestSignReplacesExistingSignatureAndKeepsInput(t *testing.T) {
	signed := managerSign(t, testParty(t, "manager"), sepmProfile(1<<10), managerSignOptions{})
	root := parseRoot(t, signed)
	before := len(root.ChildElements())
	out, err := testParty(t, "gateway").signer(t).Sign(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(root.ChildElements()) != before {
		t.Fatal("Sign modified its input")
	}
	if _, err := newTestVerifier(t, VerifyOptions{}, "gateway").Verify(out); err != nil {
		t.Fatal(err)
	}
}

func TestNewSignerRejectsUnsupportedKeys(t *testing.T) {
	gw := testParty(t, "gateway")
	tests := []struct {
		name string
		key  crypto.Signer
		cert *x509.Certificate
	}{
		{"key and certificate differ", gw.key, testParty(t, "manager").cert},
		{"RSA-1024", mustRSA(t, 1024), gw.cert},
		{"ECDSA", mustECDSA(t), gw.cert},
		{"no certificate", gw.key, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewSigner(tt.key, tt.cert); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

package fleet

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	dsig "github.com/russellhaering/goxmldsig"
)

const testProfile = `<Profile SerialNumber="S1"><AvPolicy Name="av"/><IpsPolicy><Signature Id="1" Name="IPS"/></IpsPolicy></Profile>`

func TestVerifierJudgesSignatures(t *testing.T) {
	a, b, _ := testPairs(t)
	good := signXML(t, testProfile, a)
	tests := []struct {
		name    string
		doc     []byte
		root    string
		wantErr string // empty: accepted
	}{
		{"signed by the trusted key", good, "Profile", ""},
		{"large policy: 3,000 elements, signature last", signXML(t, `<Profile>`+strings.Repeat(`<Rule A="1"/>`, 3000)+`<AvPolicy/></Profile>`, a), "Profile", ""},
		{"rsa-sha1 from an old manager", signXMLWith(t, testProfile, a, dsig.RSASHA1SignatureMethod), "Profile", ""},
		{"signed by another key", signXML(t, testProfile, b), "Profile", "Could not verify certificate"},
		{"content changed after signing", bytes.Replace(good, []byte(`Name="av"`), []byte(`Name="off"`), 1), "Profile", "verif"},
		{"rsa-sha512 is not what the client knows", signXMLWith(t, testProfile, a, dsig.RSASHA512SignatureMethod), "Profile", "rsa-sha1/rsa-sha256"},
		{"unsigned", []byte(testProfile), "Profile", "no enveloped <Signature>"},
		{"wrong root", good, "ServerSettings", "root element is not <ServerSettings>"},
		{"malformed", good[:len(good)/2], "Profile", "malformed XML"},
		{"DOCTYPE", append([]byte(`<!DOCTYPE Profile>`), good...), "Profile", "DOCTYPE"},
		{"second signature", bytes.Replace(good, []byte(`<AvPolicy`), []byte(`<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"/><AvPolicy`), 1), "Profile", "more than one"},
	}
	v := newVerifier(a.Cert)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signed, err := v.verify(tt.doc, tt.root)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if signed.Tag != tt.root || signed.SelectElement("AvPolicy") == nil {
					t.Errorf("returned element <%s> is not the signed document", signed.Tag)
				}
				return
			}
			if err == nil || !errors.Is(err, errSignature) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want errSignature containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestVerdictCacheGivesTheSameAnswers(t *testing.T) {
	a, b, _ := testPairs(t)
	good := signXML(t, testProfile, a)
	cache := newVerdicts(2)
	for i := range 5 { // more entries than the bound: it empties and refills
		if err := cache.check(newVerifier(a.Cert), good, "Profile"); err != nil {
			t.Fatalf("round %d: good document refused: %v", i, err)
		}
		if err := cache.check(newVerifier(b.Cert), good, "Profile"); err == nil {
			t.Fatalf("round %d: document accepted under a certificate that did not sign it", i)
		}
		if err := cache.check(newVerifier(a.Cert), good, "ServerSettings"); err == nil {
			t.Fatalf("round %d: verdict for <Profile> reused for <ServerSettings>", i)
		}
	}
	if len(cache.byKey) > 2 {
		t.Errorf("cache holds %d verdicts, bound is 2", len(cache.byKey))
	}
}

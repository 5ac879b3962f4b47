package fleet

import (
	"testing"
)

// FuzzParseIndex feeds the two small documents a server answers before
// any signature is involved: the heartbeat index and the registration.
func FuzzParseIndex(f *testing.F) {
	for _, seed := range []string{
		`<Index DomainId="D"><Profile Checksum="X" SerialNumber="A3AF-01/30/2012 23:50:54 284" LastModifiedTime="1"/><SyLink Serial="B1"/></Index>`,
		`<Index><Profile SerialNumber=""/></Index>`,
		`<Registration HostId="0123456789ABCDEF0123456789ABCDEF" Group="My Company\Default Group"/>`,
		`4 Bad format.`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if ix, err := parseIndex(data); err == nil {
			if ix.profile == "" || len(ix.profile) > maxSerialLen || len(ix.sylink) > maxSerialLen {
				t.Fatalf("accepted index with serials %q, %q", ix.profile, ix.sylink)
			}
		}
		if id, err := parseRegistration(data); err == nil && (id == "" || len(id) > maxSerialLen) {
			t.Fatalf("accepted HostId %q", id)
		}
	})
}

// FuzzVerify feeds downloaded documents to the client's signature check:
// it must never panic and never accept a document its trusted key did
// not sign (the fuzzer cannot forge RSA, so any acceptance of a changed
// document is a bug).
func FuzzVerify(f *testing.F) {
	a, _, _ := testPairs(f)
	good := signXML(f, testProfile, a)
	f.Add(good)
	f.Add([]byte(testProfile))
	f.Add([]byte(`<Profile><ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo/></ds:Signature></Profile>`))
	v := newVerifier(a.Cert)
	f.Fuzz(func(t *testing.T, data []byte) {
		signed, err := v.verify(data, "Profile")
		if err != nil {
			return
		}
		if string(data) != string(good) && signed.SelectElement("AvPolicy") == nil {
			t.Fatalf("accepted a document without the signed content:\n%s", data)
		}
	})
}

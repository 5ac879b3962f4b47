package policyguard

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// fuzzSeeds are inputs that reach every pre-check and the success path.
func fuzzSeeds(f *testing.F) [][]byte {
	signed := managerSign(f, testParty(f, "manager"), sepmProfile(1<<10), managerSignOptions{})
	parts := splitSigned(f, signed)
	return [][]byte{
		signed,
		managerSign(f, testParty(f, "manager"), sepmProfile(512), managerSignOptions{withID: "p1", inclusive: true}),
		[]byte(parts.open + parts.body + parts.sig + parts.sig + parts.close),
		[]byte(`<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>`),
		[]byte(strings.Repeat("<a>", 300) + strings.Repeat("</a>", 300)),
		[]byte(`<a b="1>2"><![CDATA[<x>]]><!-- c --><?pi x?></a>`),
		[]byte(`<a></b>`),
	}
}

func FuzzPrescan(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	l := limits{maxBytes: 1 << 20, maxDepth: 64, maxElements: 1000}
	f.Fuzz(func(t *testing.T, doc []byte) {
		err := prescan(doc, l)
		if err != nil && Reason(err) == "" {
			t.Fatalf("prescan error is not a *VerifyError: %v", err)
		}
		if err == nil && bytes.Contains(doc, []byte("<!DOCTYPE")) && !bytes.Contains(doc, []byte("<!--")) && !bytes.Contains(doc, []byte("CDATA")) {
			t.Fatal("prescan let a DOCTYPE through")
		}
	})
}

func FuzzVerify(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	v := newTestVerifier(f, VerifyOptions{MaxBytes: 1 << 20}, "manager")
	f.Fuzz(func(t *testing.T, doc []byte) {
		got, err := v.Verify(doc)
		if err != nil {
			var ve *VerifyError
			if !errors.As(err, &ve) || ve.Reason == "" {
				t.Fatalf("verification failure without a reason: %v", err)
			}
			return
		}
		if got.Root == nil || got.Cert == nil {
			t.Fatal("success without a root or certificate")
		}
	})
}

// FuzzResign checks the whole pipeline: whatever it outputs verifies with
// the gateway's certificate, equals what the goxmldsig path outputs, and
// nothing is output on failure.
func FuzzResign(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	r := NewResigner(newTestVerifier(f, VerifyOptions{MaxBytes: 1 << 20}, "manager"), 1<<20)
	gw := testParty(f, "gateway").signer(f)
	check := newTestVerifier(f, VerifyOptions{}, "gateway")
	f.Fuzz(func(t *testing.T, doc []byte) {
		out, err := r.Resign(doc, gw, nil)
		if err != nil {
			if out != nil {
				t.Fatal("output on failure")
			}
			return
		}
		if _, err := check.Verify(out); err != nil {
			t.Fatalf("resigned output does not verify: %v", err)
		}
		if slow, err := r.slowResign(doc, gw, nil); err != nil || !bytes.Equal(slow, out) {
			t.Fatalf("goxmldsig path disagrees with the output (err %v)", err)
		}
	})
}

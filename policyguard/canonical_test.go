package policyguard

import (
	"bytes"
	"strings"
	"testing"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"
)

// goxmldsigCanonical is the reference: goxmldsig's exclusive C14N of the
// root without its ds:Signature children.
func goxmldsigCanonical(doc []byte) ([]byte, error) {
	tree := etree.NewDocument()
	if err := tree.ReadFromBytes(doc); err != nil {
		return nil, err
	}
	root := tree.Root()
	for _, child := range root.ChildElements() {
		if isDsig(child, "Signature") {
			root.RemoveChild(child)
		}
	}
	return dsig.MakeC14N10ExclusiveCanonicalizerWithPrefixList("").Canonicalize(root)
}

// checkCanonicalAgrees fails if the fast path's parsing (the one-pass
// canonicalizer, and etree for the signature) accepts doc but disagrees
// with goxmldsig. It reports whether the fast path handled doc.
func checkCanonicalAgrees(t *testing.T, doc []byte) bool {
	t.Helper()
	if prescan(doc, limits{maxBytes: 1 << 20, maxDepth: 64, maxElements: 10000}) != nil {
		return false
	}
	got, err := canonicalize(doc)
	if err != nil {
		return false
	}
	// The signature is skipped by the canonicalizer and parsed by etree
	// in the fast path; mirror that.
	if got.sigEnd != 0 {
		if _, err := parseSignature(doc[got.sigStart:got.sigEnd], got.rootNS); err != nil {
			return false
		}
	}
	want, err := goxmldsigCanonical(doc)
	if err != nil {
		t.Fatalf("one-pass canonicalizer accepted a document etree rejects (%v):\n%q", err, doc)
	}
	if !bytes.Equal(got.canonical, want) {
		t.Fatalf("canonical forms differ for\n%q\none-pass: %q\ngoxmldsig: %q", doc, got.canonical, want)
	}
	return true
}

func TestCanonicalizeMatchesGoxmldsig(t *testing.T) {
	signed := string(managerSign(t, testParty(t, "manager"), sepmProfile(2<<10), managerSignOptions{}))
	tests := []struct {
		name    string
		doc     string
		handled bool
	}{
		{"SEPM profile with signature", signed, true},
		{"XML declaration and comments", `<?xml version="1.0" encoding="UTF-8"?>` + "\n<!-- top -->\n<a><!-- in -->x</a>\n", true},
		{"entities and character references", `<a b="&lt;&amp;&quot;&#9;&#10;&#x41;'">&lt;&gt;&amp;&quot;&apos;&#13;&#x263A;</a>`, true},
		{"CDATA and line ends", "<a><![CDATA[<x> & ]]>\r\nline\rend</a>", true},
		{"attribute order and quotes", `<a z='1' b="2" a="3&apos;"/>`, true},
		{"default namespace and redeclaration", `<a xmlns="urn:a"><b xmlns="urn:a"><c xmlns="urn:c"/></b><d xmlns=""/></a>`, true},
		{"prefixed elements, unused declarations dropped", `<p:a xmlns:p="urn:p" xmlns:q="urn:q"><q:b/><p:c xmlns:p="urn:p2"/><d/></p:a>`, true},
		{"prefixed attribute declines", `<a xmlns:p="urn:p" p:x="1"/>`, false},
		{"newline in attribute declines", "<a b=\"x\ny\"/>", false},
		{"processing instruction inside root declines", `<a><?pi x?></a>`, false},
		{"unknown entity declines", `<a>&nbsp;</a>`, false},
		{"Latin-1 declaration declines", `<?xml version="1.0" encoding="ISO-8859-1"?><a/>`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if handled := checkCanonicalAgrees(t, []byte(tt.doc)); handled != tt.handled {
				t.Fatalf("fast path handled = %v, want %v", handled, tt.handled)
			}
		})
	}
}

func TestFastPathOutputEqualsGoxmldsigPath(t *testing.T) {
	manager := testParty(t, "manager")
	gw := testParty(t, "gateway").signer(t)
	v := newTestVerifier(t, VerifyOptions{}, "manager")
	r := NewResigner(v, 0)
	tests := []struct {
		name string
		doc  []byte
		fast bool
	}{
		{"20KB profile", managerSign(t, manager, sepmProfile(20<<10), managerSignOptions{}), true},
		{"100KB profile", managerSign(t, manager, sepmProfile(100<<10), managerSignOptions{}), true},
		{"namespaced settings", managerSign(t, manager, `<ServerSettings xmlns="urn:sepm" DomainId="87D"><CommConf><Server Address="10.0.0.5" HttpPort="8014"/></CommConf></ServerSettings>`, managerSignOptions{}), true},
		{"reference by Id goes through goxmldsig", managerSign(t, manager, sepmProfile(1<<10), managerSignOptions{withID: "p1"}), false},
		{"inclusive C14N goes through goxmldsig", managerSign(t, manager, sepmProfile(1<<10), managerSignOptions{inclusive: true}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fast, fastErr := v.fastResign(tt.doc, gw)
			if isDecline(fastErr) == tt.fast {
				t.Fatalf("fast path declined = %v, want %v", isDecline(fastErr), !tt.fast)
			}
			slow, err := r.slowResign(tt.doc, gw, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.fast && (fastErr != nil || !bytes.Equal(fast, slow)) {
				t.Fatalf("fast path output differs from goxmldsig path (err %v)", fastErr)
			}
		})
	}
}

func TestFastPathRejectsWhatGoxmldsigRejects(t *testing.T) {
	manager, attacker := testParty(t, "manager"), testParty(t, "attacker")
	signed := managerSign(t, manager, sepmProfile(2<<10), managerSignOptions{})
	v := newTestVerifier(t, VerifyOptions{}, "manager")
	gw := testParty(t, "gateway").signer(t)
	tests := []struct {
		name string
		doc  []byte
		want string
	}{
		{"tampered content", bytes.Replace(signed, []byte(`Name="group-1"`), []byte(`Name="evil"`), 1), ReasonDigestMismatch},
		{"attacker signature", managerSign(t, attacker, sepmProfile(2<<10), managerSignOptions{}), ReasonUntrustedKey},
		{"attacker signature without KeyInfo", []byte(replaceKeyInfo(string(managerSign(t, attacker, sepmProfile(2<<10), managerSignOptions{})), "")), ReasonUntrustedKey},
		{"comment-split text is carried whole", bytes.Replace(signed, []byte("policy 1 for"), []byte("policy 1<!--x--> for"), 1), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := v.fastResign(tt.doc, gw)
			if isDecline(err) {
				t.Fatal("fast path declined; this case must be decided there")
			}
			if Reason(err) != tt.want {
				t.Fatalf("reason %q (%v), want %q", Reason(err), err, tt.want)
			}
			if tt.want == "" && (bytes.Contains(out, []byte("<!--")) || !bytes.Contains(out, []byte("policy 1 for"))) {
				t.Fatal("output does not carry the canonical text")
			}
		})
	}
	if !strings.Contains(string(signed), "<ds:Signature") {
		t.Fatal("fixture lacks a signature")
	}
}

func FuzzCanonicalize(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	f.Add([]byte(`<p:a xmlns:p="urn:p" xmlns="urn:d"><b c="&#x41;&amp;">t&gt;<![CDATA[&]]></b><p:c xmlns:p="urn:q"/></p:a>`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		checkCanonicalAgrees(t, doc)
	})
}

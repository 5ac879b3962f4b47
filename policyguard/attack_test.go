package policyguard

import (
	"encoding/base64"
	"strings"
	"testing"
)

// signedParts splits a manager-signed document into the root's start tag,
// its content before the signature, the signature, and the end tag.
type signedParts struct{ open, body, sig, close string }

func splitSigned(t testing.TB, doc []byte) signedParts {
	t.Helper()
	s := string(doc)
	openEnd := strings.Index(s, ">") + 1
	sigStart := strings.Index(s, "<ds:Signature")
	sigEnd := strings.Index(s, "</ds:Signature>") + len("</ds:Signature>")
	if openEnd <= 0 || sigStart < openEnd || sigEnd < sigStart {
		t.Fatalf("unexpected signed document shape: %.200s", s)
	}
	return signedParts{open: s[:openEnd], body: s[openEnd:sigStart], sig: s[sigStart:sigEnd], close: s[sigEnd:]}
}

// original is the signed root without its signature.
func (p signedParts) original() string { return p.open + p.body + p.close }

const evilBody = `<AntiVirusPolicy Name="evil" Enabled="0"/>`

func TestVerifyRejectsAttacks(t *testing.T) {
	manager, attacker := testParty(t, "manager"), testParty(t, "attacker")
	gateway := testParty(t, "gateway").signer(t)
	profile := sepmProfile(2 << 10)
	byID := splitSigned(t, managerSign(t, manager, profile, managerSignOptions{withID: "p1"}))
	whole := splitSigned(t, managerSign(t, manager, profile, managerSignOptions{}))
	evilOpen := strings.Replace(byID.open, `Id="p1"`, `Id="evil"`, 1)
	withComments := managerSign(t, manager, profile, managerSignOptions{comments: true})
	byAttacker := splitSigned(t, managerSign(t, attacker, profile, managerSignOptions{}))
	attackerKeyValue := `<ds:KeyInfo><ds:KeyValue><ds:RSAKeyValue><ds:Modulus>` +
		base64.StdEncoding.EncodeToString(attacker.key.N.Bytes()) + `</ds:Modulus><ds:Exponent>AQAB</ds:Exponent></ds:RSAKeyValue></ds:KeyValue></ds:KeyInfo>`
	managerCertB64 := base64.StdEncoding.EncodeToString(manager.cert.Raw)

	tests := []struct {
		name string
		doc  string
		opts VerifyOptions
		want string
	}{
		// The XML signature wrapping family (Somorovsky et al., "On Breaking SAML"),
		// applied to a whole-document signature.
		{"XSW1 original inside the signature of an evil root", evilOpen + evilBody + strings.Replace(byID.sig, "</ds:Signature>", byID.original()+"</ds:Signature>", 1) + byID.close, VerifyOptions{}, ReasonSignatureShape},
		{"XSW2 original as a sibling before the signature", evilOpen + evilBody + byID.original() + byID.sig + byID.close, VerifyOptions{}, ReasonBadReference},
		{"XSW3 evil root reuses the signed Id", byID.open + evilBody + byID.original() + byID.sig + byID.close, VerifyOptions{}, ReasonDuplicateID},
		{"XSW4 evil root wraps the signed original", evilOpen + evilBody + byID.open + byID.body + byID.sig + byID.close + byID.close, VerifyOptions{}, ReasonMisplacedSignature},
		{"XSW5 content changed under an unchanged signature", byID.open + evilBody + byID.body + byID.sig + byID.close, VerifyOptions{}, ReasonDigestMismatch},
		{"XSW6 signature and original moved into a wrapper", byID.open + evilBody + "<Extensions>" + strings.Replace(byID.sig, "</ds:Signature>", "</ds:Signature>"+byID.original(), 1) + "</Extensions>" + byID.close, VerifyOptions{}, ReasonMisplacedSignature},
		{"XSW7 original hidden in an extension element", evilOpen + evilBody + "<Extensions>" + byID.original() + "</Extensions>" + byID.sig + byID.close, VerifyOptions{}, ReasonBadReference},
		{"XSW8 original smuggled in ds:Object", byID.open + evilBody + strings.Replace(byID.sig, "</ds:Signature>", "<ds:Object>"+byID.original()+"</ds:Object></ds:Signature>", 1) + byID.close, VerifyOptions{}, ReasonObjectNotAllowed},

		{"two signatures", whole.open + whole.body + whole.sig + whole.sig + whole.close, VerifyOptions{}, ReasonMultipleSignatures},
		{"no signature", profile, VerifyOptions{}, ReasonNoSignature},
		{"reference to another element's Id", strings.Replace(whole.open, ">", ` Id="p1">`, 1) + `<Policy Id="p2"/>` + whole.body + strings.Replace(whole.sig, `URI=""`, `URI="#p2"`, 1) + whole.close, VerifyOptions{}, ReasonBadReference},
		{"two References", whole.open + whole.body + strings.Replace(whole.sig, "</ds:Reference>", "</ds:Reference>"+referenceOf(whole.sig), 1) + whole.close, VerifyOptions{}, ReasonBadReference},
		{"content smuggled in ds:Object", whole.open + whole.body + strings.Replace(whole.sig, "</ds:Signature>", "<ds:Object>"+evilBody+"</ds:Object></ds:Signature>", 1) + whole.close, VerifyOptions{}, ReasonObjectNotAllowed},
		{"comment injected into content signed with comments", strings.Replace(string(withComments), "policy 1 for", "policy 1<!--x--> for", 1), VerifyOptions{}, ReasonDigestMismatch},
		{"SHA-1 without AllowSHA1", string(managerSign(t, manager, profile, managerSignOptions{sha1: true})), VerifyOptions{}, ReasonSHA1NotAllowed},
		{"attacker key in KeyValue", byAttacker.open + byAttacker.body + replaceKeyInfo(byAttacker.sig, attackerKeyValue) + byAttacker.close, VerifyOptions{}, ReasonUntrustedKey},
		{"attacker certificate in KeyInfo", byAttacker.open + byAttacker.body + byAttacker.sig + byAttacker.close, VerifyOptions{}, ReasonUntrustedKey},
		{"attacker signature claiming the manager's certificate", byAttacker.open + byAttacker.body + replaceKeyInfo(byAttacker.sig, `<ds:KeyInfo><ds:X509Data><ds:X509Certificate>`+managerCertB64+`</ds:X509Certificate></ds:X509Data></ds:KeyInfo>`) + byAttacker.close, VerifyOptions{}, ReasonUntrustedKey},
		{"attacker signature without KeyInfo", byAttacker.open + byAttacker.body + replaceKeyInfo(byAttacker.sig, "") + byAttacker.close, VerifyOptions{}, ReasonUntrustedKey},
		{"RetrievalMethod in KeyInfo", whole.open + whole.body + replaceKeyInfo(whole.sig, `<ds:KeyInfo><ds:RetrievalMethod URI="http://evil.example/key"/></ds:KeyInfo>`) + whole.close, VerifyOptions{}, ReasonRetrievalMethod},
		{"XPath transform", whole.open + whole.body + strings.Replace(whole.sig, algEnvelope, "http://www.w3.org/TR/1999/REC-xpath-19991116", 1) + whole.close, VerifyOptions{}, ReasonBadTransforms},
		{"HMAC signature method", whole.open + whole.body + strings.Replace(whole.sig, algRSASHA256, "http://www.w3.org/2000/09/xmldsig#hmac-sha1", 1) + whole.close, VerifyOptions{}, ReasonUnsupportedAlg},
		{"SignatureValue changed", whole.open + whole.body + flipSignatureValue(t, whole.sig) + whole.close, VerifyOptions{}, ReasonUntrustedKey},
		{"DOCTYPE with internal entity", `<!DOCTYPE Profile [<!ENTITY x "evil">]>` + whole.open + "&x;" + whole.body + whole.sig + whole.close, VerifyOptions{}, ReasonDoctype},
		{"billion laughs", billionLaughs + whole.open + "&lol9;" + whole.body + whole.sig + whole.close, VerifyOptions{}, ReasonDoctype},
		{"external entity", `<?xml version="1.0"?><!DOCTYPE Profile SYSTEM "file:///etc/passwd">` + whole.open + whole.body + whole.sig + whole.close, VerifyOptions{}, ReasonDoctype},
		{"undeclared entity", whole.open + "&xxe;" + whole.body + whole.sig + whole.close, VerifyOptions{}, ReasonMalformedXML},
		{"depth 5000", strings.Repeat("<a>", 5000) + strings.Repeat("</a>", 5000), VerifyOptions{}, ReasonTooDeep},
		{"over-size", whole.open + whole.body + whole.sig + whole.close, VerifyOptions{MaxBytes: 1024}, ReasonTooLarge},
		{"too many elements", whole.open + whole.body + whole.sig + whole.close, VerifyOptions{MaxElements: 10}, ReasonTooManyElements},
		{"truncated", (whole.open + whole.body + whole.sig + whole.close)[:len(whole.open)+500], VerifyOptions{}, ReasonMalformedXML},
		{"second root element", whole.open + whole.body + whole.sig + whole.close + evilBody, VerifyOptions{}, ReasonMalformedXML},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newTestVerifier(t, tt.opts, "manager")
			_, err := v.Verify([]byte(tt.doc))
			if got := Reason(err); got != tt.want {
				t.Fatalf("Verify: reason %q (%v), want %q", got, err, tt.want)
			}
			out, err := NewResigner(v, 1<<20).Resign([]byte(tt.doc), gateway, nil)
			if got := Reason(err); got != tt.want || out != nil {
				t.Fatalf("Resign: %d bytes, reason %q (%v), want nothing and %q", len(out), got, err, tt.want)
			}
		})
	}
}

const billionLaughs = `<?xml version="1.0"?><!DOCTYPE Profile [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">` +
	`<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;"><!ENTITY lol9 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>`

func referenceOf(sig string) string {
	start := strings.Index(sig, "<ds:Reference")
	end := strings.Index(sig, "</ds:Reference>") + len("</ds:Reference>")
	return sig[start:end]
}

func replaceKeyInfo(sig, keyInfo string) string {
	start := strings.Index(sig, "<ds:KeyInfo>")
	end := strings.Index(sig, "</ds:KeyInfo>") + len("</ds:KeyInfo>")
	return sig[:start] + keyInfo + sig[end:]
}

func flipSignatureValue(t testing.TB, sig string) string {
	t.Helper()
	start := strings.Index(sig, "<ds:SignatureValue>") + len("<ds:SignatureValue>")
	end := strings.Index(sig, "</ds:SignatureValue>")
	raw, err := base64.StdEncoding.DecodeString(sig[start:end])
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x01
	return sig[:start] + base64.StdEncoding.EncodeToString(raw) + sig[end:]
}

package policyguard

import (
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"

	"github.com/beevik/etree"
)

// Namespace and algorithm URIs of XML-DSig and its canonicalizations.
const (
	dsigNS      = "http://www.w3.org/2000/09/xmldsig#"
	excC14nNS   = "http://www.w3.org/2001/10/xml-exc-c14n#"
	algEnvelope = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"

	algExcC14n         = "http://www.w3.org/2001/10/xml-exc-c14n#"
	algExcC14nComments = "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"
	algC14n            = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
	algC14nComments    = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"

	algRSASHA1   = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
	algRSASHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
	algRSASHA384 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
	algRSASHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"

	algSHA1   = "http://www.w3.org/2000/09/xmldsig#sha1"
	algSHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
	algSHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384"
	algSHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"
)

// canonicalizations accepted for SignedInfo and as the Reference's second
// transform. The comment variants are safe because only goxmldsig's output
// is used: comments that were not signed never reach a client.
var canonicalizations = map[string]bool{
	algExcC14n: true, algExcC14nComments: true, algC14n: true, algC14nComments: true,
}

var strongSignatureMethods = map[string]bool{algRSASHA256: true, algRSASHA384: true, algRSASHA512: true}

var strongDigestMethods = map[string]bool{algSHA256: true, algSHA384: true, algSHA512: true}

// idAttributes are the attribute names accepted as the root's Id.
var idAttributes = []string{"Id", "ID", "id"}

// signatureShape is what the pre-checks learned about the signature.
type signatureShape struct {
	keyInfo                       *etree.Element
	idAttr                        string
	signatureMethod, digestMethod string
}

func isDsig(el *etree.Element, tag string) bool {
	return el.Tag == tag && el.NamespaceURI() == dsigNS
}

// findSignature returns the only ds:Signature of the document, which must
// be a direct child of the root.
func findSignature(root *etree.Element) (*etree.Element, error) {
	var found []*etree.Element
	walk(root, func(el *etree.Element) {
		if isDsig(el, "Signature") {
			found = append(found, el)
		}
	})
	switch {
	case len(found) == 0:
		return nil, fail(ReasonNoSignature, "no ds:Signature in <%s>", root.FullTag())
	case len(found) > 1:
		return nil, fail(ReasonMultipleSignatures, "%d ds:Signature elements, want exactly one", len(found))
	case found[0].Parent() != root:
		return nil, fail(ReasonMisplacedSignature, "ds:Signature is inside <%s>, not a direct child of the root <%s>", found[0].Parent().FullTag(), root.FullTag())
	}
	return found[0], nil
}

func walk(el *etree.Element, visit func(*etree.Element)) {
	visit(el)
	for _, child := range el.ChildElements() {
		walk(child, visit)
	}
}

// checkSignature applies the shape and algorithm policy to sig.
func checkSignature(root, sig *etree.Element, allowSHA1 bool) (*signatureShape, error) {
	if err := refuseInside(sig); err != nil {
		return nil, err
	}
	children, err := dsigChildren(sig, "ds:Signature", "SignedInfo", "SignatureValue", "KeyInfo?")
	if err != nil {
		return nil, err
	}
	shape := &signatureShape{keyInfo: children["KeyInfo"]}
	info, err := dsigChildren(children["SignedInfo"], "ds:SignedInfo", "CanonicalizationMethod", "SignatureMethod", "Reference+")
	if err != nil {
		return nil, err
	}
	if err := checkCanonicalizationMethod(info["CanonicalizationMethod"]); err != nil {
		return nil, err
	}
	shape.signatureMethod = info["SignatureMethod"].SelectAttrValue("Algorithm", "")
	if err := checkAlgorithm("SignatureMethod", shape.signatureMethod, strongSignatureMethods, algRSASHA1, allowSHA1); err != nil {
		return nil, err
	}
	if len(info["SignatureMethod"].ChildElements()) > 0 {
		return nil, fail(ReasonSignatureShape, "ds:SignatureMethod has child elements")
	}
	refs := children["SignedInfo"].SelectElements("Reference")
	if len(refs) != 1 {
		return nil, fail(ReasonBadReference, "ds:SignedInfo has %d References, want exactly one", len(refs))
	}
	if shape.idAttr, err = checkReferenceURI(root, refs[0]); err != nil {
		return nil, err
	}
	if shape.digestMethod, err = checkReference(refs[0], allowSHA1); err != nil {
		return nil, err
	}
	return shape, nil
}

// refuseInside rejects ds:Object and RetrievalMethod anywhere in the signature.
func refuseInside(sig *etree.Element) error {
	var err error
	walk(sig, func(el *etree.Element) {
		switch {
		case err != nil:
		case isDsig(el, "Object"):
			err = fail(ReasonObjectNotAllowed, "ds:Object in the signature: content outside the signed root is refused")
		case isDsig(el, "RetrievalMethod"):
			err = fail(ReasonRetrievalMethod, "ds:RetrievalMethod in KeyInfo: keys are never fetched")
		}
	})
	return err
}

// dsigChildren checks that el's children are exactly the listed ds
// elements, in order; "X?" is optional, "X+" one or more.
func dsigChildren(el *etree.Element, name string, want ...string) (map[string]*etree.Element, error) {
	got := map[string]*etree.Element{}
	children := el.ChildElements()
	i := 0
	for _, w := range want {
		tag := strings.TrimRight(w, "?+")
		optional, many := strings.HasSuffix(w, "?"), strings.HasSuffix(w, "+")
		if i >= len(children) || !isDsig(children[i], tag) {
			if optional {
				continue
			}
			return nil, fail(ReasonSignatureShape, "%s lacks ds:%s where expected", name, tag)
		}
		got[tag] = children[i]
		i++
		for many && i < len(children) && isDsig(children[i], tag) {
			i++
		}
	}
	if i < len(children) {
		return nil, fail(ReasonSignatureShape, "%s has an unexpected <%s>", name, children[i].FullTag())
	}
	return got, nil
}

func checkCanonicalizationMethod(el *etree.Element) error {
	alg := el.SelectAttrValue("Algorithm", "")
	if !canonicalizations[alg] {
		return fail(ReasonUnsupportedAlg, "CanonicalizationMethod %q is not C14N 1.0 or exclusive C14N", alg)
	}
	if len(el.ChildElements()) > 0 {
		return fail(ReasonUnsupportedAlg, "CanonicalizationMethod with parameters (InclusiveNamespaces) is not supported")
	}
	return nil
}

// checkAlgorithm accepts strong algorithms, and the SHA-1 one only if allowed.
func checkAlgorithm(what, alg string, strong map[string]bool, sha1 string, allowSHA1 bool) error {
	switch {
	case strong[alg]:
		return nil
	case alg == sha1 && allowSHA1:
		return nil
	case alg == sha1:
		return fail(ReasonSHA1NotAllowed, "%s is SHA-1 (%s) and allow_sha1 is off", what, alg)
	}
	return fail(ReasonUnsupportedAlg, "%s %q is not supported (RSA with SHA-256, SHA-384 or SHA-512)", what, alg)
}

// checkReferenceURI requires the Reference to point at the whole document
// ("") or at the root's Id, and returns the Id attribute's name.
func checkReferenceURI(root, ref *etree.Element) (string, error) {
	uriAttr := ref.SelectAttr("URI")
	if uriAttr == nil {
		return "", fail(ReasonBadReference, "Reference has no URI")
	}
	if uriAttr.Value == "" {
		return "ID", nil
	}
	id, ok := strings.CutPrefix(uriAttr.Value, "#")
	if !ok || id == "" {
		return "", fail(ReasonBadReference, "Reference URI %q is neither \"\" nor a same-document #Id", uriAttr.Value)
	}
	for _, name := range idAttributes {
		if root.SelectAttrValue(name, "") == id {
			if n := countIDs(root, id); n > 1 {
				return "", fail(ReasonDuplicateID, "Id %q is carried by %d elements", id, n)
			}
			return name, nil
		}
	}
	return "", fail(ReasonBadReference, "Reference URI %q does not name the root <%s>", uriAttr.Value, root.FullTag())
}

func countIDs(root *etree.Element, id string) int {
	n := 0
	walk(root, func(el *etree.Element) {
		for _, a := range el.Attr {
			if a.Value == id && a.Space == "" && (a.Key == "Id" || a.Key == "ID" || a.Key == "id") {
				n++
			}
		}
	})
	return n
}

// checkReference checks transforms and digest method; it returns the latter.
func checkReference(ref *etree.Element, allowSHA1 bool) (string, error) {
	parts, err := dsigChildren(ref, "ds:Reference", "Transforms", "DigestMethod", "DigestValue")
	if err != nil {
		return "", err
	}
	if err := checkTransforms(parts["Transforms"]); err != nil {
		return "", err
	}
	digest := parts["DigestMethod"].SelectAttrValue("Algorithm", "")
	if err := checkAlgorithm("DigestMethod", digest, strongDigestMethods, algSHA1, allowSHA1); err != nil {
		return "", err
	}
	return digest, nil
}

// checkTransforms accepts exactly enveloped-signature plus one canonicalization.
func checkTransforms(transforms *etree.Element) error {
	list := transforms.ChildElements()
	if len(list) != 2 {
		return fail(ReasonBadTransforms, "%d transforms, want enveloped-signature plus one canonicalization", len(list))
	}
	enveloped, c14n := 0, 0
	for _, t := range list {
		if !isDsig(t, "Transform") {
			return fail(ReasonBadTransforms, "unexpected <%s> in ds:Transforms", t.FullTag())
		}
		alg := t.SelectAttrValue("Algorithm", "")
		switch {
		case alg == algEnvelope:
			enveloped++
		case canonicalizations[alg]:
			c14n++
		default:
			return fail(ReasonBadTransforms, "transform %q is not allowed", alg)
		}
		if err := checkTransformParams(t, alg); err != nil {
			return err
		}
	}
	if enveloped != 1 || c14n != 1 {
		return fail(ReasonBadTransforms, "want one enveloped-signature and one canonicalization transform")
	}
	return nil
}

// checkTransformParams allows only exclusive C14N's InclusiveNamespaces.
func checkTransformParams(t *etree.Element, alg string) error {
	for _, p := range t.ChildElements() {
		exc := alg == algExcC14n || alg == algExcC14nComments
		if !exc || p.Tag != "InclusiveNamespaces" || p.NamespaceURI() != excC14nNS {
			return fail(ReasonBadTransforms, "transform %q has an unexpected parameter <%s>", alg, p.FullTag())
		}
	}
	return nil
}

// namedKey is a public key found in KeyInfo, with a description for errors.
type namedKey struct {
	pub  *rsa.PublicKey
	what string
}

// keyInfoKeys returns the keys KeyInfo names, from X509Certificate and
// RSAKeyValue. Other KeyInfo content is ignored: it never grants trust.
func keyInfoKeys(keyInfo *etree.Element) ([]namedKey, error) {
	var keys []namedKey
	for _, el := range keyInfo.FindElements(".//X509Certificate") {
		key, err := keyFromCertificate(el.Text())
		if err != nil {
			return nil, err
		}
		keys = append(keys, key)
	}
	for _, el := range keyInfo.FindElements(".//KeyValue/*") {
		key, err := keyFromKeyValue(el)
		if err != nil {
			return nil, err
		}
		keys = append(keys, key)
	}
	return keys, nil
}

func keyFromCertificate(text string) (namedKey, error) {
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(text), ""))
	if err != nil {
		return namedKey{}, fail(ReasonUntrustedKey, "KeyInfo X509Certificate is not base64: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return namedKey{}, fail(ReasonUntrustedKey, "KeyInfo X509Certificate does not parse: %w", err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return namedKey{}, fail(ReasonUntrustedKey, "KeyInfo certificate %s has a %T key", describeCert(cert), cert.PublicKey)
	}
	return namedKey{pub: pub, what: "certificate " + describeCert(cert)}, nil
}

func keyFromKeyValue(el *etree.Element) (namedKey, error) {
	if el.Tag != "RSAKeyValue" {
		return namedKey{}, fail(ReasonUntrustedKey, "KeyInfo KeyValue <%s> is not an RSA key", el.FullTag())
	}
	n, errN := base64Int(el.SelectElement("Modulus"))
	e, errE := base64Int(el.SelectElement("Exponent"))
	if errN != nil || errE != nil || !e.IsInt64() {
		return namedKey{}, fail(ReasonUntrustedKey, "KeyInfo RSAKeyValue is malformed")
	}
	pub := &rsa.PublicKey{N: n, E: int(e.Int64())}
	return namedKey{pub: pub, what: fmt.Sprintf("an RSAKeyValue (%d-bit modulus)", n.BitLen())}, nil
}

func base64Int(el *etree.Element) (*big.Int, error) {
	if el == nil {
		return nil, fmt.Errorf("missing")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(el.Text()), ""))
	if err != nil {
		return nil, err
	}
	return new(big.Int).SetBytes(raw), nil
}

// Fingerprint is the hex SHA-256 of a certificate's DER, as operators see it.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func describeCert(c *x509.Certificate) string {
	return fmt.Sprintf("%q (sha256 %s)", c.Subject.String(), Fingerprint(c))
}

func describeCerts(certs []*x509.Certificate) string {
	parts := make([]string, len(certs))
	for i, c := range certs {
		parts[i] = describeCert(c)
	}
	return strings.Join(parts, ", ")
}

package policyguard

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"
	"github.com/russellhaering/goxmldsig/etreeutils"
)

// fastResign verifies and re-signs in one pass over the bytes, for the
// common case: Reference URI "", enveloped plus exclusive C14N, SHA-256.
// It parses only the ds:Signature into a tree (goxmldsig canonicalizes the
// SignedInfo), canonicalizes the content once, and signs those very bytes:
// what is forwarded is exactly what was digested and matched the manager's
// signed DigestValue. It returns errDecline for anything else.
func (v *Verifier) fastResign(doc []byte, s *Signer) ([]byte, error) {
	if err := prescan(doc, v.limits()); err != nil {
		return nil, err
	}
	cd, err := canonicalize(doc)
	if err != nil {
		return nil, err
	}
	if cd.sigEnd == 0 {
		return nil, errDecline
	}
	sig, err := parseSignature(doc[cd.sigStart:cd.sigEnd], cd.rootNS)
	if err != nil {
		return nil, err
	}
	shape, err := checkSignature(sig.Parent(), sig, v.opts.AllowSHA1)
	if err != nil || !fastEligible(sig) {
		return nil, errDecline
	}
	order, err := v.trustOrder(shape.keyInfo)
	if err != nil {
		return nil, err
	}
	cert, signedDigest, err := verifySignedInfo(sig, shape.signatureMethod, order)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(cd.canonical)
	if subtle.ConstantTimeCompare(digest[:], signedDigest) != 1 {
		return nil, fail(ReasonDigestMismatch, "signed content was changed: its digest does not match the DigestValue signed by %s", describeCert(cert))
	}
	if err := v.checkValidity(cert); err != nil {
		return nil, err
	}
	return s.signCanonicalDigest(cd.canonical, digest[:])
}

// parseSignature parses the signature's bytes under a stand-in root that
// carries the real root's namespace declarations.
func parseSignature(raw []byte, rootNS []rawAttr) (*etree.Element, error) {
	var b bytes.Buffer
	b.WriteString("<root")
	for _, a := range rootNS {
		b.WriteByte(' ')
		b.Write(a.name)
		b.WriteString(`="`)
		b.Write(a.value)
		b.WriteByte('"')
	}
	b.WriteByte('>')
	b.Write(raw)
	b.WriteString("</root>")
	tree := etree.NewDocument()
	if err := tree.ReadFromBytes(b.Bytes()); err != nil {
		return nil, errDecline
	}
	children := tree.Root().ChildElements()
	if len(children) != 1 {
		return nil, errDecline
	}
	return children[0], nil
}

// fastEligible checks what the fast path assumes beyond the shared policy.
func fastEligible(sig *etree.Element) bool {
	info := sig.SelectElement("SignedInfo")
	ref := info.SelectElement("Reference")
	if info.SelectElement("CanonicalizationMethod").SelectAttrValue("Algorithm", "") != algExcC14n ||
		ref.SelectAttrValue("URI", "-") != "" ||
		ref.SelectElement("DigestMethod").SelectAttrValue("Algorithm", "") != algSHA256 {
		return false
	}
	for _, t := range ref.SelectElement("Transforms").ChildElements() {
		alg := t.SelectAttrValue("Algorithm", "")
		if (alg != algEnvelope && alg != algExcC14n) || len(t.ChildElements()) > 0 {
			return false
		}
	}
	return true
}

var signatureAlgorithms = map[string]x509.SignatureAlgorithm{
	algRSASHA1:   x509.SHA1WithRSA,
	algRSASHA256: x509.SHA256WithRSA,
	algRSASHA384: x509.SHA384WithRSA,
	algRSASHA512: x509.SHA512WithRSA,
}

// verifySignedInfo checks SignatureValue over the canonical SignedInfo with
// the pinned certificates in order, and returns the DigestValue read back
// from the verified bytes, never from the tree.
func verifySignedInfo(sig *etree.Element, method string, order []*x509.Certificate) (*x509.Certificate, []byte, error) {
	info := sig.SelectElement("SignedInfo")
	ctx, err := etreeutils.NSBuildParentContext(info)
	if err != nil {
		return nil, nil, errDecline
	}
	detached, err := etreeutils.NSDetatch(ctx, info)
	if err != nil {
		return nil, nil, errDecline
	}
	canonical, err := dsig.MakeC14N10ExclusiveCanonicalizerWithPrefixList("").Canonicalize(detached)
	if err != nil {
		return nil, nil, errDecline
	}
	value, err := base64.StdEncoding.DecodeString(strings.TrimSpace(sig.SelectElement("SignatureValue").Text()))
	if err != nil {
		return nil, nil, errDecline
	}
	for _, cert := range order {
		if cert.CheckSignature(signatureAlgorithms[method], canonical, value) == nil {
			digest, err := signedDigestValue(canonical)
			return cert, digest, err
		}
	}
	return nil, nil, fail(ReasonUntrustedKey, "SignatureValue does not verify with any pinned certificate (%s)", describeCerts(order))
}

// signedDigestValue reads the Reference of verified SignedInfo bytes and
// checks it is still the shape the fast path handles.
func signedDigestValue(signedInfo []byte) ([]byte, error) {
	tree := etree.NewDocument()
	if err := tree.ReadFromBytes(signedInfo); err != nil {
		return nil, errDecline
	}
	refs := tree.Root().SelectElements("Reference")
	if len(refs) != 1 || refs[0].SelectAttrValue("URI", "-") != "" {
		return nil, errDecline
	}
	dv := refs[0].SelectElement("DigestValue")
	if dv == nil {
		return nil, errDecline
	}
	digest, err := base64.StdEncoding.DecodeString(strings.TrimSpace(dv.Text()))
	if err != nil || len(digest) != sha256.Size {
		return nil, errDecline
	}
	return digest, nil
}

// isDecline reports whether err only means "use the general path".
func isDecline(err error) bool { return errors.Is(err, errDecline) }

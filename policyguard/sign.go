package policyguard

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"
)

// Signer signs policy documents with the gateway's key: enveloped,
// exclusive C14N, RSA-SHA256, the certificate in KeyInfo. The key is a
// crypto.Signer so that an HSM or KMS can hold it.
type Signer struct {
	key     crypto.Signer
	cert    *x509.Certificate
	keyID   string
	certB64 string
}

// NewSigner checks that key is RSA 2048, 3072 or 4096 bits and matches cert.
func NewSigner(key crypto.Signer, cert *x509.Certificate) (*Signer, error) {
	if key == nil || cert == nil {
		return nil, errors.New("signer needs both a key and a certificate")
	}
	pub, ok := key.Public().(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("signing key is %T: only RSA 2048, 3072 or 4096 is supported (goxmldsig's ECDSA signatures do not interoperate)", key.Public())
	}
	if bits := pub.N.BitLen(); bits != 2048 && bits != 3072 && bits != 4096 {
		return nil, fmt.Errorf("signing key is RSA-%d: want 2048, 3072 or 4096 bits", bits)
	}
	if !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("signing key does not match certificate %s", describeCert(cert))
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return &Signer{
		key:     key,
		cert:    cert,
		keyID:   hex.EncodeToString(sum[:16]),
		certB64: base64.StdEncoding.EncodeToString(cert.Raw),
	}, nil
}

// KeyID names the key: hex of the first 16 bytes of its SPKI's SHA-256.
func (s *Signer) KeyID() string { return s.keyID }

// Cert returns the signing certificate.
func (s *Signer) Cert() *x509.Certificate { return s.cert }

// Sign returns the serialized document: root in exclusive canonical form,
// with an enveloped signature as its last child. Signatures already directly
// under root are replaced; root itself is not modified.
func (s *Signer) Sign(root *etree.Element) ([]byte, error) {
	if root == nil {
		return nil, errors.New("sign: no root element")
	}
	el := root.Copy()
	if err := dropSignatures(el); err != nil {
		return nil, err
	}
	return s.signOwned(el)
}

// dropSignatures removes ds:Signature children of root and refuses
// signatures deeper down, which would make the output ambiguous.
func dropSignatures(root *etree.Element) error {
	for _, child := range root.ChildElements() {
		if isDsig(child, "Signature") {
			root.RemoveChild(child)
		}
	}
	var deep error
	walk(root, func(el *etree.Element) {
		if deep == nil && isDsig(el, "Signature") {
			deep = fmt.Errorf("sign: <%s> holds a ds:Signature below the root; refusing to sign an ambiguous document", el.Parent().FullTag())
		}
	})
	return deep
}

// signOwned signs el, which it may modify. It canonicalizes once: the
// canonical bytes are both what is digested and the body of the output,
// so the SignedInfo is built here rather than by goxmldsig, which would
// canonicalize and copy the tree again.
func (s *Signer) signOwned(el *etree.Element) ([]byte, error) {
	canonical, err := dsig.MakeC14N10ExclusiveCanonicalizerWithPrefixList("").Canonicalize(el)
	if err != nil {
		return nil, fmt.Errorf("sign: canonicalize <%s>: %w", el.FullTag(), err)
	}
	return s.signCanonical(canonical)
}

// signCanonical signs a document already in exclusive canonical form.
func (s *Signer) signCanonical(canonical []byte) ([]byte, error) {
	digest := sha256.Sum256(canonical)
	return s.signCanonicalDigest(canonical, digest[:])
}

// signCanonicalDigest signs canonical bytes whose SHA-256 is digest.
func (s *Signer) signCanonicalDigest(canonical, digest []byte) ([]byte, error) {
	end := bytes.LastIndex(canonical, []byte("</"))
	if end < 0 {
		return nil, errors.New("sign: canonical form has no end tag")
	}
	signedInfo := buildSignedInfo(digest)
	sum := sha256.Sum256(signedInfo)
	value, err := s.key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: key %s: %w", s.keyID, err)
	}
	var out bytes.Buffer
	out.Grow(len(canonical) + len(signedInfo) + len(s.certB64) + 1024)
	out.Write(canonical[:end])
	out.WriteString(`<ds:Signature xmlns:ds="` + dsigNS + `">`)
	out.Write(signedInfo)
	out.WriteString(`<ds:SignatureValue>`)
	out.WriteString(base64.StdEncoding.EncodeToString(value))
	out.WriteString(`</ds:SignatureValue><ds:KeyInfo><ds:X509Data><ds:X509Certificate>`)
	out.WriteString(s.certB64)
	out.WriteString(`</ds:X509Certificate></ds:X509Data></ds:KeyInfo></ds:Signature>`)
	out.Write(canonical[end:])
	return out.Bytes(), nil
}

// buildSignedInfo returns the SignedInfo in its exclusive canonical form,
// which is also how it is written into the document.
func buildSignedInfo(digest []byte) []byte {
	return []byte(`<ds:SignedInfo xmlns:ds="` + dsigNS + `">` +
		`<ds:CanonicalizationMethod Algorithm="` + algExcC14n + `"></ds:CanonicalizationMethod>` +
		`<ds:SignatureMethod Algorithm="` + algRSASHA256 + `"></ds:SignatureMethod>` +
		`<ds:Reference URI="">` +
		`<ds:Transforms>` +
		`<ds:Transform Algorithm="` + algEnvelope + `"></ds:Transform>` +
		`<ds:Transform Algorithm="` + algExcC14n + `"></ds:Transform>` +
		`</ds:Transforms>` +
		`<ds:DigestMethod Algorithm="` + algSHA256 + `"></ds:DigestMethod>` +
		`<ds:DigestValue>` + base64.StdEncoding.EncodeToString(digest) + `</ds:DigestValue>` +
		`</ds:Reference>` +
		`</ds:SignedInfo>`)
}

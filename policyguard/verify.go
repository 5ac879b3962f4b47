package policyguard

import (
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"
)

// Defaults for VerifyOptions' zero values.
const (
	DefaultMaxBytes    = 16 << 20
	DefaultMaxDepth    = 256
	DefaultMaxElements = 250_000
)

// VerifyOptions tune the verifier's policy. The zero value is the strict
// default: SHA-256 or stronger, certificate validity enforced, 16 MiB.
type VerifyOptions struct {
	// AllowSHA1 accepts RSA-SHA1 signatures and SHA-1 digests, for managers
	// installed before SHA-256 certificates existed.
	AllowSHA1 bool
	// IgnoreExpiry accepts pinned certificates outside their validity dates;
	// legacy self-signed certificates are often expired.
	IgnoreExpiry bool
	// MaxBytes bounds the document size (default 16 MiB).
	MaxBytes int64
	// MaxDepth bounds element nesting (default 256).
	MaxDepth int
	// MaxElements bounds the number of elements (default 250000).
	MaxElements int
	// Now is the clock for certificate validity (default time.Now).
	Now func() time.Time
}

// Verifier checks enveloped XML-DSig signatures against pinned certificates.
// It is safe for concurrent use.
type Verifier struct {
	pinned []*x509.Certificate
	opts   VerifyOptions
}

// Verified is the outcome of a successful verification.
type Verified struct {
	// Root is the element goxmldsig digested, rebuilt from the canonical
	// bytes it hashed, without the signature. Nothing else of the input may
	// be used.
	Root *etree.Element
	// Cert is the pinned certificate whose key verified the signature.
	Cert *x509.Certificate
	// SignatureMethod and DigestMethod are the algorithm URIs the manager used.
	SignatureMethod, DigestMethod string
}

// NewVerifier returns a verifier that trusts only the pinned certificates,
// which must hold RSA keys.
func NewVerifier(pinned []*x509.Certificate, opts VerifyOptions) (*Verifier, error) {
	if err := checkPinned(pinned); err != nil {
		return nil, err
	}
	opts, err := withDefaults(opts)
	if err != nil {
		return nil, err
	}
	return &Verifier{pinned: append([]*x509.Certificate(nil), pinned...), opts: opts}, nil
}

func checkPinned(pinned []*x509.Certificate) error {
	if len(pinned) == 0 {
		return errors.New("no pinned certificate: at least one is required")
	}
	for i, c := range pinned {
		if c == nil {
			return fmt.Errorf("pinned certificate %d is nil", i)
		}
		if _, ok := c.PublicKey.(*rsa.PublicKey); !ok {
			return fmt.Errorf("pinned certificate %d (%s) has a %T key: only RSA is supported", i, c.Subject, c.PublicKey)
		}
	}
	return nil
}

func withDefaults(o VerifyOptions) (VerifyOptions, error) {
	if o.MaxBytes < 0 || o.MaxDepth < 0 || o.MaxElements < 0 {
		return o, fmt.Errorf("negative limit in VerifyOptions (MaxBytes %d, MaxDepth %d, MaxElements %d)", o.MaxBytes, o.MaxDepth, o.MaxElements)
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxDepth == 0 {
		o.MaxDepth = DefaultMaxDepth
	}
	if o.MaxElements == 0 {
		o.MaxElements = DefaultMaxElements
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

func (v *Verifier) limits() limits {
	return limits{maxBytes: v.opts.MaxBytes, maxDepth: v.opts.MaxDepth, maxElements: v.opts.MaxElements}
}

// Verify checks doc and returns what was signed. Every failure is a
// *VerifyError.
func (v *Verifier) Verify(doc []byte) (*Verified, error) {
	if err := prescan(doc, v.limits()); err != nil {
		return nil, err
	}
	tree := etree.NewDocument()
	if err := tree.ReadFromBytes(doc); err != nil {
		return nil, fail(ReasonMalformedXML, "%w", err)
	}
	root := tree.Root()
	if root == nil {
		return nil, fail(ReasonMalformedXML, "document has no root element")
	}
	sig, err := findSignature(root)
	if err != nil {
		return nil, err
	}
	shape, err := checkSignature(root, sig, v.opts.AllowSHA1)
	if err != nil {
		return nil, err
	}
	order, err := v.trustOrder(shape.keyInfo)
	if err != nil {
		return nil, err
	}
	prepareForValidation(root, sig, shape.keyInfo)
	return v.validate(root, shape, order)
}

// prepareForValidation drops KeyInfo (never trusted, and outside the signed
// content) and moves the signature to be the root's first child, so that
// goxmldsig's search, which gives up after 1000 elements (goxmldsig #202),
// finds it at once in large documents. The enveloped-signature transform
// removes the signature wherever it sits, so the digest is unchanged.
func prepareForValidation(root, sig, keyInfo *etree.Element) {
	if keyInfo != nil {
		sig.RemoveChild(keyInfo)
	}
	root.RemoveChild(sig)
	root.InsertChildAt(0, sig)
}

// goxmldsig reports a digest mismatch with this message, after the
// SignedInfo signature itself verified.
const goxmldsigDigestMismatch = "Signature could not be verified"

// validate runs goxmldsig against each pinned certificate in order.
func (v *Verifier) validate(root *etree.Element, shape *signatureShape, order []*x509.Certificate) (*Verified, error) {
	for _, cert := range order {
		ctx := dsig.NewDefaultValidationContext(&dsig.MemoryX509CertificateStore{Roots: []*x509.Certificate{cert}})
		ctx.IdAttribute = shape.idAttr
		// Validity is judged below with its own reason; goxmldsig gets a
		// clock inside the window so that it only judges the signature.
		ctx.Clock = dsig.NewFakeClockAt(cert.NotBefore)
		signed, err := ctx.Validate(root)
		switch {
		case err == nil:
			if err := v.checkValidity(cert); err != nil {
				return nil, err
			}
			return &Verified{Root: signed, Cert: cert, SignatureMethod: shape.signatureMethod, DigestMethod: shape.digestMethod}, nil
		case errors.Is(err, rsa.ErrVerification):
			continue
		case err.Error() == goxmldsigDigestMismatch:
			return nil, fail(ReasonDigestMismatch, "signed content was changed: its digest does not match the DigestValue signed by %s", describeCert(cert))
		default:
			return nil, fail(ReasonSignatureShape, "goxmldsig: %w", err)
		}
	}
	return nil, fail(ReasonUntrustedKey, "SignatureValue does not verify with any pinned certificate (%s)", describeCerts(v.pinned))
}

func (v *Verifier) checkValidity(cert *x509.Certificate) error {
	if v.opts.IgnoreExpiry {
		return nil
	}
	now := v.opts.Now()
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fail(ReasonExpiredCert, "pinned certificate %s is valid from %s to %s, not now (%s)",
			describeCert(cert), cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	return nil
}

// trustOrder checks the keys KeyInfo names against the pinned ones and
// returns the pinned certificates, the one KeyInfo names first. A key in
// KeyInfo that is not pinned is refused outright.
func (v *Verifier) trustOrder(keyInfo *etree.Element) ([]*x509.Certificate, error) {
	if keyInfo == nil {
		return v.pinned, nil
	}
	keys, err := keyInfoKeys(keyInfo)
	if err != nil {
		return nil, err
	}
	order := make([]*x509.Certificate, 0, len(v.pinned))
	for _, key := range keys {
		i := v.pinnedIndex(key.pub)
		if i < 0 {
			return nil, fail(ReasonUntrustedKey, "KeyInfo carries %s, which is not pinned; pinned: %s", key.what, describeCerts(v.pinned))
		}
		order = appendOnce(order, v.pinned[i])
	}
	for _, c := range v.pinned {
		order = appendOnce(order, c)
	}
	return order, nil
}

func (v *Verifier) pinnedIndex(key *rsa.PublicKey) int {
	for i, c := range v.pinned {
		if key.Equal(c.PublicKey) {
			return i
		}
	}
	return -1
}

func appendOnce(list []*x509.Certificate, c *x509.Certificate) []*x509.Certificate {
	for _, have := range list {
		if have == c {
			return list
		}
	}
	return append(list, c)
}

// ParseDocument applies the same size, depth, element-count and DOCTYPE
// pre-checks as Verify, then parses doc. It is for documents about to be
// signed, such as the input of `legacygate policy sign`.
func ParseDocument(doc []byte, opts VerifyOptions) (*etree.Element, error) {
	opts, err := withDefaults(opts)
	if err != nil {
		return nil, err
	}
	if err := prescan(doc, limits{maxBytes: opts.MaxBytes, maxDepth: opts.MaxDepth, maxElements: opts.MaxElements}); err != nil {
		return nil, err
	}
	tree := etree.NewDocument()
	if err := tree.ReadFromBytes(doc); err != nil {
		return nil, fail(ReasonMalformedXML, "%w", err)
	}
	return tree.Root(), nil
}

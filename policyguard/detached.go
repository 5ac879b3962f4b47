package policyguard

import (
	"crypto"
	"crypto/x509"
	"errors"

	"github.com/smallstep/pkcs7"
)

// DetachedVerifier checks CMS/PKCS#7 detached signatures over non-XML
// packages. The signer certificate comes from the .p7s, but it is trusted
// only if it has a pinned certificate's key or a pinned certificate signed
// it. It is safe for concurrent use.
type DetachedVerifier struct {
	pinned []*x509.Certificate
	opts   VerifyOptions
}

// NewDetachedVerifier returns a verifier that trusts only the pinned certificates.
func NewDetachedVerifier(pinned []*x509.Certificate, opts VerifyOptions) (*DetachedVerifier, error) {
	if err := checkPinned(pinned); err != nil {
		return nil, err
	}
	opts, err := withDefaults(opts)
	if err != nil {
		return nil, err
	}
	return &DetachedVerifier{pinned: append([]*x509.Certificate(nil), pinned...), opts: opts}, nil
}

// Verify checks that p7s is a valid detached signature over content by a
// trusted signer. Every failure is a *VerifyError.
func (v *DetachedVerifier) Verify(content, p7s []byte) error {
	if int64(len(content)) > v.opts.MaxBytes || int64(len(p7s)) > v.opts.MaxBytes {
		return fail(ReasonTooLarge, "content %d bytes, signature %d bytes, limit %d", len(content), len(p7s), v.opts.MaxBytes)
	}
	p7, err := pkcs7.Parse(p7s)
	if err != nil {
		return fail(ReasonMalformedCMS, "%w", err)
	}
	if len(p7.Signers) != 1 {
		return fail(ReasonMultipleSignatures, "CMS has %d signers, want exactly one", len(p7.Signers))
	}
	if len(p7.Content) > 0 {
		return fail(ReasonMalformedCMS, "CMS signature is not detached: it embeds %d bytes of content", len(p7.Content))
	}
	if err := v.checkDigest(p7); err != nil {
		return err
	}
	signer := p7.GetOnlySigner()
	if signer == nil {
		return fail(ReasonUntrustedKey, "CMS carries no certificate for its signer")
	}
	anchor, err := v.anchorFor(signer)
	if err != nil {
		return err
	}
	p7.Content = content
	if err := p7.Verify(); err != nil {
		var mismatch *pkcs7.MessageDigestMismatchError
		if errors.As(err, &mismatch) {
			return fail(ReasonDigestMismatch, "content does not match the signed digest: %w", err)
		}
		return fail(ReasonUntrustedKey, "CMS signature by %s does not verify: %w", describeCert(signer), err)
	}
	return v.checkCMSValidity(signer, anchor)
}

func (v *DetachedVerifier) checkDigest(p7 *pkcs7.PKCS7) error {
	oid := p7.Signers[0].DigestAlgorithm.Algorithm
	switch {
	case oid.Equal(pkcs7.OIDDigestAlgorithmSHA256), oid.Equal(pkcs7.OIDDigestAlgorithmSHA384), oid.Equal(pkcs7.OIDDigestAlgorithmSHA512):
		return nil
	case oid.Equal(pkcs7.OIDDigestAlgorithmSHA1):
		if v.opts.AllowSHA1 {
			return nil
		}
		return fail(ReasonSHA1NotAllowed, "CMS digest is SHA-1 and allow_sha1 is off")
	}
	return fail(ReasonUnsupportedAlg, "CMS digest algorithm %s is not supported", oid)
}

// anchorFor returns the pinned certificate that vouches for signer.
func (v *DetachedVerifier) anchorFor(signer *x509.Certificate) (*x509.Certificate, error) {
	for _, p := range v.pinned {
		if samePublicKey(p, signer) {
			return p, nil
		}
	}
	for _, p := range v.pinned {
		if signer.CheckSignatureFrom(p) == nil {
			return p, nil
		}
	}
	return nil, fail(ReasonUntrustedKey, "CMS signer %s is neither pinned nor issued by a pinned certificate (%s)", describeCert(signer), describeCerts(v.pinned))
}

func samePublicKey(a, b *x509.Certificate) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	k, ok := a.PublicKey.(equaler)
	return ok && k.Equal(b.PublicKey)
}

func (v *DetachedVerifier) checkCMSValidity(signer, anchor *x509.Certificate) error {
	if v.opts.IgnoreExpiry {
		return nil
	}
	now := v.opts.Now()
	for _, c := range []*x509.Certificate{signer, anchor} {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return fail(ReasonExpiredCert, "certificate %s is valid from %s to %s, not now", describeCert(c), c.NotBefore, c.NotAfter)
		}
	}
	return nil
}

// Package policyguard verifies policy payloads that a legacy manager signed
// (enveloped W3C XML-DSig, or a detached CMS signature) against pinned
// certificates, under a strict algorithm and shape policy, and re-signs them
// with the gateway's key.
//
// The rules that matter for security:
//
//   - Trust comes only from the pinned certificates. KeyInfo never grants
//     trust: a certificate or key value in KeyInfo that is not one of the pinned
//     keys is rejected ("untrusted_key"), and a pinned one only chooses which
//     pinned certificate to try first.
//   - Everything goxmldsig leaves to its caller is checked before it runs:
//     one ds:Signature, a direct child of the root, one Reference to the root,
//     enveloped-signature plus one canonicalization, no ds:Object, no
//     RetrievalMethod, no DOCTYPE, SHA-256 or stronger unless SHA-1 is allowed,
//     and bounds on size, depth and element count checked by a byte scan before
//     any tree is built.
//   - Only the element goxmldsig returns (rebuilt from the bytes it digested)
//     is used afterwards; the tree the manager sent is discarded. That is the
//     defence against signature wrapping and comment injection.
//
// Resigner takes a one-pass fast path for the common shape (Reference URI
// "", enveloped plus exclusive C14N, SHA-256): it canonicalizes the content
// once from the bytes, checks the SignedInfo (canonicalized by goxmldsig)
// against the pinned keys and the digest against the signed DigestValue,
// and signs those same canonical bytes. Anything else goes through
// goxmldsig. Both paths produce identical output; tests and FuzzResign
// compare them.
//
// Every verification failure is a *VerifyError whose Reason is a short stable
// token suitable as a metrics label.
package policyguard

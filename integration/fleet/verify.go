package fleet

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"
)

// dsigNS is the W3C XML-DSig namespace.
const dsigNS = "http://www.w3.org/2000/09/xmldsig#"

// The algorithms an XP-era SEPM client understands: RSA with SHA-1 or
// SHA-256. Anything else is refused, as such a client would.
var allowedSignatureMethods = map[string]bool{
	dsig.RSASHA1SignatureMethod:   true,
	dsig.RSASHA256SignatureMethod: true,
}

var allowedTransforms = map[dsig.AlgorithmID]bool{
	dsig.EnvelopedSignatureAltorithmId:                  true,
	dsig.CanonicalXML10ExclusiveAlgorithmId:             true,
	dsig.CanonicalXML10ExclusiveWithCommentsAlgorithmId: true,
	dsig.CanonicalXML10RecAlgorithmId:                   true,
	dsig.CanonicalXML10WithCommentsAlgorithmId:          true,
	dsig.CanonicalXML11AlgorithmId:                      true,
	dsig.CanonicalXML11WithCommentsAlgorithmId:          true,
}

// errSignature marks every verification failure, so callers can count them.
var errSignature = errors.New("signature verification failed")

// verifier checks enveloped XML-DSig signatures against one trusted
// certificate, the way a careful client does: goxmldsig with a store that
// holds only that certificate, plus checks on the document's shape. It is
// deliberately independent of legacygate's policyguard package, so the
// fleet can judge the gateway.
type verifier struct {
	cert *x509.Certificate
	id   certID
	ctx  *dsig.ValidationContext
}

func newVerifier(cert *x509.Certificate) *verifier {
	ctx := dsig.NewDefaultValidationContext(&dsig.MemoryX509CertificateStore{Roots: []*x509.Certificate{cert}})
	// SEPM clients keep using a pinned certificate after it expires: the
	// trust is in the key, not in the validity period. Validate at a
	// moment inside the period so an expired manager certificate still works.
	ctx.Clock = dsig.NewFakeClockAt(validMoment(cert))
	return &verifier{cert: cert, id: idOf(cert), ctx: ctx}
}

func validMoment(c *x509.Certificate) time.Time {
	now := time.Now()
	if now.After(c.NotBefore) && now.Before(c.NotAfter) {
		return now
	}
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2)
}

// verify parses body, checks that its root is <wantRoot> with exactly one
// enveloped signature over the whole element, and returns the element as
// signed (what goxmldsig digested), which is the only thing a caller may use.
func (v *verifier) verify(body []byte, wantRoot string) (*etree.Element, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(body); err != nil {
		return nil, fmt.Errorf("%w: malformed XML: %w", errSignature, err)
	}
	if err := rejectDirectives(doc); err != nil {
		return nil, fmt.Errorf("%w: %w", errSignature, err)
	}
	root := doc.Root()
	if root == nil || root.Tag != wantRoot {
		return nil, fmt.Errorf("%w: root element is not <%s>", errSignature, wantRoot)
	}
	sig, err := checkSignatureShape(root)
	if err != nil {
		return nil, fmt.Errorf("%w: <%s>: %w", errSignature, wantRoot, err)
	}
	// goxmldsig stops looking for the signature after 1000 elements
	// (goxmldsig #202), and a 100 KB policy has more. The
	// enveloped-signature transform removes the signature wherever it is,
	// so moving it first leaves the digest unchanged.
	root.RemoveChild(sig)
	root.InsertChildAt(0, sig)
	signed, err := v.ctx.Validate(root)
	if err != nil {
		return nil, fmt.Errorf("%w: <%s>: %w", errSignature, wantRoot, err)
	}
	if signed.Tag != wantRoot {
		return nil, fmt.Errorf("%w: signed element is <%s>, want <%s>", errSignature, signed.Tag, wantRoot)
	}
	return signed, nil
}

// checkSignatureShape requires exactly one ds:Signature directly under root,
// one Reference to the whole document ("" or "#" + the root's ID), only
// enveloped-signature and canonicalization transforms, and an RSA
// signature method the client knows. It returns the signature.
func checkSignatureShape(root *etree.Element) (*etree.Element, error) {
	var sig *etree.Element
	for _, el := range root.ChildElements() {
		if el.Tag == "Signature" && el.NamespaceURI() == dsigNS {
			if sig != nil {
				return nil, errors.New("more than one <Signature>")
			}
			sig = el
		}
	}
	if sig == nil {
		return nil, errors.New("no enveloped <Signature>")
	}
	if n := countSignatures(root); n != 1 {
		return nil, fmt.Errorf("%d XML-DSig <Signature> elements in the document, want 1", n)
	}
	info := sig.SelectElement("SignedInfo")
	if info == nil {
		return nil, errors.New("<Signature> has no <SignedInfo>")
	}
	method := info.SelectElement("SignatureMethod")
	if method == nil || !allowedSignatureMethods[method.SelectAttrValue("Algorithm", "")] {
		return nil, errors.New("signature method is missing or not rsa-sha1/rsa-sha256")
	}
	refs := info.SelectElements("Reference")
	if len(refs) != 1 {
		return nil, fmt.Errorf("%d <Reference> elements, want 1", len(refs))
	}
	uri := refs[0].SelectAttrValue("URI", "")
	if id := root.SelectAttrValue(dsig.DefaultIdAttr, ""); uri != "" && (id == "" || uri != "#"+id) {
		return nil, fmt.Errorf("reference URI %q does not name the root element", uri)
	}
	if tr := refs[0].SelectElement("Transforms"); tr != nil {
		for _, t := range tr.SelectElements("Transform") {
			if !allowedTransforms[dsig.AlgorithmID(t.SelectAttrValue("Algorithm", ""))] {
				return nil, fmt.Errorf("transform %q is not allowed", t.SelectAttrValue("Algorithm", ""))
			}
		}
	}
	return sig, nil
}

// countSignatures counts XML-DSig Signature elements anywhere under el
// (a policy's own <Signature> elements, such as IPS signatures, are in no
// namespace and do not count).
func countSignatures(el *etree.Element) int {
	n := 0
	for _, c := range el.ChildElements() {
		if c.Tag == "Signature" && c.NamespaceURI() == dsigNS {
			n++
		}
		n += countSignatures(c)
	}
	return n
}

// verdicts remembers recent verification results by (document hash,
// certificate). The same bytes checked against the same certificate always
// get the same answer, so with 100,000 clients fetching one profile the
// fleet verifies it once, not 100,000 times. Only the verdict is kept, not
// the document; bounded: when full, it is emptied.
type verdicts struct {
	mu    sync.Mutex
	max   int
	byKey map[verdictKey]error
}

type verdictKey struct {
	doc  [sha256.Size]byte
	cert certID
}

func newVerdicts(max int) *verdicts {
	return &verdicts{max: max, byKey: make(map[verdictKey]error)}
}

// check verifies body with v, or returns the remembered verdict.
func (c *verdicts) check(v *verifier, body []byte, wantRoot string) error {
	if c.max <= 0 {
		_, err := v.verify(body, wantRoot)
		return err
	}
	h := sha256.New()
	h.Write([]byte(wantRoot))
	h.Write([]byte{0})
	h.Write(body)
	key := verdictKey{cert: v.id}
	h.Sum(key.doc[:0])
	c.mu.Lock()
	err, ok := c.byKey[key]
	c.mu.Unlock()
	if ok {
		return err
	}
	_, err = v.verify(body, wantRoot)
	c.mu.Lock()
	if len(c.byKey) >= c.max {
		clear(c.byKey)
	}
	c.byKey[key] = err
	c.mu.Unlock()
	return err
}

// maxVerifiers bounds the verifiers kept; certificates only arrive in
// settings documents that passed verification, so a handful is normal.
const maxVerifiers = 64

// verifiers keeps one verifier per trusted certificate.
type verifiers struct {
	mu   sync.Mutex
	byID map[certID]*verifier
}

func (vs *verifiers) get(c *x509.Certificate) *verifier {
	id := idOf(c)
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if v, ok := vs.byID[id]; ok {
		return v
	}
	if vs.byID == nil || len(vs.byID) >= maxVerifiers {
		vs.byID = make(map[certID]*verifier)
	}
	v := newVerifier(c)
	vs.byID[id] = v
	return v
}

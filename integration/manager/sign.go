package manager

import (
	"bytes"
	"fmt"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"

	"github.com/legacygate/legacygate/integration/certs"
)

// Signature methods, by the names of the --sign flag.
const (
	SignRSASHA256 = "rsa-sha256"
	SignRSASHA1   = "rsa-sha1"
)

var signatureMethods = map[string]string{
	SignRSASHA256: dsig.RSASHA256SignatureMethod,
	SignRSASHA1:   dsig.RSASHA1SignatureMethod,
}

// signEnveloped parses an unsigned XML document and returns it with an
// enveloped XML-DSig signature over the root element: exclusive C14N, the
// digest and signature with the method's hash (SHA-1 for rsa-sha1, as old
// managers do), and the signing certificate in KeyInfo.
func signEnveloped(unsigned []byte, pair *certs.Pair, method string) ([]byte, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(unsigned); err != nil {
		return nil, fmt.Errorf("parsing document to sign: %w", err)
	}
	ctx, err := dsig.NewSigningContext(pair.Key, [][]byte{pair.Cert.Raw})
	if err != nil {
		return nil, fmt.Errorf("signing context: %w", err)
	}
	ctx.Canonicalizer = dsig.MakeC14N10ExclusiveCanonicalizerWithPrefixList("")
	if err := ctx.SetSignatureMethod(signatureMethods[method]); err != nil {
		return nil, fmt.Errorf("signature method %q: %w", method, err)
	}
	signed, err := ctx.SignEnveloped(doc.Root())
	if err != nil {
		return nil, fmt.Errorf("signing <%s>: %w", doc.Root().Tag, err)
	}
	out := etree.NewDocument()
	out.CreateProcInst("xml", `version="1.0" encoding="UTF-8"`)
	out.SetRoot(signed)
	var buf bytes.Buffer
	if _, err := out.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("serialising signed <%s>: %w", signed.Tag, err)
	}
	return buf.Bytes(), nil
}

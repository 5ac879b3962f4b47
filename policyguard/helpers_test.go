package policyguard

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"
)

// party is a key with its self-signed certificate.
type party struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate
}

var (
	partiesOnce sync.Once
	parties     map[string]*party
)

// testParty returns a cached party: "manager", "manager-next", "gateway",
// "attacker" or "expired".
func testParty(t testing.TB, name string) *party {
	t.Helper()
	partiesOnce.Do(func() {
		parties = map[string]*party{}
		now := time.Now()
		for _, spec := range []struct {
			name     string
			from, to time.Time
		}{
			{"manager", now.Add(-time.Hour), now.AddDate(1, 0, 0)},
			{"manager-next", now.Add(-time.Hour), now.AddDate(1, 0, 0)},
			{"gateway", now.Add(-time.Hour), now.AddDate(1, 0, 0)},
			{"attacker", now.Add(-time.Hour), now.AddDate(1, 0, 0)},
			{"expired", now.AddDate(-2, 0, 0), now.AddDate(-1, 0, 0)},
		} {
			parties[spec.name] = newParty(spec.name, spec.from, spec.to)
		}
	})
	p := parties[name]
	if p == nil {
		t.Fatalf("no test party %q", name)
	}
	return p
}

func newParty(cn string, from, to time.Time) *party {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             from,
		NotAfter:              to,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return &party{key: key, cert: cert}
}

func (p *party) signer(t testing.TB) *Signer {
	t.Helper()
	s, err := NewSigner(p.key, p.cert)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sepmProfile returns a SEPM-style <Profile> of at least size bytes.
func sepmProfile(size int) string {
	var b strings.Builder
	b.WriteString(`<Profile Checksum="8F1C2A" SerialNumber="A3AF-01/30/2012 23:50:54 284" LastModifiedTime="1327967454284">`)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "\n <AntiVirusPolicy Name=\"group-%d\" Enabled=\"1\">\n  <ScanSetting Key=\"scan.%d\" Value=\"C:\\Program Files &amp; data\"/>\n  <Description>policy %d for &lt;default&gt; group</Description>\n </AntiVirusPolicy>", i, i, i)
	}
	b.WriteString("\n</Profile>")
	return b.String()
}

// managerSignOptions say how the emulated manager signs.
type managerSignOptions struct {
	sha1      bool
	inclusive bool
	comments  bool
	withID    string // put this Id on the root and reference it
}

// managerSign signs doc as a manager would, with goxmldsig, putting the
// signature last and the certificate in KeyInfo.
func managerSign(t testing.TB, p *party, doc string, o managerSignOptions) []byte {
	t.Helper()
	tree := etree.NewDocument()
	if err := tree.ReadFromString(doc); err != nil {
		t.Fatal(err)
	}
	root := tree.Root()
	ctx, err := dsig.NewSigningContext(p.key, [][]byte{p.cert.Raw})
	if err != nil {
		t.Fatal(err)
	}
	ctx.Canonicalizer = dsig.MakeC14N10ExclusiveCanonicalizerWithPrefixList("")
	if o.inclusive {
		ctx.Canonicalizer = dsig.MakeC14N10RecCanonicalizer()
	}
	if o.comments {
		ctx.Canonicalizer = dsig.MakeC14N10ExclusiveWithCommentsCanonicalizerWithPrefixList("")
	}
	if o.sha1 {
		ctx.Hash = crypto.SHA1
	}
	if o.withID != "" {
		root.CreateAttr("Id", o.withID)
		ctx.IdAttribute = "Id"
	}
	signed, err := ctx.SignEnveloped(root)
	if err != nil {
		t.Fatal(err)
	}
	out := etree.NewDocument()
	out.SetRoot(signed)
	b, err := out.WriteToBytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newTestVerifier(t testing.TB, opts VerifyOptions, pinned ...string) *Verifier {
	t.Helper()
	var certs []*x509.Certificate
	for _, name := range pinned {
		certs = append(certs, testParty(t, name).cert)
	}
	v, err := NewVerifier(certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustRSA(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustECDSA(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func parseRoot(t testing.TB, doc []byte) *etree.Element {
	t.Helper()
	tree := etree.NewDocument()
	if err := tree.ReadFromBytes(doc); err != nil {
		t.Fatal(err)
	}
	return tree.Root()
}

func base64Cert(p *party) string { return base64.StdEncoding.EncodeToString(p.cert.Raw) }

package manager

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"

	"github.com/legacygate/legacygate/integration/certs"
)

// verifyGoxmldsig checks doc's enveloped signature against cert alone and
// returns the element the signature covers.
//
// goxmldsig v1.6.1 looks for the Signature with a depth-first walk limited
// to 1000 elements (etreeutils.NewDefaultNSContext), so a large profile
// whose signature is the root's last child fails with "traversal limit
// reached". The enveloped transform removes the Signature wherever it sits
// among the root's children, so moving it first changes no digested byte
// and lets the walk find it at once.
func verifyGoxmldsig(doc []byte, cert *x509.Certificate) (*etree.Element, error) {
	d := etree.NewDocument()
	if err := d.ReadFromBytes(doc); err != nil {
		return nil, err
	}
	root := d.Root()
	if sig := root.SelectElement("ds:Signature"); sig != nil {
		root.RemoveChild(sig)
		root.InsertChildAt(0, sig)
	}
	ctx := dsig.NewDefaultValidationContext(&dsig.MemoryX509CertificateStore{Roots: []*x509.Certificate{cert}})
	// goxmldsig checks the certificate's validity period; an expired
	// manager certificate is checked as of when it was valid.
	ctx.Clock = dsig.NewFakeClockAt(cert.NotBefore.Add(time.Hour))
	return ctx.Validate(d.Root())
}

// verifyXmlsec1 runs xmlsec1 on doc with cert as the only trusted certificate.
func verifyXmlsec1(t *testing.T, xmlsec1 string, doc []byte, cert *certs.Pair) error {
	t.Helper()
	dir := t.TempDir()
	docFile := filepath.Join(dir, "doc.xml")
	certFile := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(docFile, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, cert.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := cert.Cert.NotBefore.Add(time.Hour).UTC().Format("2006-01-02 15:04:05")
	out, err := exec.CommandContext(ctx, xmlsec1, "--verify", "--enabled-key-data", "x509",
		"--trusted-pem", certFile, "--verification-time", at, docFile).CombinedOutput()
	if err != nil {
		return &xmlsecError{err: err, out: string(out)}
	}
	return nil
}

type xmlsecError struct {
	err error
	out string
}

func (e *xmlsecError) Error() string { return e.err.Error() + ": " + e.out }

func TestSignedDocumentsVerifyAgainstSigningCert(t *testing.T) {
	xmlsec1 := needTool(t, "xmlsec1")
	tests := []struct {
		kind certs.Kind
		sign string
		size int
	}{
		{certs.Modern, SignRSASHA256, 100 << 10},
		{certs.Modern, SignRSASHA256, 1 << 20},
		{certs.SHA1, SignRSASHA1, 100 << 10},
		{certs.SHA1, SignRSASHA256, 8 << 10},
		{certs.CNOnly, SignRSASHA256, 8 << 10},
		{certs.Expired, SignRSASHA1, 8 << 10},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%d", tt.kind, tt.sign, tt.size), func(t *testing.T) {
			m := startManager(t, Config{Cert: tt.kind, Sign: tt.sign, ProfileSize: tt.size})
			c := testClient(tls.VersionTLS10, tls.VersionTLS12)
			base := "https://" + m.Addrs().HTTPS
			host := register(t, c, base)
			for _, action := range []string{ActionProfile, ActionSyLink} {
				doc := do(t, c, "GET", base+SecarsPath+"?action="+action+"&hostid="+host, nil, "").body
				el, err := verifyGoxmldsig(doc, m.SigningCert())
				if err != nil {
					t.Fatalf("%s: goxmldsig: %v", action, err)
				}
				if want := map[string]string{ActionProfile: "Profile", ActionSyLink: "ServerSettings"}[action]; el.Tag != want {
					t.Errorf("%s: signature covers <%s>, want <%s>", action, el.Tag, want)
				}
				wantMethod := signatureMethods[tt.sign]
				if !strings.Contains(string(doc), `Algorithm="`+wantMethod+`"`) {
					t.Errorf("%s: SignatureMethod is not %s", action, wantMethod)
				}
				if err := verifyXmlsec1(t, xmlsec1, doc, m.Pair()); err != nil {
					t.Errorf("%s: xmlsec1: %v", action, err)
				}
			}
		})
	}
}

func TestTamperedOrForeignSignatureFailsVerification(t *testing.T) {
	xmlsec1 := needTool(t, "xmlsec1")
	m := startManager(t, Config{ProfileSize: 16 << 10})
	profile := m.flavor.(*sepm).docs.Load().profile
	other := testPair(t, certs.SHA1)
	tests := []struct {
		name string
		doc  []byte
		cert *certs.Pair
	}{
		{"tampered rule", []byte(strings.Replace(string(profile), `Action="Allow"`, `Action="Block"`, 1)), m.Pair()},
		{"another manager's certificate", profile, other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := verifyGoxmldsig(tt.doc, tt.cert.Cert); err == nil {
				t.Error("goxmldsig accepted it")
			}
			if err := verifyXmlsec1(t, xmlsec1, tt.doc, tt.cert); err == nil {
				t.Error("xmlsec1 accepted it")
			}
		})
	}
}

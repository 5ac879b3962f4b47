package policyguard

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// requireTool returns the path of an external tool. It skips when the tool
// is missing, except under CI=true, where a missing tool is a failure.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required under CI=true: %v", name, err)
	}
	t.Skipf("%s not installed", name)
	return ""
}

// runTool runs an external tool with a time bound and returns its output.
func runTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// writeKeyPair writes p's key and certificate as PEM files in dir.
func writeKeyPair(t *testing.T, dir string, p *party) (keyFile, certFile string) {
	t.Helper()
	keyPEM, certPEM, err := EncodeKeyPair(p.key, p.cert)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, certFile = filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return keyFile, certFile
}

// xmlsecTemplate is a document with an empty signature for xmlsec1 to fill.
func xmlsecTemplate(body string) string {
	root := strings.TrimSuffix(body, "</Profile>")
	return root + `<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo>` +
		`<ds:CanonicalizationMethod Algorithm="` + algExcC14n + `"/>` +
		`<ds:SignatureMethod Algorithm="` + algRSASHA256 + `"/>` +
		`<ds:Reference URI=""><ds:Transforms><ds:Transform Algorithm="` + algEnvelope + `"/>` +
		`<ds:Transform Algorithm="` + algExcC14n + `"/></ds:Transforms>` +
		`<ds:DigestMethod Algorithm="` + algSHA256 + `"/><ds:DigestValue/></ds:Reference></ds:SignedInfo>` +
		`<ds:SignatureValue/><ds:KeyInfo><ds:X509Data><ds:X509Certificate/></ds:X509Data></ds:KeyInfo></ds:Signature>
</Profile>`
}

func TestXmlsec1SignedDocumentVerifiesHere(t *testing.T) {
	xmlsec := requireTool(t, "xmlsec1")
	manager := testParty(t, "manager")
	for _, size := range []int{2 << 10, 100 << 10} {
		t.Run(sizeName(size), func(t *testing.T) {
			dir := t.TempDir()
			keyFile, certFile := writeKeyPair(t, dir, manager)
			template := filepath.Join(dir, "template.xml")
			signed := filepath.Join(dir, "signed.xml")
			if err := os.WriteFile(template, []byte(`<?xml version="1.0" encoding="UTF-8"?>`+"\n"+xmlsecTemplate(sepmProfile(size))), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := runTool(t, xmlsec, "--sign", "--privkey-pem", keyFile+","+certFile, "--output", signed, template); err != nil {
				t.Fatalf("xmlsec1 --sign: %v\n%s", err, out)
			}
			doc, err := os.ReadFile(signed)
			if err != nil {
				t.Fatal(err)
			}
			got, err := newTestVerifier(t, VerifyOptions{}, "manager").Verify(doc)
			if err != nil {
				t.Fatalf("xmlsec1-signed document does not verify: %v", err)
			}
			if n, want := len(got.Root.FindElements("//AntiVirusPolicy")), strings.Count(string(doc), "<AntiVirusPolicy "); n != want {
				t.Fatalf("verified %d policies, want %d", n, want)
			}
			tampered := strings.Replace(string(doc), `Name="group-1"`, `Name="group-X"`, 1)
			if _, err := newTestVerifier(t, VerifyOptions{}, "manager").Verify([]byte(tampered)); Reason(err) != ReasonDigestMismatch {
				t.Fatalf("tampered xmlsec1 document: got %v, want %s", err, ReasonDigestMismatch)
			}
		})
	}
}

func TestResignedOutputVerifiesWithXmlsec1(t *testing.T) {
	xmlsec := requireTool(t, "xmlsec1")
	key, cert, err := GenerateSigningKey(2048, "legacygate policy signing")
	if err != nil {
		t.Fatal(err)
	}
	gateway, err := NewSigner(key, cert)
	if err != nil {
		t.Fatal(err)
	}
	r := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), 1<<20)
	for _, size := range []int{2 << 10, 100 << 10} {
		t.Run(sizeName(size), func(t *testing.T) {
			dir := t.TempDir()
			out, err := r.Resign(managerSign(t, testParty(t, "manager"), sepmProfile(size), managerSignOptions{}), gateway, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, certPEM, err := EncodeKeyPair(key, cert)
			if err != nil {
				t.Fatal(err)
			}
			certFile, signed, tampered := filepath.Join(dir, "gateway.crt"), filepath.Join(dir, "signed.xml"), filepath.Join(dir, "tampered.xml")
			for file, data := range map[string][]byte{
				certFile: certPEM,
				signed:   out,
				tampered: []byte(strings.Replace(string(out), `Name="group-1"`, `Name="group-X"`, 1)),
			} {
				if err := os.WriteFile(file, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if msg, err := runTool(t, xmlsec, "--verify", "--enabled-key-data", "x509", "--trusted-pem", certFile, signed); err != nil {
				t.Fatalf("xmlsec1 --verify of our output: %v\n%s", err, msg)
			}
			if msg, err := runTool(t, xmlsec, "--verify", "--enabled-key-data", "x509", "--trusted-pem", certFile, tampered); err == nil {
				t.Fatalf("xmlsec1 accepted a tampered copy of our output:\n%s", msg)
			}
		})
	}
}

func sizeName(size int) string { return fmt.Sprintf("%dKB", size>>10) }

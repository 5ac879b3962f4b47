package policyguard

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/beevik/etree"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
	guardlib "github.com/legacygate/legacygate/policyguard"
	"github.com/legacygate/legacygate/rewrite"
)

const rewriteTestSyLink = `<?xml version="1.0" encoding="UTF-8"?>
<ServerSettings NameSpace="rpc">
  <CommConf>
    <ServerList Name="Default Management Server List">
      <ServerPriorityBlock Name="Priority1">
        <Server Address="10.0.0.5" HttpPort="8014" HttpsPort="443" VerifySignatures="1"/>
        <Server Address="10.0.0.6" HttpPort="8014" VerifySignatures="1"/>
      </ServerPriorityBlock>
    </ServerList>
  </CommConf>
  <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo/></ds:Signature>
</ServerSettings>
`

// rewriteFixture writes a certificate, an input document and config files
// into a temporary directory and returns their paths by name.
func rewriteFixture(t *testing.T) (dir string, certDER []byte) {
	t.Helper()
	dir = t.TempDir()
	pair, err := certs.New(certs.Modern, "legacygate signing 2026", 2048)
	if err != nil {
		t.Fatal(err)
	}
	certDER = pair.Cert.Raw
	files := map[string]string{
		"next.crt":         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})),
		"not-pem.crt":      "just text\n",
		"sylink.xml":       rewriteTestSyLink,
		"broken.xml":       "<ServerSettings><CommConf>",
		"no-address.xml":   `<S><L><Server HttpsPort="443"/></L></S>`,
		"rules.json":       `{"addresses": ["gw.example.com"], "https_port": 443, "drop_http_only": true, "certificate_file": "` + filepath.Join(dir, "next.crt") + `"}`,
		"no-cert.json":     `{"addresses": ["gw.example.com"], "https_port": 443}`,
		"typo.json":        `{"addresses": ["gw.example.com"], "https_port": 443, "drop_http_onyl": true}`,
		"bad-port.json":    `{"addresses": ["gw.example.com"], "https_port": 0}`,
		"not-json.json":    `addresses: gw`,
		"two-values.json":  `{"addresses": ["gw"], "https_port": 443} {}`,
		"both-certs.json":  `{"addresses": ["gw"], "https_port": 443, "certificate": "` + base64.StdEncoding.EncodeToString(certDER) + `", "certificate_file": "` + filepath.Join(dir, "next.crt") + `"}`,
		"pem-missing.json": `{"addresses": ["gw"], "https_port": 443, "certificate_file": "` + filepath.Join(dir, "not-pem.crt") + `"}`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, certDER
}

func TestRewriteCommandWritesTheRewrittenDocument(t *testing.T) {
	dir, certDER := rewriteFixture(t)
	cases := []struct {
		name    string
		input   string
		stdin   string
		toFile  bool
		summary string
	}{
		{"file to stdout", filepath.Join(dir, "sylink.xml"), "", false, "2 found, 1 rewritten, 0 added, 0 merged, 1 dropped"},
		{"stdin to stdout", "-", rewriteTestSyLink, false, "1 dropped"},
		{"file to --out", filepath.Join(dir, "sylink.xml"), "", true, "certificates written: 1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			out := ""
			if tc.toFile {
				out = filepath.Join(t.TempDir(), "out.xml")
			}
			if err := runRewrite(strings.NewReader(tc.stdin), &stdout, &stderr, filepath.Join(dir, "rules.json"), out, tc.input); err != nil {
				t.Fatalf("runRewrite: %v", err)
			}
			got := stdout.String()
			if tc.toFile {
				if got != "" {
					t.Errorf("wrote to stdout with --out: %q", got)
				}
				data, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				got = string(data)
			}
			for _, want := range []string{
				`<Server Address="gw.example.com" HttpPort="8014" HttpsPort="443" VerifySignatures="1">`,
				"<ServerCertificate>" + base64.StdEncoding.EncodeToString(certDER) + "</ServerCertificate>",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("output lacks %s:\n%s", want, got)
				}
			}
			for _, gone := range []string{"10.0.0.5", "10.0.0.6", "ds:Signature"} {
				if strings.Contains(got, gone) {
					t.Errorf("output still holds %q:\n%s", gone, got)
				}
			}
			for _, want := range []string{tc.summary, "removed the manager's ds:Signature", "transform id: rewrite/v1:"} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
				}
			}
		})
	}
}

func TestRewriteCommandRejectsBadInputAndWritesNothing(t *testing.T) {
	dir, _ := rewriteFixture(t)
	in := filepath.Join(dir, "sylink.xml")
	cases := []struct {
		name    string
		config  string
		input   string
		wantIs  error
		wantMsg string
	}{
		{"no config", "", in, nil, "--config is required"},
		{"missing config file", "absent.json", in, os.ErrNotExist, "reading config"},
		{"config not JSON", "not-json.json", in, nil, "not-json.json"},
		{"config with two values", "two-values.json", in, nil, "more than one JSON value"},
		{"unknown field", "typo.json", in, nil, `"drop_http_onyl"`},
		{"invalid rule", "bad-port.json", in, rewrite.ErrInvalidRules, "https_port"},
		{"both certificates", "both-certs.json", in, nil, "not both"},
		{"certificate file not PEM", "pem-missing.json", in, nil, "no PEM CERTIFICATE block"},
		{"missing input", "no-cert.json", filepath.Join(dir, "absent.xml"), os.ErrNotExist, "absent.xml"},
		{"malformed XML", "no-cert.json", filepath.Join(dir, "broken.xml"), nil, "malformed XML"},
		{"server without address", "no-cert.json", filepath.Join(dir, "no-address.xml"), rewrite.ErrDocument, `"Address"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			config := tc.config
			if config != "" {
				config = filepath.Join(dir, config)
			}
			out := filepath.Join(t.TempDir(), "out.xml")
			var stdout, stderr bytes.Buffer
			err := runRewrite(strings.NewReader(""), &stdout, &stderr, config, out, tc.input)
			if err == nil {
				t.Fatal("runRewrite succeeded")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("err = %v, want %v", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %s", err, tc.wantMsg)
			}
			if _, statErr := os.Stat(out); !errors.Is(statErr, os.ErrNotExist) {
				t.Errorf("--out was written despite the error")
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout got %q despite the error", stdout.String())
			}
		})
	}
}

func TestRewriteCommandExitStatusFromTheBinary(t *testing.T) {
	dir, _ := rewriteFixture(t)
	cases := []struct {
		name       string
		args       []string
		wantErr    bool
		wantStdout string
		wantStderr string
	}{
		{"success exits 0", []string{"rewrite", "--config", filepath.Join(dir, "rules.json"), filepath.Join(dir, "sylink.xml")}, false, `Address="gw.example.com"`, "1 dropped"},
		{"a document that does not fit exits 1", []string{"rewrite", "--config", filepath.Join(dir, "no-cert.json"), filepath.Join(dir, "no-address.xml")}, true, "", `legacygate rewrite: ` + filepath.Join(dir, "no-address.xml")},
		{"a bad config exits 1", []string{"rewrite", "--config", filepath.Join(dir, "typo.json"), filepath.Join(dir, "sylink.xml")}, true, "", "drop_http_onyl"},
		{"no file argument exits 1", []string{"rewrite", "--config", filepath.Join(dir, "rules.json")}, true, "", "accepts 1 arg"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, err := harness.Run(t, tc.args...)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v; stderr:\n%s", err, tc.wantErr, stderr)
			}
			if err != nil && !strings.Contains(err.Error(), "exit status 1") {
				t.Errorf("err = %v, want exit status 1", err)
			}
			if !strings.Contains(stdout, tc.wantStdout) {
				t.Errorf("stdout lacks %q:\n%s", tc.wantStdout, stdout)
			}
			if !strings.Contains(stderr, tc.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantStderr, stderr)
			}
		})
	}
}

// TestRewriteTransformComposesWithPolicyGuardResigner runs the pipeline the
// gateway runs, verify → rewrite → sign: the rewrite gets the verified root
// without the manager's signature, and the output carries only the
// gateway's.
func TestRewriteTransformComposesWithPolicyGuardResigner(t *testing.T) {
	signer := func(cn string) (*guardlib.Signer, *x509.Certificate) {
		t.Helper()
		key, cert, err := guardlib.GenerateSigningKey(2048, cn)
		if err != nil {
			t.Fatal(err)
		}
		s, err := guardlib.NewSigner(key, cert)
		if err != nil {
			t.Fatal(err)
		}
		return s, cert
	}
	manager, managerCert := signer("manager")
	gateway, gatewayCert := signer("legacygate next")
	unsigned := strings.Replace(rewriteTestSyLink, `  <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo/></ds:Signature>
`, "", 1)
	doc := etree.NewDocument()
	if err := doc.ReadFromString(unsigned); err != nil {
		t.Fatal(err)
	}
	signed, err := manager.Sign(doc.Root())
	if err != nil {
		t.Fatal(err)
	}
	verifier := func(pinned *x509.Certificate) *guardlib.Verifier {
		t.Helper()
		v, err := guardlib.NewVerifier([]*x509.Certificate{pinned}, guardlib.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tr, err := rewrite.NewTransform(rewrite.Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443, DropHTTPOnly: true, Certificate: gatewayCert.Raw})
	if err != nil {
		t.Fatal(err)
	}
	out, err := guardlib.NewResigner(verifier(managerCert), 1<<20).Resign(signed, gateway, tr)
	if err != nil {
		t.Fatalf("Resign with the rewrite transform: %v", err)
	}
	got, err := verifier(gatewayCert).Verify(out)
	if err != nil {
		t.Fatalf("output does not verify with the gateway certificate: %v", err)
	}
	servers := got.Root.FindElements("//Server")
	if len(servers) != 1 || servers[0].SelectAttrValue("Address", "") != "gw.example.com" {
		t.Errorf("verified output has servers %v, want one at gw.example.com", servers)
	}
	if c := got.Root.FindElement("//ServerCertificate"); c == nil || c.Text() != base64.StdEncoding.EncodeToString(gatewayCert.Raw) {
		t.Error("verified output does not embed the gateway certificate")
	}
	if _, err := verifier(managerCert).Verify(out); err == nil {
		t.Error("output still verifies with the manager's certificate")
	}
}

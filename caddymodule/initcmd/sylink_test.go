package initcmd

import (
	"crypto/tls"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

// emulatedManager starts a TLS 1.0 SHA-1 manager signing with RSA-SHA1
// that writes its files (tls.key, signing.crt, sylink.xml) to a folder.
func emulatedManager(t *testing.T) (*manager.Manager, string) {
	t.Helper()
	dir := t.TempDir()
	m, err := manager.New(manager.Config{
		Initial: testPairs()[certs.SHA1], HTTPSAddr: "127.0.0.1:0",
		TLSMin: tls.VersionTLS10, TLSMax: tls.VersionTLS10,
		Cert: certs.SHA1, Sign: manager.SignRSASHA1, ProfileSize: 4 << 10, Dir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, dir
}

func TestParseSyLinkTakesTheManagersSigningCertificate(t *testing.T) {
	_, dir := emulatedManager(t)
	data, err := os.ReadFile(filepath.Join(dir, manager.SyLinkFile))
	if err != nil {
		t.Fatal(err)
	}
	info, err := ParseSyLink(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Certs) != 1 || !info.Certs[0].Equal(testPairs()[certs.SHA1].Cert) {
		t.Fatalf("got %d certificates, want the manager's one", len(info.Certs))
	}
	if !info.SHA1Signature {
		t.Error("an RSA-SHA1-signed SyLink is not reported as SHA-1")
	}
}

func TestParseSyLinkRefusesWhatIsNotASettingsFile(t *testing.T) {
	der := base64.StdEncoding.EncodeToString(testPairs()[certs.Modern].Cert.Raw)
	tests := []struct {
		name, doc, want string
	}{
		{"no certificate", `<ServerSettings><CommConf/></ServerSettings>`, "no <ServerCertificate>"},
		{"not XML", `<ServerSettings><Server>`, "not well-formed"},
		{"certificate not base64", `<ServerSettings><ServerCertificate>!!</ServerCertificate></ServerSettings>`, "not base64"},
		{"certificate not DER", `<ServerSettings><ServerCertificate>AAAA</ServerCertificate></ServerSettings>`, "not a DER certificate"},
		{"too large", `<ServerSettings>` + strings.Repeat(" ", maxSyLinkSize) + `</ServerSettings>`, "bytes"},
		{"valid, certificate twice", `<a><ServerCertificate>` + der + `</ServerCertificate><ServerCertificate>` + der + `</ServerCertificate></a>`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := ParseSyLink([]byte(tt.doc))
			if tt.want == "" {
				if err != nil || len(info.Certs) != 1 {
					t.Fatalf("err %v, want one distinct certificate", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
		})
	}
}

func FuzzParseSyLink(f *testing.F) {
	der := base64.StdEncoding.EncodeToString(testPairs()[certs.Modern].Cert.Raw)
	f.Add([]byte(`<ServerSettings><Server><ServerCertificate>` + der + `</ServerCertificate></Server></ServerSettings>`))
	f.Add([]byte(`<a><SignatureMethod Algorithm="http://www.w3.org/2000/09/xmldsig#rsa-sha1"/></a>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseSyLink(data)
		if err == nil && (len(info.Certs) == 0 || len(info.Certs) > maxSyLinkCerts) {
			t.Fatalf("no error but %d certificates", len(info.Certs))
		}
	})
}

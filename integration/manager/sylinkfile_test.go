package manager

import (
	"bytes"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/legacygate/legacygate/integration/certs"
)

// TestDirHoldsTheSyLinkServedNow checks that Config.Dir's sylink.xml is the
// exact signed SyLink clients download, at start and after each key change.
func TestDirHoldsTheSyLinkServedNow(t *testing.T) {
	m := startManager(t, Config{Dir: t.TempDir(), Next: testPair(t, certs.SHA1)})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	base := "https://" + m.Addrs().HTTPS
	host := register(t, c, base)
	tests := []struct {
		name   string
		change func() error
	}{
		{"start", func() error { return nil }},
		{"import", m.Import},
		{"regenerate", m.Regenerate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.change(); err != nil {
				t.Fatal(err)
			}
			file, err := os.ReadFile(filepath.Join(m.Config().Dir, SyLinkFile))
			if err != nil {
				t.Fatal(err)
			}
			served := do(t, c, http.MethodGet, base+SecarsPath+"?action="+ActionSyLink+"&hostid="+host, nil, "").body
			if !bytes.Equal(file, served) {
				t.Fatalf("%s differs from the SyLink served", SyLinkFile)
			}
			if _, err := verifyGoxmldsig(file, m.SigningCert()); err != nil {
				t.Fatalf("%s does not verify with the manager's certificate: %v", SyLinkFile, err)
			}
		})
	}
}

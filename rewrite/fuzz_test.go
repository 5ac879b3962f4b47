package rewrite

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/beevik/etree"
)

// FuzzApply feeds arbitrary XML to Apply under two rule sets and checks what
// must always hold: no panic; a failed Apply leaves the document unchanged;
// a successful one points every server at the gateway and is idempotent.
func FuzzApply(f *testing.F) {
	for _, name := range []string{"sylink", "mixed-http", "protocol-switch", "certlist", "othervendor"} {
		data, err := os.ReadFile(filepath.Join("testdata", "golden", name+".in.xml"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	cert := nextCert(f)
	ruleSets := []Rules{
		{Addresses: []string{"gw.example.com", "203.0.113.10"}, HTTPSPort: 443, Certificate: cert},
		{
			Addresses: []string{"gw.example.com"}, HTTPSPort: 443, HTTPPort: 18014, DropHTTPOnly: true,
			ProtocolAttr: "UseHttps", ProtocolHTTPSValue: "1", ProtocolHTTPValue: "0",
			CertificateElement: "CommConf/ServerCertList/Certificate", Certificate: cert,
		},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, rules := range ruleSets {
			doc := etree.NewDocument()
			if err := doc.ReadFromBytes(data); err != nil || doc.Root() == nil {
				return
			}
			before := docString(t, doc)
			if _, err := Apply(doc.Root(), rules); err != nil {
				if after := docString(t, doc); after != before {
					t.Fatalf("failed Apply (%v) changed the document", err)
				}
				continue
			}
			for _, s := range (selector{name: DefaultServerElement}).find(doc.Root()) {
				if a := s.SelectAttrValue(DefaultAddressAttr, ""); a != "gw.example.com" && a != "203.0.113.10" {
					t.Fatalf("server %s still points at %q", elemPath(s), a)
				}
			}
			once := docString(t, doc)
			if _, err := Apply(doc.Root(), rules); err != nil {
				t.Fatalf("second Apply failed: %v", err)
			}
			if twice := docString(t, doc); twice != once {
				t.Fatalf("second Apply changed the output:\n%s\n---\n%s", once, twice)
			}
		}
	})
}

package rewrite

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/beevik/etree"
)

// pipelineTransform is policyguard's Transform shape, restated so this test
// proves the adapter fits it without importing policyguard.
type pipelineTransform interface {
	ID() string
	Apply(root *etree.Element) error
}

var _ pipelineTransform = (*Transform)(nil)

func TestTransformIDIsStableAndKeysOnRulesAndCertificate(t *testing.T) {
	cert := nextCert(t)
	base := Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443, Certificate: cert}
	id := func(r Rules) string {
		t.Helper()
		tr, err := NewTransform(r)
		if err != nil {
			t.Fatal(err)
		}
		return tr.ID()
	}
	ref := id(base)
	if !strings.HasPrefix(ref, transformVersion+":") {
		t.Errorf("ID %q lacks the version prefix", ref)
	}
	explicitDefaults := base
	explicitDefaults.ServerElement, explicitDefaults.AddressAttr = DefaultServerElement, DefaultAddressAttr
	cases := []struct {
		name string
		r    Rules
		same bool
	}{
		{"same rules", base, true},
		{"defaults spelled out", explicitDefaults, true},
		{"other address", Rules{Addresses: []string{"gw2.example.com"}, HTTPSPort: 443, Certificate: cert}, false},
		{"other port", Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 8443, Certificate: cert}, false},
		{"no certificate", Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443}, false},
		{"drop http-only", Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443, Certificate: cert, DropHTTPOnly: true}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := id(tc.r); (got == ref) != tc.same {
				t.Errorf("ID %q vs %q: same = %v, want %v", got, ref, got == ref, tc.same)
			}
		})
	}
}

func TestTransformIsNotChangedByCallerEdits(t *testing.T) {
	r := Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443}
	tr, err := NewTransform(r)
	if err != nil {
		t.Fatal(err)
	}
	r.Addresses[0] = "evil.example.com"
	doc := readDoc(t, filepath.Join("testdata", "golden", "sylink.in.xml"))
	if err := tr.Apply(doc.Root()); err != nil {
		t.Fatal(err)
	}
	if got := doc.FindElement("//Server").SelectAttrValue("Address", ""); got != "gw.example.com" {
		t.Errorf("Address = %q, want gw.example.com", got)
	}
}

func TestNewTransformRejectsInvalidRules(t *testing.T) {
	if _, err := NewTransform(Rules{Addresses: []string{"gw"}}); !errors.Is(err, ErrInvalidRules) {
		t.Fatalf("err = %v, want ErrInvalidRules", err)
	}
}

package rewrite

import (
	"encoding/pem"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/beevik/etree"
)

var update = flag.Bool("update", false, "rewrite the golden .out.xml files")

// nextCert is the DER of testdata/gateway-next.pem, a fixed certificate so
// that golden files are stable.
func nextCert(t testing.TB) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "gateway-next.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("testdata/gateway-next.pem holds no PEM block")
	}
	return block.Bytes
}

func readDoc(t testing.TB, path string) *etree.Document {
	t.Helper()
	doc := etree.NewDocument()
	if err := doc.ReadFromFile(path); err != nil {
		t.Fatal(err)
	}
	return doc
}

func docString(t testing.TB, doc *etree.Document) string {
	t.Helper()
	s, err := doc.WriteToString()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestApplyMatchesGoldenFiles(t *testing.T) {
	cert := nextCert(t)
	cases := []struct {
		name   string
		input  string
		rules  Rules
		result Result
	}{
		{
			name:   "sylink-one-address",
			input:  "sylink",
			rules:  Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443, Certificate: cert},
			result: Result{Servers: 3, Rewritten: 3, Merged: 1, Certificates: 3},
		},
		{
			name:   "sylink-two-addresses",
			input:  "sylink",
			rules:  Rules{Addresses: []string{"gw.example.com", "203.0.113.10"}, HTTPSPort: 8443, HTTPPort: 18014, Certificate: cert},
			result: Result{Servers: 3, Rewritten: 3, Added: 3, Merged: 2, Certificates: 3},
		},
		{
			name:   "mixed-http-keep",
			input:  "mixed-http",
			rules:  Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443},
			result: Result{Servers: 3, Rewritten: 3},
		},
		{
			name:   "mixed-http-drop",
			input:  "mixed-http",
			rules:  Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443, DropHTTPOnly: true, Certificate: cert},
			result: Result{Servers: 3, Rewritten: 1, Dropped: 2, BlocksRemoved: 1, Certificates: 1},
		},
		{
			name:  "protocol-switch-drop",
			input: "protocol-switch",
			rules: Rules{
				Addresses: []string{"gw.example.com"}, HTTPSPort: 443, DropHTTPOnly: true,
				ProtocolAttr: "UseHttps", ProtocolHTTPSValue: "1", ProtocolHTTPValue: "0",
			},
			result: Result{Servers: 2, Rewritten: 1, Dropped: 1, ProtocolSwitched: 1},
		},
		{
			name:   "certlist-path",
			input:  "certlist",
			rules:  Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443, Certificate: cert, CertificateElement: "CommConf/ServerCertList/Certificate"},
			result: Result{Servers: 1, Rewritten: 1, Certificates: 1},
		},
		{
			name:  "othervendor",
			input: "othervendor",
			rules: Rules{
				ServerElement: "managers/tier/manager", AddressAttr: "host", HTTPSPortAttr: "tls-port",
				HTTPPortAttr: "plain-port", CertificateElement: "pinned-cert",
				Addresses: []string{"gw.example.com"}, HTTPSPort: 443, Certificate: cert,
			},
			result: Result{Servers: 1, Rewritten: 1, Certificates: 1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc := readDoc(t, filepath.Join("testdata", "golden", tc.input+".in.xml"))
			res, err := Apply(doc.Root(), tc.rules)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if res != tc.result {
				t.Errorf("result = %+v, want %+v", res, tc.result)
			}
			got := docString(t, doc)
			golden := filepath.Join("testdata", "golden", tc.name+".out.xml")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s:\n%s", golden, got)
			}

			// A second pass changes nothing: the gateway may rewrite a
			// document it already rewrote (a cached copy, a chained gateway).
			if _, err := Apply(doc.Root(), tc.rules); err != nil {
				t.Fatalf("second Apply: %v", err)
			}
			if again := docString(t, doc); again != got {
				t.Errorf("second Apply changed the document:\n%s", again)
			}
		})
	}
}

func TestApplyIsDeterministic(t *testing.T) {
	rules := Rules{Addresses: []string{"gw.example.com", "gw2.example.com"}, HTTPSPort: 443, Certificate: nextCert(t)}
	var first string
	for i := range 20 {
		doc := readDoc(t, filepath.Join("testdata", "golden", "sylink.in.xml"))
		if _, err := Apply(doc.Root(), rules); err != nil {
			t.Fatal(err)
		}
		out := docString(t, doc)
		if i == 0 {
			first = out
		} else if out != first {
			t.Fatalf("run %d produced different output", i)
		}
	}
}

func TestApplyRejectsDocumentsThatDoNotFit(t *testing.T) {
	base := Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443}
	protocol := base
	protocol.ProtocolAttr, protocol.ProtocolHTTPSValue, protocol.ProtocolHTTPValue = "UseHttps", "1", "0"
	drop := base
	drop.DropHTTPOnly = true
	certPath := base
	certPath.Certificate = nextCert(t)
	certPath.CertificateElement = "CommConf/ServerCertList/Certificate"
	cases := []struct {
		name    string
		xml     string
		rules   Rules
		wantErr error
		wantMsg []string
	}{
		{"server without address", `<S><L><Server HttpsPort="443"/></L></S>`, base, ErrDocument, []string{`/S/L/Server`, `"Address"`}},
		{"empty address", `<S><L><Server Address=" " HttpsPort="443"/></L></S>`, base, ErrDocument, []string{`"Address"`}},
		{"https port not a number", `<S><L><Server Address="a"/><Server Address="b" HttpsPort="44x3"/></L></S>`, base, ErrDocument, []string{`/S/L/Server[2]`, `HttpsPort="44x3"`}},
		{"http port out of range", `<S><L><Server Address="a" HttpPort="70000"/></L></S>`, base, ErrDocument, []string{`HttpPort="70000"`}},
		{"no server at all", `<S><L/></S>`, base, ErrDocument, []string{`server_element "Server"`}},
		{"still signed", `<S><L><Server Address="a" HttpsPort="443"/></L><ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"/></S>`, base, ErrSigned, []string{`/S/ds:Signature`}},
		{"signed with default namespace", `<S><L><Server Address="a" HttpsPort="443"/></L><Signature xmlns="http://www.w3.org/2000/09/xmldsig#"/></S>`, base, ErrSigned, nil},
		{"nested servers", `<S><Server Address="a"><Server Address="b"/></Server></S>`, base, ErrDocument, []string{"nested"}},
		{"all http-only with drop", `<S><L><Server Address="a" HttpPort="8014"/></L></S>`, drop, ErrDocument, []string{"drop_http_only"}},
		{"unknown protocol value", `<S><L UseHttps="maybe"><Server Address="a" HttpsPort="443"/></L></S>`, protocol, ErrDocument, []string{`/S/L`, `UseHttps="maybe"`}},
		{"certificate path matches nothing", `<S><L><Server Address="a" HttpsPort="443"/></L></S>`, certPath, ErrDocument, []string{"certificate_element"}},
		{"rules invalid", `<S><L><Server Address="a" HttpsPort="443"/></L></S>`, Rules{HTTPSPort: 443}, ErrInvalidRules, []string{"addresses"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc := etree.NewDocument()
			if err := doc.ReadFromString(tc.xml); err != nil {
				t.Fatal(err)
			}
			before := docString(t, doc)
			_, err := Apply(doc.Root(), tc.rules)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %s", err, m)
				}
			}
			if after := docString(t, doc); after != before {
				t.Errorf("a failed Apply changed the document:\n%s", after)
			}
		})
	}
}

func TestApplyRejectsNilRoot(t *testing.T) {
	if _, err := Apply(nil, Rules{Addresses: []string{"gw"}, HTTPSPort: 443}); !errors.Is(err, ErrDocument) {
		t.Fatalf("err = %v, want ErrDocument", err)
	}
}

func TestValidateNamesTheWrongField(t *testing.T) {
	good := Rules{Addresses: []string{"gw.example.com"}, HTTPSPort: 443}
	cases := []struct {
		name  string
		edit  func(r *Rules)
		field string
	}{
		{"no addresses", func(r *Rules) { r.Addresses = nil }, "addresses"},
		{"address with scheme", func(r *Rules) { r.Addresses = []string{"https://gw"} }, "addresses[0]"},
		{"address with port", func(r *Rules) { r.Addresses = []string{"gw:443"} }, "addresses[0]"},
		{"duplicate address", func(r *Rules) { r.Addresses = []string{"gw", "GW"} }, "addresses[1]"},
		{"https port zero", func(r *Rules) { r.HTTPSPort = 0 }, "https_port"},
		{"https port too big", func(r *Rules) { r.HTTPSPort = 65536 }, "https_port"},
		{"http port negative", func(r *Rules) { r.HTTPPort = -1 }, "http_port"},
		{"server element bad path", func(r *Rules) { r.ServerElement = "a/[" }, "server_element"},
		{"server element bad name", func(r *Rules) { r.ServerElement = "Ser ver" }, "server_element"},
		{"certificate element bad", func(r *Rules) { r.CertificateElement = "1cert" }, "certificate_element"},
		{"address attr bad", func(r *Rules) { r.AddressAttr = "a b" }, "address_attr"},
		{"https port attr bad", func(r *Rules) { r.HTTPSPortAttr = "x=" }, "https_port_attr"},
		{"http port attr bad", func(r *Rules) { r.HTTPPortAttr = ":" }, "http_port_attr"},
		{"protocol values without attr", func(r *Rules) { r.ProtocolHTTPSValue = "1" }, "protocol_attr"},
		{"protocol attr without values", func(r *Rules) { r.ProtocolAttr = "UseHttps" }, "protocol_https_value"},
		{"protocol values equal", func(r *Rules) {
			r.ProtocolAttr, r.ProtocolHTTPSValue, r.ProtocolHTTPValue = "UseHttps", "1", "1"
		}, "protocol_http_value"},
		{"certificate not DER", func(r *Rules) { r.Certificate = []byte("-----BEGIN CERTIFICATE-----") }, "certificate"},
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("good rules: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			r.Addresses = append([]string(nil), good.Addresses...)
			tc.edit(&r)
			err := r.Validate()
			if !errors.Is(err, ErrInvalidRules) {
				t.Fatalf("err = %v, want ErrInvalidRules", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %s", err, tc.field)
			}
		})
	}
}

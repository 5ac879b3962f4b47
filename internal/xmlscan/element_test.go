package xmlscan

import (
	"strings"
	"testing"
)

func TestElementText(t *testing.T) {
	tests := []struct {
		name, doc, want string
		ok              bool
	}{
		{"SOAP device id", `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><Req xmlns="urn:x"><DeviceID> DEV-1 </DeviceID></Req></s:Body></s:Envelope>`, "DEV-1", true},
		{"prefixed element", `<a xmlns:m="urn:m"><m:DeviceID>DEV-2</m:DeviceID></a>`, "DEV-2", true},
		{"first of two", `<a><DeviceID>one</DeviceID><DeviceID>two</DeviceID></a>`, "one", true},
		{"entities and CDATA", `<a><DeviceID>x&amp;<![CDATA[y]]></DeviceID></a>`, "x&y", true},
		{"cut after the element", `<a><DeviceID>DEV-3</DeviceID><Payload>QUJD`, "DEV-3", true},
		{"absent", `<a><Other>1</Other></a>`, "", false},
		{"empty", `<a><DeviceID>  </DeviceID></a>`, "", false},
		{"child element", `<a><DeviceID><b>1</b></DeviceID></a>`, "", false},
		{"cut inside the element", `<a><DeviceID>DEV-`, "", false},
		{"malformed before", `<a><<DeviceID>1</DeviceID></a>`, "", false},
		{"mismatched end", `<a><DeviceID>1</b></a>`, "", false},
		{"unknown entity", `<!DOCTYPE a [<!ENTITY e "boom">]><a><DeviceID>&e;</DeviceID></a>`, "", false},
		{"too long", `<a><DeviceID>` + strings.Repeat("x", MaxElementText+1) + `</DeviceID></a>`, "", false},
		{"not XML", `{"DeviceID":"1"}`, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ElementText([]byte(tt.doc), "DeviceID")
			if got != tt.want || ok != tt.ok {
				t.Fatalf("ElementText = %q, %v; want %q, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzElementText(f *testing.F) {
	f.Add([]byte(`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><DeviceID>DEV-1</DeviceID></s:Body></s:Envelope>`), "DeviceID")
	f.Add([]byte(`<a><DeviceID>x&amp;<![CDATA[y]]></DeviceID></a>`), "DeviceID")
	f.Add([]byte(`<!DOCTYPE a [<!ENTITY e "boom">]><a><DeviceID>&e;</DeviceID></a>`), "DeviceID")
	f.Add([]byte(`<a><DeviceID>DEV-`), "DeviceID")
	f.Fuzz(func(t *testing.T, doc []byte, element string) {
		got, ok := ElementText(doc, element)
		if !ok {
			if got != "" {
				t.Fatalf("not found but returned %q", got)
			}
			return
		}
		if got == "" || len(got) > MaxElementText || strings.TrimSpace(got) != got {
			t.Fatalf("found a value that is empty, untrimmed or too long: %q", got)
		}
	})
}

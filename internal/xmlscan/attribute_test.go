package xmlscan

import (
	"bytes"
	"encoding/xml"
	"testing"
)

// FuzzAttributeValueEnd checks that the scan never panics and that, on a
// document encoding/xml reads, appending at the offset found changes
// exactly the attribute encoding/xml sees.
func FuzzAttributeValueEnd(f *testing.F) {
	for _, s := range []string{`<?xml version="1.0" encoding="UTF-8"?><Index><Profile Checksum="C1" SerialNumber="A3AF-01/30/2012 23:50:54 284" LastModifiedTime="1"/><SyLink Serial="S-7"/></Index>`, `<Index><a><SyLink Serial='x'/></a></Index>`, `<Index><!--c--><?p?><![CDATA[<]]></Index>`,
		`<!DOCTYPE Index [<!ENTITY e "v">]><Index><SyLink Serial="&e;"/></Index>`, `<x:Index><x:SyLink Serial="1"></x:SyLink></x:Index>`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		at, err := AttributeValueEnd(doc, "SyLink", "Serial")
		if err != nil || at < 0 {
			return
		}
		before, ok := xmlSerial(doc)
		if !ok {
			return
		}
		changed := append(append(bytes.Clone(doc[:at]), "-lgabcdef01"...), doc[at:]...)
		after, ok := xmlSerial(changed)
		if !ok || after != before+"-lgabcdef01" {
			t.Fatalf("serial %q became %q (readable %v) in %q", before, after, ok, changed)
		}
	})
}

// xmlSerial is encoding/xml's view of the first SyLink Serial under the
// root, for a document it reads without error to the end.
func xmlSerial(doc []byte) (string, bool) {
	d := xml.NewDecoder(bytes.NewReader(doc))
	serial, found, depth := "", false, 0
	for {
		tok, err := d.Token()
		if err != nil {
			return serial, found && err.Error() == "EOF"
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth > 0 && !found && t.Name.Local == "SyLink" {
				for _, a := range t.Attr {
					if a.Name.Space == "" && a.Name.Local == "Serial" {
						serial, found = a.Value, true
					}
				}
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
}

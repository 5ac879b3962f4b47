package xmlscan

import (
	"bytes"
	"encoding/xml"
	"strings"
)

// MaxElementText bounds the text ElementText returns.
const MaxElementText = 1024

// ElementText returns the trimmed text of the first element whose local
// name is element in doc, which may be only the beginning of a document.
// It reports false when the element is absent, empty, longer than
// MaxElementText, holds child elements, or the XML is malformed before the
// element ends.
func ElementText(doc []byte, element string) (string, bool) {
	dec := xml.NewDecoder(bytes.NewReader(doc))
	dec.Strict = true
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		if start, ok := tok.(xml.StartElement); ok && start.Name.Local == element {
			return elementText(dec)
		}
	}
}

// elementText collects character data up to the end of the current element.
func elementText(dec *xml.Decoder) (string, bool) {
	var text strings.Builder
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		switch t := tok.(type) {
		case xml.CharData:
			if text.Len()+len(t) > MaxElementText {
				return "", false
			}
			text.Write(t)
		case xml.StartElement:
			return "", false
		case xml.EndElement:
			value := strings.TrimSpace(text.String())
			return value, value != ""
		}
	}
}

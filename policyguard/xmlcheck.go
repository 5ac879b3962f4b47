package policyguard

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
)

// ReasonProcessingInstruction is the reason CheckXML gives a processing
// instruction other than the XML declaration at the start of the document.
const ReasonProcessingInstruction = "processing_instruction"

// Defaults of XMLLimits, used for the fields left at zero.
const (
	DefaultXMLMaxBytes    = 1 << 20
	DefaultXMLMaxDepth    = 64
	DefaultXMLMaxElements = 10000
)

// XMLLimits bounds the documents CheckXML accepts. A field at zero or below
// takes its default.
type XMLLimits struct {
	// MaxBytes is the largest document, in bytes. Default 1 MiB.
	MaxBytes int64
	// MaxDepth is the deepest element nesting; the root is at depth 1.
	// Default 64.
	MaxDepth int
	// MaxElements is the most elements in a document. Default 10000.
	MaxElements int
}

func (l XMLLimits) withDefaults() limits {
	out := limits{maxBytes: l.MaxBytes, maxDepth: l.MaxDepth, maxElements: l.MaxElements}
	if out.maxBytes <= 0 {
		out.maxBytes = DefaultXMLMaxBytes
	}
	if out.maxDepth <= 0 {
		out.maxDepth = DefaultXMLMaxDepth
	}
	if out.maxElements <= 0 {
		out.maxElements = DefaultXMLMaxElements
	}
	return out
}

// CheckXML checks that doc is one well-formed UTF-8 XML document within l
// and returns the name of its root element, namespace resolved.
//
// It refuses, with a *VerifyError whose Reason says why: documents over the
// size, depth or element bounds (too_large, too_deep, too_many_elements);
// any DOCTYPE, ENTITY or other markup declaration (doctype), so no entity
// can expand and nothing external is fetched by whoever parses doc next;
// processing instructions other than an XML declaration at the very start
// (processing_instruction); and everything a strict XML 1.0 parser refuses,
// including undefined entity references, mismatched tags, text outside the
// root element and encodings other than UTF-8 (malformed_xml).
//
// The bounds are checked by a byte scan before the tokenizer runs, so a
// 5000-deep or oversized document costs no allocation.
func CheckXML(doc []byte, l XMLLimits) (xml.Name, error) {
	lim := l.withDefaults()
	if err := prescan(doc, lim); err != nil {
		return xml.Name{}, err
	}
	return tokenPass(doc, lim)
}

// tokenPass runs the strict tokenizer over the whole document. A UTF-8 byte
// order mark is allowed before the first token (the tokenizer would read it
// as text).
func tokenPass(doc []byte, lim limits) (xml.Name, error) {
	d := xml.NewDecoder(bytes.NewReader(bytes.TrimPrefix(doc, []byte("\xef\xbb\xbf"))))
	d.Strict = true
	var root xml.Name
	depth, elements := 0, 0
	for first := true; ; first = false {
		offset := d.InputOffset()
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return xml.Name{}, &VerifyError{Reason: ReasonMalformedXML, Err: err}
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				if root.Local != "" {
					return xml.Name{}, fail(ReasonMalformedXML, "second root element <%s> at offset %d", t.Name.Local, offset)
				}
				root = t.Name
			}
			depth++
			elements++
			if depth > lim.maxDepth {
				return xml.Name{}, fail(ReasonTooDeep, "elements nested deeper than %d at offset %d", lim.maxDepth, offset)
			}
			if elements > lim.maxElements {
				return xml.Name{}, fail(ReasonTooManyElements, "more than %d elements", lim.maxElements)
			}
		case xml.EndElement:
			depth--
		case xml.CharData:
			if depth == 0 && len(bytes.TrimLeft(t, " \t\r\n")) > 0 {
				return xml.Name{}, fail(ReasonMalformedXML, "text outside the root element at offset %d", offset)
			}
		case xml.ProcInst:
			if err := checkProcInst(t, first, offset); err != nil {
				return xml.Name{}, err
			}
		case xml.Directive:
			return xml.Name{}, fail(ReasonDoctype, "markup declaration at offset %d", offset)
		}
	}
	if root.Local == "" {
		return xml.Name{}, fail(ReasonMalformedXML, "document has no root element")
	}
	return root, nil
}

// checkProcInst allows only the XML declaration, and only as the first thing
// in the document.
func checkProcInst(p xml.ProcInst, first bool, offset int64) error {
	switch {
	case p.Target != "xml":
		return fail(ReasonProcessingInstruction, "processing instruction <?%s at offset %d", p.Target, offset)
	case !first:
		return fail(ReasonMalformedXML, "XML declaration at offset %d is not at the start of the document", offset)
	}
	return nil
}

package policyguard

import "bytes"

// limits are the bounds prescan enforces.
type limits struct {
	maxBytes    int64
	maxDepth    int
	maxElements int
}

// prescan checks size, depth, element count and the absence of DOCTYPE and
// other markup declarations with a byte scan, before any tree is built: a
// 5000-deep or entity-laden document is refused without allocating for it.
// Well-formedness beyond that is left to the parser.
func prescan(doc []byte, l limits) error {
	if int64(len(doc)) > l.maxBytes {
		return fail(ReasonTooLarge, "document is %d bytes, limit is %d", len(doc), l.maxBytes)
	}
	depth, elements, roots := 0, 0, 0
	for i := 0; i < len(doc); {
		j := bytes.IndexByte(doc[i:], '<')
		if j < 0 {
			break
		}
		i += j
		next, err := scanMarkup(doc, i, &depth, &elements, &roots, l)
		if err != nil {
			return err
		}
		i = next
	}
	if depth != 0 {
		return fail(ReasonMalformedXML, "document ends with %d unclosed element(s)", depth)
	}
	if roots == 0 {
		return fail(ReasonMalformedXML, "document has no root element")
	}
	return nil
}

// scanMarkup consumes the markup starting at doc[i] == '<' and returns the
// offset just after it.
func scanMarkup(doc []byte, i int, depth, elements, roots *int, l limits) (int, error) {
	rest := doc[i:]
	switch {
	case bytes.HasPrefix(rest, []byte("<!--")):
		return skipPast(doc, i, 4, "-->", "comment")
	case bytes.HasPrefix(rest, []byte("<![CDATA[")):
		if *depth == 0 {
			return 0, fail(ReasonMalformedXML, "CDATA section outside the root element at offset %d", i)
		}
		return skipPast(doc, i, 9, "]]>", "CDATA section")
	case bytes.HasPrefix(rest, []byte("<!")):
		return 0, fail(ReasonDoctype, "markup declaration %q at offset %d: DOCTYPE and entity declarations are refused", declName(rest), i)
	case bytes.HasPrefix(rest, []byte("<?")):
		return skipPast(doc, i, 2, "?>", "processing instruction")
	case bytes.HasPrefix(rest, []byte("</")):
		k := bytes.IndexByte(rest, '>')
		if k < 0 {
			return 0, fail(ReasonMalformedXML, "unterminated end tag at offset %d", i)
		}
		*depth--
		if *depth < 0 {
			return 0, fail(ReasonMalformedXML, "end tag without start tag at offset %d", i)
		}
		return i + k + 1, nil
	}
	end, selfClosing, ok := tagEnd(rest)
	if !ok {
		return 0, fail(ReasonMalformedXML, "unterminated start tag at offset %d", i)
	}
	if *depth == 0 {
		*roots++
		if *roots > 1 {
			return 0, fail(ReasonMalformedXML, "second root element at offset %d", i)
		}
	}
	*elements++
	if *elements > l.maxElements {
		return 0, fail(ReasonTooManyElements, "more than %d elements", l.maxElements)
	}
	if !selfClosing {
		*depth++
		if *depth > l.maxDepth {
			return 0, fail(ReasonTooDeep, "elements nested deeper than %d at offset %d", l.maxDepth, i)
		}
	}
	return i + end + 1, nil
}

// skipPast returns the offset just after the terminator of a construct that
// starts at doc[i] and whose body begins skip bytes later.
func skipPast(doc []byte, i, skip int, terminator, what string) (int, error) {
	k := bytes.Index(doc[i+skip:], []byte(terminator))
	if k < 0 {
		return 0, fail(ReasonMalformedXML, "unterminated %s at offset %d", what, i)
	}
	return i + skip + k + len(terminator), nil
}

// tagEnd finds the '>' closing the start tag at the beginning of tag,
// ignoring '>' inside quoted attribute values.
func tagEnd(tag []byte) (end int, selfClosing, ok bool) {
	var quote byte
	for k := 1; k < len(tag); k++ {
		c := tag[k]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '>':
			return k, tag[k-1] == '/', true
		}
	}
	return 0, false, false
}

// declName returns the start of a markup declaration for error messages.
func declName(rest []byte) string {
	n := min(len(rest), 12)
	if k := bytes.IndexAny(rest[:n], " \t\r\n["); k > 0 {
		n = k
	}
	return string(rest[:n])
}

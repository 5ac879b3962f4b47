package policyguard

import (
	"bytes"
	"errors"
	"strconv"
	"unicode/utf8"
)

// errDecline means the fast path does not handle this document; the
// goxmldsig path decides instead. It is never returned to callers.
var errDecline = errors.New("fast path declined")

// canonicalDoc is the result of canonicalizing a document in one pass.
type canonicalDoc struct {
	// canonical is the root element in exclusive C14N form (no comments),
	// without its ds:Signature child.
	canonical []byte
	// sigStart and sigEnd delimit the ds:Signature in the input; both are
	// 0 when there is none.
	sigStart, sigEnd int
	// rootNS are the namespace declarations on the root, as written.
	rootNS []rawAttr
}

type rawAttr struct{ name, value []byte }

// nsBinding is a namespace declaration in scope from depth on.
type nsBinding struct {
	prefix, uri string
	depth       int
}

// canonicalizer turns a document into exclusive canonical XML in one pass
// over its bytes, for the common shape of policy documents. Anything
// unusual (prefixed attributes, processing instructions inside the root,
// whitespace characters inside attribute values, unknown entities) makes it
// decline, and the general goxmldsig path handles the document. Its output
// is byte-identical to goxmldsig's exclusive canonicalization, which the
// differential tests and FuzzCanonicalize check.
type canonicalizer struct {
	doc      []byte
	out      []byte
	scope    []nsBinding // declarations in scope
	rendered []nsBinding // declarations written by output ancestors
	open     [][]byte    // qualified names of open elements
	skipFrom int         // depth of the skipped ds:Signature, 0 when not skipping
	result   canonicalDoc
	attrs    []rawAttr
}

// canonicalize canonicalizes doc, which prescan has already checked.
func canonicalize(doc []byte) (*canonicalDoc, error) {
	if !utf8.Valid(doc) || indexSpecial(doc, &controlChars) >= 0 ||
		bytes.Contains(doc, []byte("\xef\xbf\xbe")) || bytes.Contains(doc, []byte("\xef\xbf\xbf")) {
		return nil, errDecline // characters XML forbids: the parser reports them
	}
	c := &canonicalizer{doc: doc, out: make([]byte, 0, len(doc)+len(doc)/4)}
	if err := c.run(); err != nil {
		return nil, err
	}
	c.result.canonical = c.out
	return &c.result, nil
}

func (c *canonicalizer) run() error {
	doc := c.doc
	for i := 0; i < len(doc); {
		if doc[i] != '<' {
			j := bytes.IndexByte(doc[i:], '<')
			if j < 0 {
				j = len(doc) - i
			}
			if err := c.text(doc[i : i+j]); err != nil {
				return err
			}
			i += j
			continue
		}
		next, err := c.markup(i)
		if err != nil {
			return err
		}
		i = next
	}
	if len(c.open) != 0 {
		return errDecline
	}
	return nil
}

func (c *canonicalizer) markup(i int) (int, error) {
	rest := c.doc[i:]
	switch {
	case bytes.HasPrefix(rest, []byte("<!--")):
		k := bytes.Index(rest[4:], []byte("-->"))
		if k < 0 {
			return 0, errDecline
		}
		return i + 4 + k + 3, nil
	case bytes.HasPrefix(rest, []byte("<![CDATA[")):
		k := bytes.Index(rest[9:], []byte("]]>"))
		if k < 0 || len(c.open) == 0 {
			return 0, errDecline
		}
		if c.writing() {
			c.escapeText(rest[9 : 9+k])
		}
		return i + 9 + k + 3, nil
	case bytes.HasPrefix(rest, []byte("<?")):
		return c.processingInstruction(i)
	case bytes.HasPrefix(rest, []byte("</")):
		return c.endTag(i)
	case bytes.HasPrefix(rest, []byte("<!")):
		return 0, errDecline
	}
	return c.startTag(i)
}

// writing reports whether output is on: inside the root, outside the signature.
func (c *canonicalizer) writing() bool { return len(c.open) > 0 && c.skipFrom == 0 }

// processingInstruction accepts only a UTF-8, version 1.0 XML declaration
// at the very start.
func (c *canonicalizer) processingInstruction(i int) (int, error) {
	k := bytes.Index(c.doc[i:], []byte("?>"))
	if k < 0 || i != 0 || len(c.open) != 0 {
		return 0, errDecline
	}
	decl := c.doc[i : i+k]
	if !bytes.HasPrefix(decl, []byte("<?xml ")) ||
		!bytes.Contains(decl, []byte(`version="1.0"`)) && !bytes.Contains(decl, []byte(`version='1.0'`)) {
		return 0, errDecline
	}
	if e := bytes.Index(decl, []byte("encoding")); e >= 0 {
		enc := bytes.ToLower(decl[e:])
		if !bytes.Contains(enc, []byte("utf-8")) {
			return 0, errDecline
		}
	}
	return i + k + 2, nil
}

func (c *canonicalizer) text(raw []byte) error {
	if len(c.open) == 0 {
		if len(bytes.TrimLeft(raw, " \t\r\n")) != 0 {
			return errDecline
		}
		return nil
	}
	if !c.writing() {
		return nil
	}
	return c.decodeText(raw)
}

// decodeText resolves entity references in raw character data and writes
// it escaped for canonical text.
func (c *canonicalizer) decodeText(raw []byte) error {
	for len(raw) > 0 {
		k := bytes.IndexByte(raw, '&')
		if k < 0 {
			c.escapeText(raw)
			return nil
		}
		c.escapeText(raw[:k])
		r, n, ok := entity(raw[k:])
		if !ok {
			return errDecline
		}
		c.escapeRune(r, false)
		raw = raw[k+n:]
	}
	return nil
}

// textSpecial and attrSpecial mark the bytes escapeText and escapeAttr
// must look at.
var textSpecial, attrSpecial = byteSet("&<>\r"), byteSet("&<\"")

// controlChars are the C0 controls XML 1.0 forbids.
var controlChars = byteSet("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f")

// attrDecline marks attribute bytes the fast path leaves to goxmldsig:
// '<' is malformed, and whitespace characters are normalized differently by
// encoding/xml (kept) and by C14N (turned into spaces).
var attrDecline = byteSet("<\t\n\r")

func byteSet(chars string) (set [256]bool) {
	for i := range len(chars) {
		set[chars[i]] = true
	}
	return set
}

// indexSpecial returns the index of the first byte of s in set, or -1.
func indexSpecial(s []byte, set *[256]bool) int {
	for i, b := range s {
		if set[b] {
			return i
		}
	}
	return -1
}

// escapeText writes character data (no references inside) as C14N text:
// line ends normalized, & < > and CR escaped.
func (c *canonicalizer) escapeText(s []byte) {
	for len(s) > 0 {
		k := indexSpecial(s, &textSpecial)
		if k < 0 {
			c.out = append(c.out, s...)
			return
		}
		c.out = append(c.out, s[:k]...)
		switch s[k] {
		case '&':
			c.out = append(c.out, "&amp;"...)
		case '<':
			c.out = append(c.out, "&lt;"...)
		case '>':
			c.out = append(c.out, "&gt;"...)
		case '\r':
			if k+1 >= len(s) || s[k+1] != '\n' {
				c.out = append(c.out, '\n')
			}
		}
		s = s[k+1:]
	}
}

// escapeRune writes a character that came from a reference.
func (c *canonicalizer) escapeRune(r rune, attr bool) {
	switch {
	case r == '&':
		c.out = append(c.out, "&amp;"...)
	case r == '<':
		c.out = append(c.out, "&lt;"...)
	case r == '>' && !attr:
		c.out = append(c.out, "&gt;"...)
	case r == '"' && attr:
		c.out = append(c.out, "&quot;"...)
	case r == '\t' && attr:
		c.out = append(c.out, "&#x9;"...)
	case r == '\n' && attr:
		c.out = append(c.out, "&#xA;"...)
	case r == '\r':
		c.out = append(c.out, "&#xD;"...)
	default:
		c.out = utf8.AppendRune(c.out, r)
	}
}

// entity decodes the reference at the start of s ("&...;").
func entity(s []byte) (r rune, n int, ok bool) {
	end := bytes.IndexByte(s, ';')
	if end < 2 || end > 12 {
		return 0, 0, false
	}
	name := string(s[1:end])
	switch name {
	case "amp":
		return '&', end + 1, true
	case "lt":
		return '<', end + 1, true
	case "gt":
		return '>', end + 1, true
	case "quot":
		return '"', end + 1, true
	case "apos":
		return '\'', end + 1, true
	}
	if name[0] != '#' {
		return 0, 0, false
	}
	var v uint64
	var err error
	if len(name) > 1 && name[1] == 'x' {
		v, err = strconv.ParseUint(name[2:], 16, 32)
	} else {
		v, err = strconv.ParseUint(name[1:], 10, 32)
	}
	if err != nil || !xmlChar(rune(v)) {
		return 0, 0, false
	}
	return rune(v), end + 1, true
}

func xmlChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		r >= 0x20 && r <= 0xD7FF || r >= 0xE000 && r <= 0xFFFD || r >= 0x10000 && r <= 0x10FFFF
}

func (c *canonicalizer) endTag(i int) (int, error) {
	k := bytes.IndexByte(c.doc[i:], '>')
	if k < 0 || len(c.open) == 0 {
		return 0, errDecline
	}
	name := c.doc[i+2 : i+k]
	for len(name) > 0 && (name[len(name)-1] == ' ' || name[len(name)-1] == '\t' || name[len(name)-1] == '\n' || name[len(name)-1] == '\r') {
		name = name[:len(name)-1]
	}
	depth := len(c.open)
	if !bytes.Equal(name, c.open[depth-1]) {
		return 0, errDecline
	}
	if c.writing() {
		c.writeEnd(name)
	}
	c.closeElement(depth)
	if c.skipFrom == depth {
		c.skipFrom = 0
		c.result.sigEnd = i + k + 1
	}
	return i + k + 1, nil
}

func (c *canonicalizer) writeEnd(name []byte) {
	c.out = append(c.out, "</"...)
	c.out = append(c.out, name...)
	c.out = append(c.out, '>')
}

// closeElement drops what the element at depth declared.
func (c *canonicalizer) closeElement(depth int) {
	for len(c.scope) > 0 && c.scope[len(c.scope)-1].depth == depth {
		c.scope = c.scope[:len(c.scope)-1]
	}
	for len(c.rendered) > 0 && c.rendered[len(c.rendered)-1].depth == depth {
		c.rendered = c.rendered[:len(c.rendered)-1]
	}
	c.open = c.open[:depth-1]
}

func lookup(bindings []nsBinding, prefix string) string {
	for i := len(bindings) - 1; i >= 0; i-- {
		if bindings[i].prefix == prefix {
			return bindings[i].uri
		}
	}
	return ""
}

func (c *canonicalizer) startTag(i int) (int, error) {
	end, name, selfClosing, err := c.parseStartTag(i)
	if err != nil {
		return 0, err
	}
	if len(c.open) == 0 && c.result.rootNS != nil {
		return 0, errDecline // a second root
	}
	depth := len(c.open) + 1
	c.open = append(c.open, name)
	plain, err := c.declare(depth)
	if err != nil {
		return 0, err
	}
	prefix, local := splitName(name)
	uri := lookup(c.scope, string(prefix))
	if len(prefix) > 0 && uri == "" {
		return 0, errDecline
	}
	if string(local) == "Signature" && uri == dsigNS {
		if depth != 2 || c.result.sigEnd != 0 || c.skipFrom != 0 || selfClosing {
			return 0, errDecline
		}
		c.skipFrom, c.result.sigStart = depth, i
	}
	if c.writing() {
		if err := c.writeStart(name, string(prefix), uri, depth, plain); err != nil {
			return 0, err
		}
	}
	if selfClosing {
		if c.writing() {
			c.writeEnd(name)
		}
		c.closeElement(depth)
	}
	return end, nil
}

// declare records the element's namespace declarations and returns its
// other attributes; prefixed attributes make the fast path decline.
func (c *canonicalizer) declare(depth int) ([]rawAttr, error) {
	plain := c.attrs[:0]
	for _, a := range c.attrs {
		switch {
		case bytes.Equal(a.name, []byte("xmlns")):
			if len(a.value) == 0 && lookup(c.scope, "") == "" {
				return nil, errDecline // goxmldsig renders this redundant xmlns="", C14N does not
			}
			c.scope = append(c.scope, nsBinding{prefix: "", uri: string(a.value), depth: depth})
		case bytes.HasPrefix(a.name, []byte("xmlns:")):
			if len(a.value) == 0 {
				return nil, errDecline
			}
			c.scope = append(c.scope, nsBinding{prefix: string(a.name[6:]), uri: string(a.value), depth: depth})
		case bytes.IndexByte(a.name, ':') >= 0:
			return nil, errDecline
		default:
			plain = append(plain, a)
		}
		if depth == 1 && (bytes.Equal(a.name, []byte("xmlns")) || bytes.HasPrefix(a.name, []byte("xmlns:"))) {
			c.result.rootNS = append(c.result.rootNS, a)
		}
	}
	if depth == 1 && c.result.rootNS == nil {
		c.result.rootNS = []rawAttr{}
	}
	return plain, nil
}

// writeStart writes a start tag in exclusive C14N form: the element's own
// namespace if no output ancestor rendered it, then attributes by name.
func (c *canonicalizer) writeStart(name []byte, prefix, uri string, depth int, attrs []rawAttr) error {
	c.out = append(c.out, '<')
	c.out = append(c.out, name...)
	if lookup(c.rendered, prefix) != uri {
		c.rendered = append(c.rendered, nsBinding{prefix: prefix, uri: uri, depth: depth})
		c.out = append(c.out, " xmlns"...)
		if prefix != "" {
			c.out = append(c.out, ':')
			c.out = append(c.out, prefix...)
		}
		c.out = append(c.out, `="`...)
		c.escapeAttr([]byte(uri))
		c.out = append(c.out, '"')
	}
	sortAttrs(attrs)
	for k, a := range attrs {
		if k > 0 && bytes.Equal(a.name, attrs[k-1].name) {
			return errDecline
		}
		c.out = append(c.out, ' ')
		c.out = append(c.out, a.name...)
		c.out = append(c.out, `="`...)
		if err := c.decodeAttr(a.value); err != nil {
			return err
		}
		c.out = append(c.out, '"')
	}
	c.out = append(c.out, '>')
	return nil
}

// sortAttrs is an insertion sort: elements carry few attributes.
func sortAttrs(attrs []rawAttr) {
	for i := 1; i < len(attrs); i++ {
		for j := i; j > 0 && bytes.Compare(attrs[j].name, attrs[j-1].name) < 0; j-- {
			attrs[j], attrs[j-1] = attrs[j-1], attrs[j]
		}
	}
}

func (c *canonicalizer) decodeAttr(raw []byte) error {
	if indexSpecial(raw, &attrDecline) >= 0 {
		return errDecline
	}
	for len(raw) > 0 {
		k := bytes.IndexByte(raw, '&')
		if k < 0 {
			c.escapeAttr(raw)
			return nil
		}
		c.escapeAttr(raw[:k])
		r, n, ok := entity(raw[k:])
		if !ok {
			return errDecline
		}
		c.escapeRune(r, true)
		raw = raw[k+n:]
	}
	return nil
}

// escapeAttr writes reference-free attribute text escaped for C14N.
func (c *canonicalizer) escapeAttr(s []byte) {
	for len(s) > 0 {
		k := indexSpecial(s, &attrSpecial)
		if k < 0 {
			c.out = append(c.out, s...)
			return
		}
		c.out = append(c.out, s[:k]...)
		c.escapeRune(rune(s[k]), true)
		s = s[k+1:]
	}
}

func splitName(name []byte) (prefix, local []byte) {
	if k := bytes.IndexByte(name, ':'); k >= 0 {
		return name[:k], name[k+1:]
	}
	return nil, name
}

// parseStartTag reads the tag at doc[i] into c.attrs and returns the offset
// after it and the element's qualified name.
func (c *canonicalizer) parseStartTag(i int) (end int, name []byte, selfClosing bool, err error) {
	doc := c.doc
	p := i + 1
	n := nameEnd(doc, p)
	if n == p {
		return 0, nil, false, errDecline
	}
	name = doc[p:n]
	p = n
	c.attrs = c.attrs[:0]
	for {
		p = skipSpace(doc, p)
		if p >= len(doc) {
			return 0, nil, false, errDecline
		}
		switch doc[p] {
		case '>':
			return p + 1, name, false, nil
		case '/':
			if p+1 < len(doc) && doc[p+1] == '>' {
				return p + 2, name, true, nil
			}
			return 0, nil, false, errDecline
		}
		a, next, ok := parseAttr(doc, p)
		if !ok {
			return 0, nil, false, errDecline
		}
		c.attrs = append(c.attrs, a)
		p = next
	}
}

func parseAttr(doc []byte, p int) (rawAttr, int, bool) {
	n := nameEnd(doc, p)
	if n == p {
		return rawAttr{}, 0, false
	}
	name := doc[p:n]
	p = skipSpace(doc, n)
	if p >= len(doc) || doc[p] != '=' {
		return rawAttr{}, 0, false
	}
	p = skipSpace(doc, p+1)
	if p >= len(doc) || (doc[p] != '"' && doc[p] != '\'') {
		return rawAttr{}, 0, false
	}
	q := bytes.IndexByte(doc[p+1:], doc[p])
	if q < 0 {
		return rawAttr{}, 0, false
	}
	return rawAttr{name: name, value: doc[p+1 : p+1+q]}, p + 2 + q, true
}

// nameEnd returns the end of the XML name at doc[p], or p if there is no
// well-formed ASCII qualified name there (others are left to the parser).
func nameEnd(doc []byte, p int) int {
	start, colon := p, -1
	for p < len(doc) {
		b := doc[p]
		switch {
		case b == ':':
			if colon >= 0 {
				return start
			}
			colon = p
		case nameStart(b):
		case p > start && p != colon+1 && (b >= '0' && b <= '9' || b == '-' || b == '.'):
		case b >= 0x80:
			return start
		default:
			return checkColon(start, p, colon)
		}
		p++
	}
	return checkColon(start, p, colon)
}

func nameStart(b byte) bool { return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b == '_' }

// checkColon rejects names that start or end with the prefix separator.
func checkColon(start, end, colon int) int {
	if colon == start || colon == end-1 {
		return start
	}
	return end
}

func skipSpace(doc []byte, p int) int {
	for p < len(doc) && (doc[p] == ' ' || doc[p] == '\t' || doc[p] == '\n' || doc[p] == '\r') {
		p++
	}
	return p
}

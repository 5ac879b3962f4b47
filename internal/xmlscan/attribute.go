package xmlscan

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// MaxDepth bounds the nesting AttributeValueEnd follows.
const MaxDepth = 32

// AttributeValueEnd scans the XML document b and returns the offset of the
// closing quote of attribute's value on the first element named element
// (local name) under the root, or -1 when there is none. It checks the
// document's structure (one root, balanced and matching tags, quoted
// attributes, terminated comments, CDATA and processing instructions, at
// most MaxDepth levels) but not character or entity rules. It
// allocates nothing.
func AttributeValueEnd(b []byte, element, attribute string) (int, error) {
	var stack [MaxDepth][]byte
	depth, rootDone, found := 0, false, -1
	i := len(b) - len(bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")))
	for {
		lt := bytes.IndexByte(b[i:], '<')
		text := b[i:]
		if lt >= 0 {
			text = text[:lt]
		}
		if depth == 0 && len(bytes.TrimLeft(text, " \t\r\n")) > 0 {
			return -1, errors.New("text outside the root element")
		}
		if lt < 0 {
			break
		}
		i += lt
		rest := b[i:]
		var err error
		switch {
		case bytes.HasPrefix(rest, []byte("<!--")):
			i, err = skipPast(b, i+4, "-->")
		case bytes.HasPrefix(rest, []byte("<?")):
			i, err = skipPast(b, i+2, "?>")
		case bytes.HasPrefix(rest, []byte("<![CDATA[")) && depth > 0:
			i, err = skipPast(b, i+len("<![CDATA["), "]]>")
		case bytes.HasPrefix(rest, []byte("<!DOCTYPE")) && depth == 0 && !rootDone:
			i, err = skipDoctype(b, i+len("<!DOCTYPE"))
		case bytes.HasPrefix(rest, []byte("<!")):
			return -1, errors.New("markup declaration where it is not allowed")
		case bytes.HasPrefix(rest, []byte("</")):
			if depth == 0 {
				return -1, errors.New("end tag outside the root element")
			}
			i, err = endTag(b, i+2, stack[depth-1])
			depth--
			rootDone = depth == 0
		default:
			if rootDone {
				return -1, errors.New("a second root element")
			}
			var t startTag
			if t, err = readStartTag(b, i+1, attribute); err != nil {
				return -1, err
			}
			if depth > 0 && found < 0 && t.valueEnd >= 0 && string(localName(t.name)) == element {
				found = t.valueEnd
			}
			i = t.end
			if t.empty {
				rootDone = depth == 0
				continue
			}
			if depth == MaxDepth {
				return -1, fmt.Errorf("elements nested deeper than %d", MaxDepth)
			}
			stack[depth] = t.name
			depth++
		}
		if err != nil {
			return -1, err
		}
	}
	if !rootDone {
		return -1, errors.New("the document ends before its root element is closed")
	}
	return found, nil
}

// startTag is a start tag read by readStartTag.
type startTag struct {
	name     []byte
	end      int  // offset just past the tag's '>'
	empty    bool // <name/>
	valueEnd int  // closing quote of the wanted attribute's value; -1 without it
}

// readStartTag reads the start tag whose name begins at b[i].
func readStartTag(b []byte, i int, attribute string) (startTag, error) {
	t := startTag{valueEnd: -1}
	n := nameEnd(b, i)
	if n == i {
		return t, errors.New("an element name is missing")
	}
	t.name = b[i:n]
	i = n
	for {
		j := skipSpace(b, i)
		switch {
		case j == len(b):
			return t, fmt.Errorf("start tag <%s> is not closed", t.name)
		case b[j] == '>':
			t.end = j + 1
			return t, nil
		case b[j] == '/' && j+1 < len(b) && b[j+1] == '>':
			t.end, t.empty = j+2, true
			return t, nil
		case j == i:
			return t, fmt.Errorf("start tag <%s>: attributes must be separated by whitespace", t.name)
		}
		n = nameEnd(b, j)
		if n == j {
			return t, fmt.Errorf("start tag <%s>: an attribute name is missing", t.name)
		}
		name := b[j:n]
		j = skipSpace(b, n)
		if j == len(b) || b[j] != '=' {
			return t, fmt.Errorf("start tag <%s>: attribute %s has no value", t.name, name)
		}
		j = skipSpace(b, j+1)
		if j == len(b) || (b[j] != '"' && b[j] != '\'') {
			return t, fmt.Errorf("start tag <%s>: attribute %s is not quoted", t.name, name)
		}
		q := bytes.IndexByte(b[j+1:], b[j])
		if q < 0 || bytes.IndexByte(b[j+1:j+1+q], '<') >= 0 {
			return t, fmt.Errorf("start tag <%s>: attribute %s: unterminated value or '<' in it", t.name, name)
		}
		i = j + 1 + q + 1
		if string(name) == attribute {
			if t.valueEnd >= 0 {
				return t, fmt.Errorf("start tag <%s>: attribute %s given twice", t.name, name)
			}
			t.valueEnd = i - 1
		}
	}
}

// endTag reads the end tag whose name begins at b[i], which must close open.
func endTag(b []byte, i int, open []byte) (int, error) {
	n := nameEnd(b, i)
	j := skipSpace(b, n)
	if !bytes.Equal(b[i:n], open) || j == len(b) || b[j] != '>' {
		return 0, fmt.Errorf("element <%s> is not closed by a matching end tag", open)
	}
	return j + 1, nil
}

// nameEnd returns the offset where the XML name starting at b[i] ends.
func nameEnd(b []byte, i int) int {
	for i < len(b) && !isSpace(b[i]) && strings.IndexByte("/>=<\"'&", b[i]) < 0 {
		i++
	}
	return i
}

// localName drops a namespace prefix.
func localName(name []byte) []byte {
	if c := bytes.LastIndexByte(name, ':'); c >= 0 {
		return name[c+1:]
	}
	return name
}

// Package xmlscan reads what legacygate needs from XML without building a
// tree: the root element's name past the prolog, the text of one element
// (a client key), and where one attribute's value ends (the index serial).
// The scans allocate little or nothing and never panic on any input.
package xmlscan

import (
	"bytes"
	"errors"
)

// Reasons of an *Error, stable tokens for metric labels.
const (
	ReasonMalformed = "malformed"
	ReasonEncoding  = "xml_encoding"
)

// Error is a document Root refuses, with the reason.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Root returns the local name of body's root element, nil when body
// is not XML (its first byte after a UTF-8 byte order mark and whitespace is
// not '<'). XML whose prolog cannot be read to the root element is an error,
// and so is UTF-16 or UTF-32, which a client's parser could read as a policy
// this scan does not see. It allocates nothing.
func Root(body []byte) ([]byte, error) {
	if isXML, err := Plain(body); !isXML {
		return nil, err
	}
	b := bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	i := skipSpace(b, 0)
	for {
		i = skipSpace(b, i)
		if i == len(b) {
			return nil, malformed("the body ends before its root element")
		}
		if b[i] != '<' {
			return nil, malformed("text before the root element")
		}
		rest := b[i:]
		var err error
		switch {
		case bytes.HasPrefix(rest, []byte("<?")):
			i, err = skipPast(b, i+2, "?>")
		case bytes.HasPrefix(rest, []byte("<!--")):
			i, err = skipPast(b, i+4, "-->")
		case bytes.HasPrefix(rest, []byte("<!DOCTYPE")):
			i, err = skipDoctype(b, i+len("<!DOCTYPE"))
		case bytes.HasPrefix(rest, []byte("<!")):
			return nil, malformed("markup before the root element")
		default:
			return rootName(rest[1:])
		}
		if err != nil {
			return nil, err
		}
	}
}

// Plain reports whether body is XML by its bytes alone: after a UTF-8 byte
// order mark and whitespace, it starts with '<'. A Content-Type plays no
// part: an unsigned <Profile> labelled text/plain is still a Profile to a
// client. UTF-16 and UTF-32 text is an error (ReasonEncoding), since a
// client's parser could read a document there that this test does not see.
func Plain(body []byte) (bool, error) {
	b := bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	if len(b) >= 2 && (b[0] == 0 || b[1] == 0 || (b[0] == 0xfe && b[1] == 0xff) || (b[0] == 0xff && b[1] == 0xfe)) {
		return false, &Error{ReasonEncoding, errors.New("body is UTF-16 or UTF-32")}
	}
	i := skipSpace(b, 0)
	return i < len(b) && b[i] == '<', nil
}

func malformed(what string) error {
	return &Error{ReasonMalformed, errors.New(what)}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

func skipPast(b []byte, i int, end string) (int, error) {
	j := bytes.Index(b[i:], []byte(end))
	if j < 0 {
		return 0, malformed("unterminated markup before the root element")
	}
	return i + j + len(end), nil
}

// skipDoctype skips a document type declaration, internal subset included;
// quoted literals may hold '>' and ']'.
func skipDoctype(b []byte, i int) (int, error) {
	var err error
	for i < len(b) {
		switch b[i] {
		case '"', '\'':
			i, err = skipPast(b, i+1, string(b[i]))
		case '[':
			i, err = skipInternalSubset(b, i+1)
		case '>':
			return i + 1, nil
		default:
			i++
		}
		if err != nil {
			return 0, err
		}
	}
	return 0, malformed("unterminated DOCTYPE")
}

func skipInternalSubset(b []byte, i int) (int, error) {
	var err error
	for i < len(b) {
		rest := b[i:]
		switch {
		case rest[0] == ']':
			return i + 1, nil
		case bytes.HasPrefix(rest, []byte("<!--")):
			i, err = skipPast(b, i+4, "-->")
		case bytes.HasPrefix(rest, []byte("<?")):
			i, err = skipPast(b, i+2, "?>")
		case bytes.HasPrefix(rest, []byte("<!")):
			i, err = skipDeclaration(b, i+2)
		default:
			i++
		}
		if err != nil {
			return 0, err
		}
	}
	return 0, malformed("unterminated DOCTYPE internal subset")
}

func skipDeclaration(b []byte, i int) (int, error) {
	var err error
	for i < len(b) {
		switch b[i] {
		case '"', '\'':
			i, err = skipPast(b, i+1, string(b[i]))
			if err != nil {
				return 0, err
			}
		case '>':
			return i + 1, nil
		default:
			i++
		}
	}
	return 0, malformed("unterminated declaration in the DOCTYPE")
}

// rootName reads the element name at the start of b and drops its prefix.
// A name that is not a namespace-well-formed QName (empty, or a colon at
// either end or twice) is malformed.
func rootName(b []byte) ([]byte, error) {
	end := bytes.IndexAny(b, " \t\r\n/>")
	if end <= 0 {
		return nil, malformed("the root element's name is missing or cut short")
	}
	name := b[:end]
	colon := bytes.IndexByte(name, ':')
	if colon < 0 {
		return name, nil
	}
	local := name[colon+1:]
	if colon == 0 || len(local) == 0 || bytes.IndexByte(local, ':') >= 0 {
		return nil, malformed("the root element's name is not a qualified name")
	}
	return local, nil
}

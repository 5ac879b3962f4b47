package caddymodule

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/rewrite"
)

// IndexSerial is where the settings serial is in the manager's index
// document (the heartbeat answer), for policy_guard's rewrite block.
// Clients download settings only when that serial changes; the manager's
// does not change when the gateway's rewrite does (a rotation window opens,
// a listener drops HTTP-only servers). So policy_guard appends to it
// "-lg" and 8 hex digits of a hash of the rewrite the client's settings
// document would get right now: the serial a client sees changes exactly
// when the settings the gateway would serve it change, and stays the same
// while they do not.
//
// The zero value is the SEPM shape, <Index><SyLink Serial="…"/></Index>.
type IndexSerial struct {
	// Off leaves the index unchanged.
	Off bool `json:"off,omitempty"`
	// Root is the local name of the index document's root element; it must
	// not be among policy_guard's (signed) roots. Default: Index.
	Root string `json:"root,omitempty"`
	// Element is the local name of the element, anywhere under the root,
	// whose attribute holds the settings serial; the first one counts.
	// Default: SyLink.
	Element string `json:"element,omitempty"`
	// Attribute is the name of that attribute. Default: Serial.
	Attribute string `json:"attribute,omitempty"`
}

// Defaults of IndexSerial: SEPM's index2.xml.
const (
	defaultIndexRoot      = "Index"
	defaultIndexElement   = "SyLink"
	defaultIndexAttribute = "Serial"
)

// Bounds on the index document scanned: a real one is about 300 bytes.
// A larger or deeper index is passed through unchanged (it is unsigned, so
// that is safe; the client is just not told) and logged.
const (
	maxIndexBytes = 64 << 10
	maxIndexDepth = 32
)

// reasonIndexSerial is the metric reason of an index passed with its
// settings serial rewritten.
const reasonIndexSerial = "index_serial"

// withDefaults fills in the SEPM names.
func (c IndexSerial) withDefaults() IndexSerial {
	if c.Root == "" {
		c.Root = defaultIndexRoot
	}
	if c.Element == "" {
		c.Element = defaultIndexElement
	}
	if c.Attribute == "" {
		c.Attribute = defaultIndexAttribute
	}
	return c
}

// validate names the wrong field; signedRoots are policy_guard's roots.
func (c *IndexSerial) validate(signedRoots []string) error {
	if c == nil {
		c = &IndexSerial{}
	}
	if c.Off {
		if c.Root != "" || c.Element != "" || c.Attribute != "" {
			return errors.New("policy_guard: rewrite: index_serial: off takes no root, element or attribute")
		}
		return nil
	}
	d := c.withDefaults()
	for _, name := range []string{d.Root, d.Element, d.Attribute} {
		if strings.ContainsAny(name, " \t\r\n<>/=\"'&") {
			return fmt.Errorf("policy_guard: rewrite: index_serial: %q is not an XML name", name)
		}
	}
	if containsString(signedRoots, d.Root) {
		return fmt.Errorf("policy_guard: rewrite: index_serial: root %q is among policy_guard's signed roots %v; the index is unsigned", d.Root, signedRoots)
	}
	return nil
}

// unmarshalIndexSerial reads `index_serial off` or
// `index_serial <root> <element> <attribute>`.
func unmarshalIndexSerial(d *caddyfile.Dispenser) (*IndexSerial, error) {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && args[0] == "off":
		return &IndexSerial{Off: true}, nil
	case len(args) == 3:
		return &IndexSerial{Root: args[0], Element: args[1], Attribute: args[2]}, nil
	}
	return nil, d.Err("policy_guard: rewrite: index_serial: want off, or <root> <element> <attribute>")
}

// indexSerial rewrites the settings serial in index documents for one
// policy_guard; nil when it has no rewrite block or index_serial is off.
type indexSerial struct {
	root, element, attribute string
	signing                  *guardSigning
	// suffixes appended to the manager's serial, by the rewrite a settings
	// document gets: current (or policy_guard's own) and the app's next.
	current, next []byte
}

func newIndexSerial(rw *GuardRewrite, s *guardSigning) *indexSerial {
	if rw == nil || s.current == nil || (rw.IndexSerial != nil && rw.IndexSerial.Off) {
		return nil
	}
	var cfg IndexSerial
	if rw.IndexSerial != nil {
		cfg = *rw.IndexSerial
	}
	cfg = cfg.withDefaults()
	ix := &indexSerial{root: cfg.Root, element: cfg.Element, attribute: cfg.Attribute, signing: s,
		current: serialSuffix(s.current)}
	if s.next != nil {
		ix.next = serialSuffix(s.next)
	}
	return ix
}

// serialSuffix is "-lg" and the first 8 hex digits of the SHA-256 of the
// rewrite's ID, which covers its rules and the certificate it embeds.
func serialSuffix(t *rewrite.Transform) []byte {
	sum := sha256.Sum256([]byte(t.ID()))
	return hex.AppendEncode([]byte("-lg"), sum[:4])
}

// matches reports whether a document with this root is the index.
func (ix *indexSerial) matches(root []byte) bool {
	return ix != nil && root != nil && string(root) == ix.root
}

// suffix is what a settings document requested now would be rewritten
// with, as a serial suffix.
func (ix *indexSerial) suffix() []byte {
	if _, next := ix.signing.settingsTransform(); next {
		return ix.next
	}
	return ix.current
}

// rewriteIndex answers with the index body whose settings serial carries
// the suffix. It reports false, having written nothing, when the index is
// to pass through unchanged: over maxIndexBytes, malformed (both logged),
// or without the element or attribute.
func (g *PolicyGuard) rewriteIndex(w http.ResponseWriter, r *http.Request, rec *guardRecorder, body []byte) (bool, error) {
	if len(body) > maxIndexBytes {
		g.logger.Warn("index passed without its settings serial rewritten",
			zap.String("reason", reasonTooLarge), zap.String("path", r.URL.Path), zap.Int("upstream_bytes", len(body)),
			zap.Error(fmt.Errorf("index over %d bytes", maxIndexBytes)))
		return false, nil
	}
	at, err := serialValueEnd(body, g.index.element, g.index.attribute)
	if err != nil {
		g.logger.Warn("index passed without its settings serial rewritten",
			zap.String("reason", reasonMalformed), zap.String("path", r.URL.Path), zap.Int("upstream_bytes", len(body)),
			zap.Error(fmt.Errorf("index document: %w", err)))
		return false, nil
	}
	if at < 0 {
		g.logger.Debug("index without the settings serial passed unchanged",
			zap.String("path", r.URL.Path), zap.String("element", g.index.element), zap.String("attribute", g.index.attribute))
		return false, nil
	}
	suffix := g.index.suffix()
	g.count(resultPassed, reasonIndexSerial)
	h := w.Header()
	copyResponseHeader(h, rec.header)
	for _, k := range staleAfterResign {
		delete(h, k)
	}
	h["Content-Length"] = []string{strconv.Itoa(len(body) + len(suffix))}
	w.WriteHeader(rec.status)
	if r.Method == http.MethodHead {
		return true, nil
	}
	if _, err := w.Write(body[:at]); err != nil {
		return true, err
	}
	if _, err := w.Write(suffix); err != nil {
		return true, err
	}
	_, err = w.Write(body[at:])
	return true, err
}

// serialValueEnd scans the XML document b and returns the offset of the
// closing quote of attribute's value on the first element named element
// (local name) under the root, or -1 when there is none. It checks the
// document's structure (one root, balanced and matching tags, quoted
// attributes, terminated comments, CDATA and processing instructions, at
// most maxIndexDepth levels) but not character or entity rules. It
// allocates nothing.
func serialValueEnd(b []byte, element, attribute string) (int, error) {
	var stack [maxIndexDepth][]byte
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
			if depth == maxIndexDepth {
				return -1, fmt.Errorf("elements nested deeper than %d", maxIndexDepth)
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

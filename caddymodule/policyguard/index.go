package policyguard

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/response"
	"github.com/legacygate/legacygate/internal/xmlscan"
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
const maxIndexBytes = 64 << 10 // and xmlscan.MaxDepth levels

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
func (g *PolicyGuard) rewriteIndex(w http.ResponseWriter, r *http.Request, rec *response.Recorder, body []byte) (bool, error) {
	if len(body) > maxIndexBytes {
		g.logger.Warn("index passed without its settings serial rewritten",
			zap.String("reason", reasonTooLarge), zap.String("path", r.URL.Path), zap.Int("upstream_bytes", len(body)),
			zap.Error(fmt.Errorf("index over %d bytes", maxIndexBytes)))
		return false, nil
	}
	at, err := xmlscan.AttributeValueEnd(body, g.index.element, g.index.attribute)
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
	response.CopyHeader(h, rec.Held())
	for _, k := range staleAfterResign {
		delete(h, k)
	}
	h["Content-Length"] = []string{strconv.Itoa(len(body) + len(suffix))}
	w.WriteHeader(rec.Status())
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

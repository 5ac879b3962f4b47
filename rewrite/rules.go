// Package rewrite rewrites communication-settings documents (SyLink-style
// server lists) so that clients reach the gateway instead of the manager, over
// HTTPS, and trust the gateway's signing certificate.
//
// Element and attribute names come from Rules, not from code: the defaults
// match the SyLink shape of docs/protocol.md, and another manager's settings
// document is handled by naming its elements and attributes.
//
// The package is pure: it imports only etree and the standard library, so it
// can be tested, fuzzed and benchmarked alone.
package rewrite

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/beevik/etree"
)

// Default names: those of the SyLink server list in docs/protocol.md.
const (
	DefaultServerElement      = "Server"
	DefaultAddressAttr        = "Address"
	DefaultHTTPSPortAttr      = "HttpsPort"
	DefaultHTTPPortAttr       = "HttpPort"
	DefaultCertificateElement = "ServerCertificate"
)

// Rules say where the server list lives in a settings document and what to
// make of it. The zero value of each name field takes the SyLink default above.
// Rules are JSON-serializable: the Caddy handler and the offline
// `legacygate rewrite` command share them.
type Rules struct {
	// ServerElement selects the elements that each describe one manager.
	// A bare name ("Server") matches elements of that name at any depth;
	// a value containing "/" is an etree path from the document's root
	// element ("CommConf/ServerList/ServerPriorityBlock/Server").
	// Servers that share a parent form one priority block.
	ServerElement string `json:"server_element,omitempty"`

	// AddressAttr is the server attribute holding the host name or IP
	// address. Every server must have it.
	AddressAttr string `json:"address_attr,omitempty"`

	// HTTPSPortAttr is the server attribute holding the HTTPS port. A server
	// without it (absent, empty or "0") has no HTTPS endpoint: it is HTTP-only.
	HTTPSPortAttr string `json:"https_port_attr,omitempty"`

	// HTTPPortAttr is the server attribute holding the plain-HTTP port.
	HTTPPortAttr string `json:"http_port_attr,omitempty"`

	// ProtocolAttr, if set, names the attribute by which the client chooses
	// HTTPS or HTTP (the console's "Use HTTPS protocol" switch). It is looked
	// up on the server, then on its ancestors; the nearest one wins. Its value
	// must be ProtocolHTTPSValue or ProtocolHTTPValue. Empty: the documents
	// have no such switch, and only the HTTPS port decides.
	ProtocolAttr string `json:"protocol_attr,omitempty"`

	// ProtocolHTTPSValue is the ProtocolAttr value that means HTTPS.
	ProtocolHTTPSValue string `json:"protocol_https_value,omitempty"`

	// ProtocolHTTPValue is the ProtocolAttr value that means plain HTTP.
	ProtocolHTTPValue string `json:"protocol_http_value,omitempty"`

	// CertificateElement holds the base64 DER certificate the client pins.
	// A bare name is a child of each server (replaced, or created when
	// absent); a value containing "/" is an etree path from the root element
	// (for example a certificate list beside the server list), whose
	// elements' text is replaced and which must match at least one element.
	CertificateElement string `json:"certificate_element,omitempty"`

	// Addresses are the gateway's public host names or IP addresses, without
	// port. Every server becomes one server per address, in this order.
	// Required.
	Addresses []string `json:"addresses"`

	// HTTPSPort is the gateway's client-facing HTTPS port. Required.
	HTTPSPort int `json:"https_port"`

	// HTTPPort, if non-zero, replaces the HTTP port of servers that have one
	// (the gateway's plaintext bridge listener). Zero keeps the manager's.
	HTTPPort int `json:"http_port,omitempty"`

	// DropHTTPOnly migrates clients off plaintext: HTTP-only servers are
	// removed, and protocol switches on ancestors (list-wide settings) are
	// set to ProtocolHTTPSValue.
	DropHTTPOnly bool `json:"drop_http_only,omitempty"`

	// Certificate is the DER of the gateway signing certificate the client
	// should trust next (base64 in JSON). Empty leaves certificates as they are.
	Certificate []byte `json:"certificate,omitempty"`
}

// Errors callers may test with errors.Is.
var (
	// ErrInvalidRules: a Rules field is wrong; the message names it.
	ErrInvalidRules = errors.New("invalid rewrite rules")
	// ErrDocument: the document does not fit the rules; the message names
	// the element and attribute.
	ErrDocument = errors.New("settings document does not fit the rewrite rules")
	// ErrSigned: the document still carries an XML signature.
	ErrSigned = errors.New("settings document still carries a ds:Signature")
)

// withDefaults returns r with empty name fields set to the SyLink defaults.
func (r Rules) withDefaults() Rules {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&r.ServerElement, DefaultServerElement)
	def(&r.AddressAttr, DefaultAddressAttr)
	def(&r.HTTPSPortAttr, DefaultHTTPSPortAttr)
	def(&r.HTTPPortAttr, DefaultHTTPPortAttr)
	def(&r.CertificateElement, DefaultCertificateElement)
	return r
}

// Validate checks the rules and names the first wrong field.
func (r Rules) Validate() error {
	r = r.withDefaults()
	for _, sel := range []struct{ field, value string }{
		{"server_element", r.ServerElement},
		{"certificate_element", r.CertificateElement},
	} {
		if _, err := compileSelector(sel.value); err != nil {
			return fmt.Errorf("%w: %s %q: %v", ErrInvalidRules, sel.field, sel.value, err)
		}
	}
	for _, a := range []struct{ field, value string }{
		{"address_attr", r.AddressAttr},
		{"https_port_attr", r.HTTPSPortAttr},
		{"http_port_attr", r.HTTPPortAttr},
	} {
		if !isName(a.value) {
			return fmt.Errorf("%w: %s %q is not an XML attribute name", ErrInvalidRules, a.field, a.value)
		}
	}
	if err := r.validateProtocol(); err != nil {
		return err
	}
	if err := validateAddresses(r.Addresses); err != nil {
		return err
	}
	if r.HTTPSPort < 1 || r.HTTPSPort > 65535 {
		return fmt.Errorf("%w: https_port %d is not a port (1-65535)", ErrInvalidRules, r.HTTPSPort)
	}
	if r.HTTPPort < 0 || r.HTTPPort > 65535 {
		return fmt.Errorf("%w: http_port %d is not a port (0 keeps the manager's, else 1-65535)", ErrInvalidRules, r.HTTPPort)
	}
	if len(r.Certificate) > 0 {
		if _, err := x509.ParseCertificate(r.Certificate); err != nil {
			return fmt.Errorf("%w: certificate is not a DER X.509 certificate: %v", ErrInvalidRules, err)
		}
	}
	return nil
}

func (r Rules) validateProtocol() error {
	if r.ProtocolAttr == "" {
		if r.ProtocolHTTPSValue != "" || r.ProtocolHTTPValue != "" {
			return fmt.Errorf("%w: protocol_https_value and protocol_http_value need protocol_attr", ErrInvalidRules)
		}
		return nil
	}
	if !isName(r.ProtocolAttr) {
		return fmt.Errorf("%w: protocol_attr %q is not an XML attribute name", ErrInvalidRules, r.ProtocolAttr)
	}
	if r.ProtocolHTTPSValue == "" || r.ProtocolHTTPValue == "" {
		return fmt.Errorf("%w: protocol_attr %q needs both protocol_https_value and protocol_http_value", ErrInvalidRules, r.ProtocolAttr)
	}
	if r.ProtocolHTTPSValue == r.ProtocolHTTPValue {
		return fmt.Errorf("%w: protocol_https_value and protocol_http_value are both %q", ErrInvalidRules, r.ProtocolHTTPValue)
	}
	return nil
}

func validateAddresses(addrs []string) error {
	if len(addrs) == 0 {
		return fmt.Errorf("%w: addresses is empty: give the gateway's public host name or IP address", ErrInvalidRules)
	}
	seen := make(map[string]bool, len(addrs))
	for i, a := range addrs {
		if !isHost(a) {
			return fmt.Errorf("%w: addresses[%d] %q is not a host name or IP address (no scheme, no port)", ErrInvalidRules, i, a)
		}
		if seen[strings.ToLower(a)] {
			return fmt.Errorf("%w: addresses[%d] %q is listed twice", ErrInvalidRules, i, a)
		}
		seen[strings.ToLower(a)] = true
	}
	return nil
}

// isHost accepts an IP address or a DNS-style host name.
func isHost(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	if s == "" || len(s) > 253 || strings.HasPrefix(s, "-") || strings.HasPrefix(s, ".") {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		default:
			return false
		}
	}
	return true
}

// isName accepts a plain XML name, optionally with one namespace prefix.
func isName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '.' || c == ':'):
		default:
			return false
		}
	}
	return !strings.HasSuffix(s, ":") && strings.Count(s, ":") <= 1
}

// selector finds elements either by name at any depth or by an etree path.
type selector struct {
	name string     // set for a bare name
	path etree.Path // set for a path
}

func compileSelector(s string) (selector, error) {
	if !strings.Contains(s, "/") {
		if !isName(s) {
			return selector{}, errors.New("not an XML element name (a path must contain \"/\")")
		}
		return selector{name: s}, nil
	}
	p, err := etree.CompilePath(s)
	if err != nil {
		return selector{}, err
	}
	return selector{path: p}, nil
}

func (s selector) find(root *etree.Element) []*etree.Element {
	if s.name != "" {
		var out []*etree.Element
		walk(root, func(e *etree.Element) {
			if e != root && e.FullTag() == s.name {
				out = append(out, e)
			}
		})
		return out
	}
	return root.FindElementsPath(s.path)
}

// walk visits e and its descendants in document order. It keeps its own
// stack, so a deeply nested document cannot exhaust the goroutine's.
func walk(e *etree.Element, visit func(*etree.Element)) {
	stack := []*etree.Element{e}
	for len(stack) > 0 {
		top := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		visit(top)
		kids := top.ChildElements()
		for i := len(kids) - 1; i >= 0; i-- {
			stack = append(stack, kids[i])
		}
	}
}

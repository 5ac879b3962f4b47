package rewrite

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// xmldsigNS is the namespace of W3C XML-DSig elements.
const xmldsigNS = "http://www.w3.org/2000/09/xmldsig#"

// Result says what Apply changed.
type Result struct {
	Servers          int `json:"servers"`           // server elements found
	Rewritten        int `json:"rewritten"`         // servers kept and pointed at the gateway
	Added            int `json:"added"`             // servers added for the second and later gateway addresses
	Merged           int `json:"merged"`            // identical servers in one priority block collapsed into one
	Dropped          int `json:"dropped"`           // HTTP-only servers removed (drop_http_only)
	BlocksRemoved    int `json:"blocks_removed"`    // priority blocks left empty and removed
	Certificates     int `json:"certificates"`      // certificate elements written
	ProtocolSwitched int `json:"protocol_switched"` // list-wide protocol switches set to HTTPS
}

// server is one server element and what pass one learned about it.
type server struct {
	elem      *etree.Element
	httpsPort int  // 0: no HTTPS endpoint
	drop      bool // HTTP-only and drop_http_only is set
}

// plan is everything Apply will change, computed before changing anything.
type plan struct {
	servers   []server
	switches  []*etree.Element // ancestors whose protocol switch says HTTP
	certElems []*etree.Element // certificate elements selected by path
}

// Apply rewrites the server list under root as the rules say.
//
// Contract: root is the element the signature verifier returned (what the
// manager's signature actually covered) with the manager's enveloped
// ds:Signature already removed; the caller signs the result anew. Apply
// refuses a root that still contains a ds:Signature (ErrSigned), so it can
// never alter signed content and leave a stale signature behind.
//
// Apply checks the whole document before changing it: on error root is
// unchanged. The output depends only on the input and the rules.
func Apply(root *etree.Element, r Rules) (Result, error) {
	if err := r.Validate(); err != nil {
		return Result{}, err
	}
	return apply(root, r.withDefaults())
}

// apply is Apply for rules already validated, with defaults filled in.
func apply(root *etree.Element, r Rules) (Result, error) {
	if root == nil {
		return Result{}, fmt.Errorf("%w: no root element", ErrDocument)
	}
	if sig := findSignature(root); sig != nil {
		return Result{}, fmt.Errorf("%w: %s: remove the manager's signature after verifying it, and sign the rewritten document anew", ErrSigned, elemPath(sig))
	}
	p, err := makePlan(root, r)
	if err != nil {
		return Result{}, err
	}
	return p.execute(root, r), nil
}

func findSignature(root *etree.Element) *etree.Element {
	var sig *etree.Element
	walk(root, func(e *etree.Element) {
		if sig == nil && e.Tag == "Signature" && e.NamespaceURI() == xmldsigNS {
			sig = e
		}
	})
	return sig
}

func makePlan(root *etree.Element, r Rules) (*plan, error) {
	serverSel, _ := compileSelector(r.ServerElement)
	elems := serverSel.find(root)
	if len(elems) == 0 {
		return nil, fmt.Errorf("%w: no element matches server_element %q under <%s>", ErrDocument, r.ServerElement, root.FullTag())
	}
	isServer := make(map[*etree.Element]bool, len(elems))
	for _, e := range elems {
		isServer[e] = true
	}
	p := &plan{}
	switches := map[*etree.Element]bool{}
	kept := 0
	for _, e := range elems {
		s, err := inspect(root, e, r, isServer)
		if err != nil {
			return nil, err
		}
		if !s.drop {
			kept++
		}
		p.servers = append(p.servers, s)
		if r.DropHTTPOnly && r.ProtocolAttr != "" {
			if sw := nearestSwitch(e.Parent(), r.ProtocolAttr); sw != nil && !switches[sw] && sw.SelectAttrValue(r.ProtocolAttr, "") == r.ProtocolHTTPValue {
				switches[sw] = true
				p.switches = append(p.switches, sw)
			}
		}
	}
	if kept == 0 {
		return nil, fmt.Errorf("%w: all %d servers are HTTP-only (no %q port, or a protocol switch saying HTTP): drop_http_only would leave the client no server", ErrDocument, len(elems), r.HTTPSPortAttr)
	}
	if len(r.Certificate) > 0 && strings.Contains(r.CertificateElement, "/") {
		certSel, _ := compileSelector(r.CertificateElement)
		p.certElems = certSel.find(root)
		if len(p.certElems) == 0 {
			return nil, fmt.Errorf("%w: no element matches certificate_element %q: the client would not get the new certificate", ErrDocument, r.CertificateElement)
		}
	}
	return p, nil
}

// inspect checks one server element and decides whether it stays.
func inspect(root, e *etree.Element, r Rules, isServer map[*etree.Element]bool) (server, error) {
	where := elemPath(e)
	if e == root || e.Parent() == nil {
		return server{}, fmt.Errorf("%w: server element %s is the document root", ErrDocument, where)
	}
	for a := e.Parent(); a != nil; a = a.Parent() {
		if isServer[a] {
			return server{}, fmt.Errorf("%w: server element %s is nested in server element %s", ErrDocument, where, elemPath(a))
		}
	}
	if addr := e.SelectAttr(r.AddressAttr); addr == nil || strings.TrimSpace(addr.Value) == "" {
		return server{}, fmt.Errorf("%w: %s has no %q attribute", ErrDocument, where, r.AddressAttr)
	}
	httpsPort, err := portAttr(e, r.HTTPSPortAttr)
	if err != nil {
		return server{}, err
	}
	if _, err := portAttr(e, r.HTTPPortAttr); err != nil {
		return server{}, err
	}
	s := server{elem: e, httpsPort: httpsPort}
	ownHTTP := httpsPort == 0
	if r.ProtocolAttr != "" {
		if own := e.SelectAttr(r.ProtocolAttr); own != nil {
			ownHTTP = ownHTTP || own.Value == r.ProtocolHTTPValue
		}
		if err := checkSwitches(e, r); err != nil {
			return server{}, err
		}
	}
	s.drop = r.DropHTTPOnly && ownHTTP
	return s, nil
}

// checkSwitches rejects a protocol switch, on the server or an ancestor,
// whose value is neither the HTTPS nor the HTTP value.
func checkSwitches(e *etree.Element, r Rules) error {
	for a := e; a != nil; a = a.Parent() {
		if v := a.SelectAttr(r.ProtocolAttr); v != nil && v.Value != r.ProtocolHTTPSValue && v.Value != r.ProtocolHTTPValue {
			return fmt.Errorf("%w: %s: %s=%q is neither %q (HTTPS) nor %q (HTTP)", ErrDocument, elemPath(a), r.ProtocolAttr, v.Value, r.ProtocolHTTPSValue, r.ProtocolHTTPValue)
		}
	}
	return nil
}

// nearestSwitch returns e or its nearest ancestor carrying the protocol
// attribute.
func nearestSwitch(e *etree.Element, name string) *etree.Element {
	for a := e; a != nil; a = a.Parent() {
		if a.SelectAttr(name) != nil {
			return a
		}
	}
	return nil
}

// portAttr reads a port attribute: absent, empty or "0" is 0.
func portAttr(e *etree.Element, name string) (int, error) {
	a := e.SelectAttr(name)
	if a == nil || strings.TrimSpace(a.Value) == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(a.Value))
	if err != nil || n < 0 || n > 65535 {
		return 0, fmt.Errorf("%w: %s: %s=%q is not a port number (0-65535)", ErrDocument, elemPath(e), name, a.Value)
	}
	return n, nil
}

func (p *plan) execute(root *etree.Element, r Rules) Result {
	res := Result{Servers: len(p.servers)}
	for _, sw := range p.switches {
		sw.CreateAttr(r.ProtocolAttr, r.ProtocolHTTPSValue)
		res.ProtocolSwitched++
	}
	var blocks []*etree.Element
	members := map[*etree.Element][]*etree.Element{} // block → its servers after rewriting
	for _, s := range p.servers {
		parent := s.elem.Parent()
		if _, ok := members[parent]; !ok {
			members[parent] = nil
			blocks = append(blocks, parent)
		}
		if s.drop {
			removeWithIndent(s.elem)
			res.Dropped++
			continue
		}
		res.Certificates += rewriteServer(s, r)
		res.Rewritten++
		clones := addClones(s.elem, r)
		res.Added += len(clones)
		members[parent] = append(append(members[parent], s.elem), clones...)
	}
	for _, b := range blocks {
		res.Merged += mergeDuplicates(members[b])
		if b != root && len(b.ChildElements()) == 0 && b.Parent() != nil {
			removeWithIndent(b)
			res.BlocksRemoved++
		}
	}
	if len(r.Certificate) > 0 {
		for _, c := range p.certElems {
			c.SetText(base64.StdEncoding.EncodeToString(r.Certificate))
			res.Certificates++
		}
	}
	return res
}

// rewriteServer points one server at the first gateway address and writes
// its certificate child; it returns the number of certificates written.
func rewriteServer(s server, r Rules) int {
	e := s.elem
	e.CreateAttr(r.AddressAttr, r.Addresses[0])
	if s.httpsPort != 0 {
		e.CreateAttr(r.HTTPSPortAttr, strconv.Itoa(r.HTTPSPort))
	}
	if r.HTTPPort != 0 && e.SelectAttr(r.HTTPPortAttr) != nil {
		e.CreateAttr(r.HTTPPortAttr, strconv.Itoa(r.HTTPPort))
	}
	if len(r.Certificate) == 0 || strings.Contains(r.CertificateElement, "/") {
		return 0
	}
	// Keep the first certificate element in place, so the layout survives,
	// and remove any others: the client must pin exactly one.
	var cert *etree.Element
	for _, c := range e.ChildElements() {
		switch {
		case c.FullTag() != r.CertificateElement:
		case cert == nil:
			cert = c
		default:
			removeWithIndent(c)
		}
	}
	if cert == nil {
		cert = e.CreateElement(r.CertificateElement)
	}
	cert.SetText(base64.StdEncoding.EncodeToString(r.Certificate))
	return 1
}

// addClones inserts a copy of e after it for each further gateway address.
func addClones(e *etree.Element, r Rules) []*etree.Element {
	indent := leadingIndent(e)
	after := e
	var clones []*etree.Element
	for _, addr := range r.Addresses[1:] {
		c := e.Copy()
		c.CreateAttr(r.AddressAttr, addr)
		parent := after.Parent()
		at := after.Index() + 1
		if indent != "" {
			parent.InsertChildAt(at, etree.NewText(indent))
			at++
		}
		parent.InsertChildAt(at, c)
		clones = append(clones, c)
		after = c
	}
	return clones
}

// mergeDuplicates removes the servers of one block that are identical to an
// earlier one: once every server points at the gateway, several manager
// entries often become the same entry.
func mergeDuplicates(servers []*etree.Element) int {
	seen := map[string]bool{}
	merged := 0
	for _, c := range servers {
		key := canonical(c)
		if seen[key] {
			removeWithIndent(c)
			merged++
			continue
		}
		seen[key] = true
	}
	return merged
}

// canonical is a comparison key for an element: tag, attributes in order,
// children and non-blank text.
func canonical(e *etree.Element) string {
	var b strings.Builder
	var write func(*etree.Element)
	write = func(e *etree.Element) {
		b.WriteString("<" + e.FullTag())
		for _, a := range e.Attr {
			b.WriteString(" " + a.FullKey() + "=" + strconv.Quote(a.Value))
		}
		b.WriteString(">" + strings.TrimSpace(e.Text()))
		for _, c := range e.ChildElements() {
			write(c)
		}
		b.WriteString("</>")
	}
	write(e)
	return b.String()
}

// leadingIndent returns the whitespace text just before e, if any.
func leadingIndent(e *etree.Element) string {
	i := e.Index()
	if i == 0 || e.Parent() == nil {
		return ""
	}
	// Not cd.IsWhitespace: etree sets that flag only on parsed text.
	if cd, ok := e.Parent().Child[i-1].(*etree.CharData); ok && !cd.IsCData() && strings.TrimSpace(cd.Data) == "" {
		return cd.Data
	}
	return ""
}

// removeWithIndent removes e and the whitespace that indented it.
func removeWithIndent(e *etree.Element) {
	parent := e.Parent()
	i := e.Index()
	hasIndent := leadingIndent(e) != ""
	parent.RemoveChildAt(i)
	if hasIndent {
		parent.RemoveChildAt(i - 1)
	}
}

// elemPath names e for error messages: /Root/Child[2]/Leaf, the index
// counting same-named siblings from 1 and shown only when there are several.
func elemPath(e *etree.Element) string {
	var steps []string
	for c := e; c != nil && c.FullTag() != ""; c = c.Parent() {
		step := c.FullTag()
		if p := c.Parent(); p != nil {
			n, pos := 0, 0
			for _, s := range p.ChildElements() {
				if s.FullTag() == c.FullTag() {
					n++
					if s == c {
						pos = n
					}
				}
			}
			if n > 1 {
				step += "[" + strconv.Itoa(pos) + "]"
			}
		}
		steps = append(steps, step)
	}
	for i, j := 0, len(steps)-1; i < j; i, j = i+1, j-1 {
		steps[i], steps[j] = steps[j], steps[i]
	}
	return "/" + strings.Join(steps, "/")
}

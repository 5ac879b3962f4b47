package fleet

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// Bounds on a communication-settings document. A real SyLink.xml is a few
// kilobytes with a handful of servers; these leave room and stop a hostile
// document from costing the fleet memory.
const (
	maxSyLinkBytes = 1 << 20
	maxBlocks      = 32
	maxServers     = 256
)

// Settings is a client's communication settings: what SEPM keeps in
// SyLink.xml. Clients that hold the same document share one *Settings, so
// a Settings is never modified after it is built.
type Settings struct {
	// Serial is the ServerSettings Serial attribute, if the document has one.
	Serial string
	// HeartbeatSeconds and RandomizationSeconds come from
	// AgentCommunicationSetting (PushHeartbeatSeconds, RandomizationRange when
	// RandomizationEnabled="1"); zero when absent.
	HeartbeatSeconds     int
	RandomizationSeconds int
	// Blocks are the ServerPriorityBlocks of the first ServerList, in document
	// order: a client tries Blocks[0] first.
	Blocks []PriorityBlock
	// KCS is AgentCommunicationSetting's Kcs: the real wire's h= key.
	KCS string

	anchors []certID // distinct signing certificates in the list
}

// PriorityBlock is one ServerPriorityBlock: servers of equal priority.
type PriorityBlock struct {
	Name    string
	Servers []Server
}

// Server is one <Server> of a priority block.
//
// A server is reached over HTTPS when its HttpsPort is above zero, and
// over plain HTTP on HttpPort otherwise. A list moved to plain HTTP 8014
// (the vendor's "Use HTTP protocol") has HttpsPort removed, empty or "0":
// the same convention as the emulator and the gateway's rewrite package.
type Server struct {
	Address   string
	HTTPPort  int
	HTTPSPort int
	// VerifySignatures is false only for VerifySignatures="0" (the vendor's
	// "secure communications" switched off): downloads are then accepted
	// unverified.
	VerifySignatures bool
	// VerifyCA is HttpsVerifyCA="1": the client checks the TLS chain against
	// the system roots. SEPM's default "0" trusts the signatures instead.
	VerifyCA bool
	// Cert is the signing certificate the client trusts for this server:
	// the <ServerCertificate> child, or the fleet's --trust certificate.
	Cert *x509.Certificate

	base string // BaseURL, built once
}

// UsesHTTPS says whether the client talks to this server over HTTPS.
func (s Server) UsesHTTPS() bool { return s.HTTPSPort > 0 }

// BaseURL is "https://address:port" or "http://address:port".
func (s Server) BaseURL() string {
	if s.base != "" {
		return s.base
	}
	if s.UsesHTTPS() {
		return "https://" + net.JoinHostPort(s.Address, strconv.Itoa(s.HTTPSPort))
	}
	return "http://" + net.JoinHostPort(s.Address, strconv.Itoa(s.HTTPPort))
}

// certID is the SHA-256 of a certificate's DER.
type certID [sha256.Size]byte

func idOf(c *x509.Certificate) certID { return sha256.Sum256(c.Raw) }

// OnPlaintext says whether any server in the list is reached over plain HTTP.
func (s *Settings) OnPlaintext() bool {
	for _, b := range s.Blocks {
		for _, srv := range b.Servers {
			if !srv.UsesHTTPS() {
				return true
			}
		}
	}
	return false
}

// onHTTP is a copy of s with every server reached over plain HTTP on its
// HttpPort, like a list after the vendor's "Use HTTP protocol".
func (s *Settings) onHTTP() (*Settings, error) {
	out := *s
	out.Blocks = make([]PriorityBlock, len(s.Blocks))
	for i, b := range s.Blocks {
		out.Blocks[i] = PriorityBlock{Name: b.Name, Servers: make([]Server, len(b.Servers))}
		for j, srv := range b.Servers {
			if srv.HTTPPort == 0 {
				return nil, fmt.Errorf("server %q has no HttpPort to move to", srv.Address)
			}
			srv.HTTPSPort = 0
			srv.base = ""
			srv.base = srv.BaseURL()
			out.Blocks[i].Servers[j] = srv
		}
	}
	return &out, nil
}

// sharesAnchor says whether any signing certificate of s is also in t.
func (s *Settings) sharesAnchor(t *Settings) bool {
	for _, a := range s.anchors {
		for _, b := range t.anchors {
			if a == b {
				return true
			}
		}
	}
	return false
}

// ParseSyLink parses a SyLink.xml-style document. trust is the signing
// certificate for servers without a <ServerCertificate>; it may be nil, and
// then every server that verifies signatures must carry its own.
// The document's signature, if any, is not checked here.
func ParseSyLink(data []byte, trust *x509.Certificate) (*Settings, error) {
	if len(data) > maxSyLinkBytes {
		return nil, fmt.Errorf("sylink: document is %d bytes, more than the %d allowed", len(data), maxSyLinkBytes)
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, fmt.Errorf("sylink: malformed XML: %w", err)
	}
	if err := rejectDirectives(doc); err != nil {
		return nil, fmt.Errorf("sylink: %w", err)
	}
	root := doc.Root()
	if root == nil {
		return nil, errors.New("sylink: no root element")
	}
	return parseSettings(root, trust)
}

// parseSettings reads a ServerSettings element.
func parseSettings(root *etree.Element, trust *x509.Certificate) (*Settings, error) {
	if root.Tag != "ServerSettings" {
		return nil, fmt.Errorf("sylink: root element is <%s>, want <ServerSettings>", root.Tag)
	}
	s := &Settings{Serial: root.SelectAttrValue("Serial", "")}
	comm := root.SelectElement("CommConf")
	if comm == nil {
		return nil, errors.New("sylink: no <CommConf> under <ServerSettings>")
	}
	if err := s.readHeartbeat(comm.SelectElement("AgentCommunicationSetting")); err != nil {
		return nil, err
	}
	list := comm.SelectElement("ServerList")
	if list == nil {
		return nil, errors.New("sylink: no <ServerList> under <CommConf>")
	}
	blocks := list.SelectElements("ServerPriorityBlock")
	if len(blocks) == 0 {
		return nil, errors.New("sylink: <ServerList> has no <ServerPriorityBlock>")
	}
	if len(blocks) > maxBlocks {
		return nil, fmt.Errorf("sylink: %d priority blocks, more than the %d allowed", len(blocks), maxBlocks)
	}
	total := 0
	for i, b := range blocks {
		block := PriorityBlock{Name: b.SelectAttrValue("Name", "Priority"+strconv.Itoa(i+1))}
		servers := b.SelectElements("Server")
		total += len(servers)
		if total > maxServers {
			return nil, fmt.Errorf("sylink: more than %d servers", maxServers)
		}
		for j, el := range servers {
			srv, err := parseServer(el, trust)
			if err != nil {
				return nil, fmt.Errorf("sylink: priority block %q, server %d: %w", block.Name, j+1, err)
			}
			block.Servers = append(block.Servers, srv)
			s.addAnchor(srv.Cert)
		}
		if len(block.Servers) == 0 {
			return nil, fmt.Errorf("sylink: priority block %q has no <Server>", block.Name)
		}
		s.Blocks = append(s.Blocks, block)
	}
	return s, nil
}

func (s *Settings) addAnchor(c *x509.Certificate) {
	if c == nil {
		return
	}
	id := idOf(c)
	for _, a := range s.anchors {
		if a == id {
			return
		}
	}
	s.anchors = append(s.anchors, id)
}

// readHeartbeat reads the optional AgentCommunicationSetting element.
func (s *Settings) readHeartbeat(el *etree.Element) error {
	if el == nil {
		return nil
	}
	s.KCS = el.SelectAttrValue("Kcs", "")
	var err error
	if s.HeartbeatSeconds, err = intAttr(el, "PushHeartbeatSeconds", 0, 0, 7*24*3600); err != nil {
		return fmt.Errorf("sylink: <AgentCommunicationSetting>: %w", err)
	}
	if el.SelectAttrValue("RandomizationEnabled", "0") != "1" {
		return nil
	}
	if s.RandomizationSeconds, err = intAttr(el, "RandomizationRange", 0, 0, 7*24*3600); err != nil {
		return fmt.Errorf("sylink: <AgentCommunicationSetting>: %w", err)
	}
	return nil
}

func parseServer(el *etree.Element, trust *x509.Certificate) (Server, error) {
	srv := Server{
		Address:          strings.TrimSpace(el.SelectAttrValue("Address", "")),
		VerifySignatures: el.SelectAttrValue("VerifySignatures", "1") != "0",
		VerifyCA:         el.SelectAttrValue("HttpsVerifyCA", "0") == "1",
	}
	if err := checkAddress(srv.Address); err != nil {
		return Server{}, err
	}
	var err error
	// A port of 0 means the same as no attribute: no such listener.
	if srv.HTTPPort, err = intAttr(el, "HttpPort", 0, 0, 65535); err != nil {
		return Server{}, err
	}
	if srv.HTTPSPort, err = intAttr(el, "HttpsPort", 0, 0, 65535); err != nil {
		return Server{}, err
	}
	if srv.HTTPPort == 0 && srv.HTTPSPort == 0 {
		return Server{}, fmt.Errorf("server %q has neither HttpPort nor HttpsPort", srv.Address)
	}
	srv.Cert = trust
	if c := el.SelectElement("ServerCertificate"); c != nil {
		if srv.Cert, err = parseServerCertificate(c.Text()); err != nil {
			return Server{}, fmt.Errorf("server %q: %w", srv.Address, err)
		}
	}
	srv.base = srv.BaseURL()
	if srv.VerifySignatures && srv.Cert == nil {
		return Server{}, fmt.Errorf("server %q verifies signatures but has no <ServerCertificate> and no trusted certificate was given", srv.Address)
	}
	return srv, nil
}

// checkAddress accepts a host name or an IP address, nothing that would
// change the meaning of a URL.
func checkAddress(a string) error {
	if a == "" {
		return errors.New("missing Address")
	}
	if len(a) > 253 {
		return fmt.Errorf("Address is %d characters, more than 253", len(a))
	}
	if net.ParseIP(a) != nil {
		return nil
	}
	for _, r := range a {
		ok := r == '-' || r == '.' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !ok {
			return fmt.Errorf("Address %q is neither a host name nor an IP address", a)
		}
	}
	return nil
}

// intAttr reads an optional integer attribute in [lo, hi]; absent or
// empty gives def.
func intAttr(el *etree.Element, name string, def, lo, hi int) (int, error) {
	a := el.SelectAttr(name)
	if a == nil || strings.TrimSpace(a.Value) == "" {
		return def, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(a.Value))
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s=%q is not a number from %d to %d", name, a.Value, lo, hi)
	}
	return n, nil
}

func parseServerCertificate(text string) (*x509.Certificate, error) {
	clean := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\n' || r == '\r' || r == '\t' {
			return -1
		}
		return r
	}, text)
	der, err := base64.StdEncoding.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("<ServerCertificate> is not base64: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("<ServerCertificate> is not a DER certificate: %w", err)
	}
	return c, nil
}

// rejectDirectives refuses DOCTYPE and other <!…> declarations: no
// legitimate settings document or policy has one, and entity tricks start there.
func rejectDirectives(doc *etree.Document) error {
	for _, t := range doc.Child {
		if _, ok := t.(*etree.Directive); ok {
			return errors.New("document has a <!DOCTYPE> or other directive")
		}
	}
	return nil
}

// BuildSyLink writes s as an unsigned SyLink.xml document that
// ParseSyLink reads back: for tests, demos and `mgrsim clients` setups that
// point a fleet at a gateway. Each server's certificate is written as its
// <ServerCertificate>; a server without HTTPS gets no HttpsPort.
func BuildSyLink(s *Settings) ([]byte, error) {
	doc := etree.NewDocument()
	doc.CreateProcInst("xml", `version="1.0" encoding="UTF-8"`)
	root := doc.CreateElement("ServerSettings")
	root.CreateAttr("NameSpace", "rpc")
	if s.Serial != "" {
		root.CreateAttr("Serial", s.Serial)
	}
	comm := root.CreateElement("CommConf")
	acs := comm.CreateElement("AgentCommunicationSetting")
	acs.CreateAttr("CommunicationMode", "PULL")
	if s.KCS != "" {
		acs.CreateAttr("Kcs", s.KCS)
	}
	acs.CreateAttr("PushHeartbeatSeconds", strconv.Itoa(s.HeartbeatSeconds))
	acs.CreateAttr("RandomizationEnabled", boolAttr(s.RandomizationSeconds > 0))
	acs.CreateAttr("RandomizationRange", strconv.Itoa(s.RandomizationSeconds))
	list := comm.CreateElement("ServerList")
	list.CreateAttr("Name", "Default Management Server List")
	for i, b := range s.Blocks {
		if len(b.Servers) == 0 {
			return nil, fmt.Errorf("sylink: priority block %d has no servers", i+1)
		}
		block := list.CreateElement("ServerPriorityBlock")
		block.CreateAttr("Name", b.Name)
		for _, srv := range b.Servers {
			if err := checkAddress(srv.Address); err != nil {
				return nil, fmt.Errorf("sylink: priority block %q: %w", b.Name, err)
			}
			el := block.CreateElement("Server")
			el.CreateAttr("Address", srv.Address)
			el.CreateAttr("HttpPort", strconv.Itoa(srv.HTTPPort))
			if srv.HTTPSPort > 0 {
				el.CreateAttr("HttpsPort", strconv.Itoa(srv.HTTPSPort))
			}
			el.CreateAttr("VerifySignatures", boolAttr(srv.VerifySignatures))
			el.CreateAttr("HttpsVerifyCA", boolAttr(srv.VerifyCA))
			if srv.Cert != nil {
				el.CreateElement("ServerCertificate").SetText(base64.StdEncoding.EncodeToString(srv.Cert.Raw))
			}
		}
	}
	doc.Indent(1)
	return doc.WriteToBytes()
}

func boolAttr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

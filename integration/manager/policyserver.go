package manager

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// PolicyServer-style endpoint names, as counted by Manager.Requests.
const (
	// CountPSRequest counts every request that reached the web service,
	// whatever became of it: the number of attempts a proxy made.
	CountPSRequest = "soap"
	// CountPSAnswered counts the requests answered with a SOAP result.
	CountPSAnswered = "answered"
	// CountPSReplay counts requests refused because their message id was
	// used before.
	CountPSReplay = "replay"
)

// PolicyServer web service path, namespaces and operations.
const (
	PSPath      = "/MAWebService2/MAWebService2.asmx"
	PSNamespace = "http://policyserver.legacygate.test/MAWebService2"
	SOAPEnvNS   = "http://schemas.xmlsoap.org/soap/envelope/"
)

// PSOperations are the web service's operations (SOAP 1.1 body elements,
// and SOAPAction PSNamespace/<operation>).
var PSOperations = []string{"CheckIn", "GetPolicy", "UploadAudit"}

const (
	maxSOAPBytes    = 1 << 20
	maxDeviceIDLen  = 128
	messageIDLen    = 32 // hex characters
	psPayloadLength = 256
)

// policyserver is the PolicyServer-style flavor. Each message carries a
// single-use message id standing in for the per-conversation key; a
// message id seen before is refused, as an expired or replayed key is.
type policyserver struct {
	m       *Manager
	seen    *nonceSet
	version atomic.Pointer[string]
}

func newPolicyServer(m *Manager) flavor {
	return &policyserver{m: m, seen: newNonceSet(m.cfg.MaxHosts)}
}

func (p *policyserver) endpoints() []string {
	return []string{CountPSRequest, CountPSAnswered, CountPSReplay, CountNotFound}
}

func (p *policyserver) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(PSPath, p.serve)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		p.m.count(CountNotFound)
		http.NotFound(w, r)
	})
	return mux
}

func (p *policyserver) status() map[string]string {
	v := p.version.Load()
	if v == nil {
		return map[string]string{}
	}
	return map[string]string{"policy_version": *v}
}

// rebuild publishes a new policy version; the element values are not signed.
func (p *policyserver) rebuild(*identity) error {
	v := strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + randomHex(2)
	p.version.Store(&v)
	return nil
}

// PSRequest is one decoded web service request.
type PSRequest struct {
	Operation string
	DeviceID  string
	MessageID string
	Payload   []byte
}

// psEnvelope is the SOAP 1.1 envelope of requests and responses.
type psEnvelope struct {
	XMLName xml.Name `xml:"http://schemas.xmlsoap.org/soap/envelope/ Envelope"`
	Body    struct {
		Op psOperation `xml:",any"`
	} `xml:"http://schemas.xmlsoap.org/soap/envelope/ Body"`
}

// psOperation is the body element: a request (CheckIn, …), a response
// (CheckInResponse, …) or a Fault.
type psOperation struct {
	XMLName       xml.Name
	DeviceID      string `xml:"DeviceID"`
	MessageID     string `xml:"MessageID"`
	Payload       string `xml:"Payload"`
	PolicyVersion string `xml:"PolicyVersion"`
	FaultString   string `xml:"faultstring"`
}

// BuildPSRequest returns the SOAP envelope of a request, payload base64
// encoded (standing in for an AES-256 value), and its SOAPAction header.
func BuildPSRequest(req PSRequest) (body []byte, soapAction string) {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?>` + "\n")
	b.WriteString(`<soap:Envelope xmlns:soap="` + SOAPEnvNS + `"><soap:Body>`)
	fmt.Fprintf(&b, `<%s xmlns="%s">`, req.Operation, PSNamespace)
	writeElement(&b, "DeviceID", req.DeviceID)
	writeElement(&b, "MessageID", req.MessageID)
	writeElement(&b, "Payload", base64.StdEncoding.EncodeToString(req.Payload))
	fmt.Fprintf(&b, `</%s></soap:Body></soap:Envelope>`, req.Operation)
	return b.Bytes(), `"` + PSNamespace + "/" + req.Operation + `"`
}

func writeElement(b *bytes.Buffer, name, text string) {
	b.WriteString("<" + name + ">")
	xml.EscapeText(b, []byte(text))
	b.WriteString("</" + name + ">")
}

// NewMessageID returns a fresh single-use message id.
func NewMessageID() string { return randomHex(messageIDLen / 2) }

// PSResponse is a decoded answer of the web service.
type PSResponse struct {
	Operation     string
	MessageID     string
	PolicyVersion string
	Payload       []byte
}

// ParsePSResponse decodes a SOAP answer to op. A SOAP Fault, another
// operation's answer, or a value that is not base64 is an error.
func ParsePSResponse(body []byte, op string) (PSResponse, error) {
	env, err := decodeEnvelope(body)
	if err != nil {
		return PSResponse{}, err
	}
	o := env.Body.Op
	switch {
	case o.XMLName.Local == "Fault":
		return PSResponse{}, fmt.Errorf("SOAP fault: %s", o.FaultString)
	case o.XMLName.Local != op+"Response" || o.XMLName.Space != PSNamespace:
		return PSResponse{}, fmt.Errorf("SOAP body is {%s}%s, want {%s}%sResponse", o.XMLName.Space, o.XMLName.Local, PSNamespace, op)
	case o.MessageID == "" || o.PolicyVersion == "":
		return PSResponse{}, errors.New("SOAP answer lacks MessageID or PolicyVersion")
	}
	payload, err := base64.StdEncoding.DecodeString(o.Payload)
	if err != nil {
		return PSResponse{}, fmt.Errorf("SOAP answer Payload: %w", err)
	}
	return PSResponse{Operation: op, MessageID: o.MessageID, PolicyVersion: o.PolicyVersion, Payload: payload}, nil
}

// decodeEnvelope parses a SOAP 1.1 envelope; a document type declaration is
// refused.
func decodeEnvelope(body []byte) (psEnvelope, error) {
	var env psEnvelope
	if bytes.Contains(bytes.ToUpper(body), []byte("<!DOCTYPE")) {
		return env, errors.New("SOAP message has a DOCTYPE")
	}
	if err := xml.Unmarshal(body, &env); err != nil {
		return env, fmt.Errorf("SOAP envelope: %w", err)
	}
	return env, nil
}

// parsePSRequest checks a request's envelope against its SOAPAction.
func parsePSRequest(body []byte, soapAction string) (PSRequest, error) {
	env, err := decodeEnvelope(body)
	if err != nil {
		return PSRequest{}, err
	}
	o := env.Body.Op
	if o.XMLName.Space != PSNamespace || !isPSOperation(o.XMLName.Local) {
		return PSRequest{}, fmt.Errorf("unknown operation {%s}%s", o.XMLName.Space, o.XMLName.Local)
	}
	if want := `"` + PSNamespace + "/" + o.XMLName.Local + `"`; soapAction != want {
		return PSRequest{}, fmt.Errorf("SOAPAction %s does not match the body's %s", soapAction, want)
	}
	if o.DeviceID == "" || len(o.DeviceID) > maxDeviceIDLen {
		return PSRequest{}, errors.New("DeviceID missing or longer than 128 characters")
	}
	if !validMessageID(o.MessageID) {
		return PSRequest{}, fmt.Errorf("MessageID %q is not %d hex characters", o.MessageID, messageIDLen)
	}
	payload, err := base64.StdEncoding.DecodeString(o.Payload)
	if err != nil {
		return PSRequest{}, fmt.Errorf("Payload: %w", err)
	}
	return PSRequest{Operation: o.XMLName.Local, DeviceID: o.DeviceID, MessageID: o.MessageID, Payload: payload}, nil
}

func isPSOperation(name string) bool {
	for _, op := range PSOperations {
		if op == name {
			return true
		}
	}
	return false
}

func validMessageID(s string) bool {
	if len(s) != messageIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// serve answers POST /MAWebService2/MAWebService2.asmx.
func (p *policyserver) serve(w http.ResponseWriter, r *http.Request) {
	p.m.count(CountPSRequest)
	if r.Method != http.MethodPost {
		p.fault(w, http.StatusMethodNotAllowed, "soap:Client", "use POST")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSOAPBytes))
	if err != nil {
		p.fault(w, http.StatusBadRequest, "soap:Client", "reading request: "+err.Error())
		return
	}
	req, err := parsePSRequest(body, r.Header.Get("SOAPAction"))
	if err != nil {
		p.fault(w, http.StatusBadRequest, "soap:Client", err.Error())
		return
	}
	if !p.seen.add(strings.ToUpper(req.MessageID)) {
		p.m.count(CountPSReplay)
		p.fault(w, http.StatusInternalServerError, "soap:Client", "conversation key already used: message refused as a replay")
		return
	}
	p.m.count(CountPSAnswered)
	payload := make([]byte, psPayloadLength)
	rand.Read(payload)
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?>` + "\n")
	b.WriteString(`<soap:Envelope xmlns:soap="` + SOAPEnvNS + `"><soap:Body>`)
	fmt.Fprintf(&b, `<%sResponse xmlns="%s">`, req.Operation, PSNamespace)
	writeElement(&b, "MessageID", req.MessageID)
	writeElement(&b, "PolicyVersion", *p.version.Load())
	writeElement(&b, "Payload", base64.StdEncoding.EncodeToString(payload))
	fmt.Fprintf(&b, `</%sResponse></soap:Body></soap:Envelope>`, req.Operation)
	writeSOAP(w, http.StatusOK, b.Bytes())
}

// fault answers a SOAP 1.1 Fault, as ASP.NET web services do. Requests
// refused before they were understood count as bad.
func (p *policyserver) fault(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusBadRequest || status == http.StatusMethodNotAllowed {
		p.m.count(CountBad)
	}
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?>` + "\n")
	b.WriteString(`<soap:Envelope xmlns:soap="` + SOAPEnvNS + `"><soap:Body><soap:Fault>`)
	writeElement(&b, "faultcode", code)
	writeElement(&b, "faultstring", msg)
	b.WriteString(`</soap:Fault></soap:Body></soap:Envelope>`)
	writeSOAP(w, status, b.Bytes())
}

func writeSOAP(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// nonceSet remembers the last max message ids; the oldest is forgotten
// first, so memory is bounded whatever clients send.
type nonceSet struct {
	mu   sync.Mutex
	max  int
	ids  map[string]struct{}
	ring []string
	next int
}

func newNonceSet(max int) *nonceSet {
	return &nonceSet{max: max, ids: make(map[string]struct{})}
}

// add records id and reports whether it was new.
func (s *nonceSet) add(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.ids[id]; dup {
		return false
	}
	if len(s.ring) < s.max {
		s.ring = append(s.ring, id)
	} else {
		delete(s.ids, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % s.max
	}
	s.ids[id] = struct{}{}
	return true
}

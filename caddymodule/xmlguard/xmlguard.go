package xmlguard

import (
	"bytes"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/caddymodule/internal/response"
	"github.com/legacygate/legacygate/internal/xmlscan"
	"github.com/legacygate/legacygate/policyguard"
)

func init() {
	caddy.RegisterModule(XMLGuard{})
	httpcaddyfile.RegisterHandlerDirective("xml_guard", parseXMLGuard)
	// After heartbeat_limit, before policy_guard (see caddymodule/doc.go).
	httpcaddyfile.RegisterDirectiveOrder("xml_guard", httpcaddyfile.Before, "request_header")
}

// XMLGuard checks the unsigned XML of protocols such as SOAP on its way to
// and from the manager (module http.handlers.xml_guard).
//
// Requests: a request with a body is read whole (up to max_size) and checked
// before anything is sent to the manager: well-formed UTF-8 XML, no DOCTYPE
// or entity declarations, no processing instructions, within the size, depth
// and element bounds, the root element listed in Roots and the SOAP action
// listed in SOAPActions (when those are set). A request that fails is answered
// 400 (413 when over max_size, 415 when its Content-Type is not XML) and never
// reaches the manager. A request that passes goes on with a body holding the
// same bytes and the same Content-Length.
//
// Nothing is sent twice: the body can be read once only, and a connection
// obtained for a second round trip of the same request (a retry that
// lb_retry_match allows) is closed before a byte is written on it; this
// holds with requests off too. Retries after a dial error, when nothing was
// sent, still happen. Do not add request_buffers to the reverse_proxy
// behind: it keeps its own copy of the body for retries.
//
// Responses: the manager is asked for the identity encoding, and its
// response is held (up to max_size) and checked the same way, except for
// the SOAP action. One that fails is answered 502 and nothing of it reaches
// the client. Passed unchecked: responses without a body (HEAD, 204, 304,
// empty) and error responses (non-2xx) whose Content-Type is not XML, such
// as an IIS error page. A 2xx response is refused when it carries any
// Content-Encoding but a single identity, when its body is not XML (decided
// by its bytes: after a byte order mark and whitespace it starts with '<')
// unless its media type is listed in AllowNonXML, and when its body is XML
// but its Content-Type is neither XML nor listed. A response of any status
// that repeats Content-Encoding, Content-Type, Content-Length or
// Transfer-Encoding is refused: a client may read it differently.
//
// A missing Content-Type is taken as XML. XML media types are text/xml,
// application/xml and any type ending in +xml (application/soap+xml).
type XMLGuard struct {
	// MaxSize is the largest body checked, in bytes; a larger body is
	// refused. Default 1 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// MaxDepth is the deepest element nesting allowed; the root element is
	// at depth 1. Default 64.
	MaxDepth int `json:"max_depth,omitempty"`

	// MaxElements is the most elements one document may hold. Default 10000.
	MaxElements int `json:"max_elements,omitempty"`

	// Roots are the allowed root elements, in both directions. "Envelope"
	// matches that local name in any namespace;
	// "{http://schemas.xmlsoap.org/soap/envelope/}Envelope" matches only in
	// that namespace. Empty: any root.
	Roots []string `json:"roots,omitempty"`

	// SOAPActions are the allowed SOAP actions of requests, compared exactly
	// with the SOAPAction header (SOAP 1.1) without its quotes, or with the
	// action parameter of the Content-Type (SOAP 1.2). A request with a body
	// and no action, several actions, or an unlisted one is refused. Empty:
	// any action, or none.
	SOAPActions []string `json:"soap_actions,omitempty"`

	// SkipRequests turns the request check off (Caddyfile: requests off).
	SkipRequests bool `json:"skip_requests,omitempty"`

	// SkipResponses turns the response check off (Caddyfile: responses off).
	SkipResponses bool `json:"skip_responses,omitempty"`

	// AllowNonXML lists the media types (type/subtype) of 2xx responses
	// that may pass although their body is not XML. A body that is XML is
	// checked as XML whatever its Content-Type. Empty: a non-empty 2xx body
	// that is not XML is refused.
	AllowNonXML []string `json:"allow_non_xml,omitempty"`

	allowNonXML []string // AllowNonXML, lower-cased
	limits      policyguard.XMLLimits
	roots       []rootName
	logger      *zap.Logger
	results     *prometheus.CounterVec
}

// rootName is an allowed root element; anyNamespace when the name was
// given without one.
type rootName struct {
	name         xml.Name
	anyNamespace bool
}

// CaddyModule returns the Caddy module information.
func (XMLGuard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.xml_guard",
		New: func() caddy.Module { return new(XMLGuard) },
	}
}

// Directions, results and reasons, the values of the metric labels. Refusals
// from the XML check itself carry policyguard's reasons (malformed_xml,
// doctype, processing_instruction, too_deep, too_many_elements, too_large).
const (
	dirRequest  = "request"
	dirResponse = "response"

	resultPassed  = "passed"
	resultRefused = "refused"

	reasonChecked      = "checked"
	reasonNoBody       = "no_body"
	reasonNotXML       = "not_xml"
	reasonContentType  = "content_type"
	reasonIncomplete   = "incomplete"
	reasonUnlistedRoot = "unlisted_root"
	reasonSOAPAction   = "soap_action"
	reasonReplay       = "replay"

	reasonDuplicateHeader = response.ReasonDuplicateHeader
	reasonContentEncoding = "content_encoding"
	reasonXMLEncoding     = xmlscan.ReasonEncoding
)

var guardResults = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "legacygate_xml_guard_results_total",
	Help: "Requests and responses handled by xml_guard, by direction (request, response), result (passed, refused) and reason.",
}, []string{"direction", "result", "reason"})

// Provision applies the defaults, parses Roots and registers the metric.
// Caddy calls Validate after it.
func (g *XMLGuard) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	if g.MaxSize == 0 {
		g.MaxSize = policyguard.DefaultXMLMaxBytes
	}
	if g.MaxDepth == 0 {
		g.MaxDepth = policyguard.DefaultXMLMaxDepth
	}
	if g.MaxElements == 0 {
		g.MaxElements = policyguard.DefaultXMLMaxElements
	}
	g.limits = policyguard.XMLLimits{MaxBytes: g.MaxSize, MaxDepth: g.MaxDepth, MaxElements: g.MaxElements}
	g.roots = g.roots[:0]
	for _, s := range g.Roots {
		root, _ := parseRoot(s)
		g.roots = append(g.roots, root)
	}
	var err error
	if g.allowNonXML, err = response.MediaTypes("xml_guard: allow_non_xml", g.AllowNonXML); err != nil {
		return err
	}
	g.results, err = metrics.Register(ctx.GetMetricsRegistry(), guardResults)
	return err
}

// Validate names the first field that is out of range.
func (g *XMLGuard) Validate() error {
	switch {
	case g.MaxSize < 0:
		return fmt.Errorf("xml_guard: max_size: %d is negative", g.MaxSize)
	case g.MaxDepth < 0:
		return fmt.Errorf("xml_guard: max_depth: %d is negative", g.MaxDepth)
	case g.MaxElements < 0:
		return fmt.Errorf("xml_guard: max_elements: %d is negative", g.MaxElements)
	case g.SkipRequests && g.SkipResponses:
		return errors.New("xml_guard: requests, responses: both are off, nothing would be checked")
	case g.SkipRequests && len(g.SOAPActions) > 0:
		return errors.New("xml_guard: soap_actions: requests are off, so no action would be checked")
	case g.SkipResponses && len(g.AllowNonXML) > 0:
		return errors.New("xml_guard: allow_non_xml: responses are off, so no response would be checked")
	}
	if _, err := response.MediaTypes("xml_guard: allow_non_xml", g.AllowNonXML); err != nil {
		return err
	}
	for _, s := range g.Roots {
		if _, err := parseRoot(s); err != nil {
			return fmt.Errorf("xml_guard: roots: %w", err)
		}
	}
	for _, a := range g.SOAPActions {
		if strings.TrimSpace(a) == "" || strings.Contains(a, `"`) {
			return fmt.Errorf("xml_guard: soap_actions: %q is not an action (give it without quotes)", a)
		}
	}
	return nil
}

// parseRoot reads "local" or "{namespace}local".
func parseRoot(s string) (rootName, error) {
	local, anyNamespace := s, true
	var space string
	if rest, ok := strings.CutPrefix(s, "{"); ok {
		ns, name, found := strings.Cut(rest, "}")
		if !found || ns == "" {
			return rootName{}, fmt.Errorf("%q: want local or {namespace}local", s)
		}
		space, local, anyNamespace = ns, name, false
	}
	if local == "" || strings.ContainsAny(local, " \t\r\n<>/:{}\"'&") {
		return rootName{}, fmt.Errorf("%q: %q is not an element's local name", s, local)
	}
	return rootName{name: xml.Name{Space: space, Local: local}, anyNamespace: anyNamespace}, nil
}

// ServeHTTP checks the request, then lets the rest of the chain answer and
// checks its response.
func (g *XMLGuard) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !g.SkipRequests {
		if v := g.checkRequest(r); v != nil {
			return g.refuseRequest(w, r, v)
		}
	}
	if r.ContentLength != 0 {
		r = g.oneConnection(r)
	}
	if g.SkipResponses {
		return next.ServeHTTP(w, r)
	}
	// Compressed bytes cannot be checked; the manager is told so.
	r.Header.Set("Accept-Encoding", "identity")
	return g.serveChecked(w, r, next)
}

// oneConnection lets the round trips made for r use one connection to the
// manager: a connection obtained for a retry is closed before a byte is
// written on it. reverse_proxy retries a POST after a failed round trip only
// when lb_retry_match says so, and would send the request headers again;
// the manager sees no second request. Retries after a dial error, when no
// connection was obtained, are left alone. HTTP/2 connections carry other
// requests too and are not closed: the read-once body then fails the retry.
func (g *XMLGuard) oneConnection(r *http.Request) *http.Request {
	var conns atomic.Int32
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if conns.Add(1) == 1 {
				return
			}
			if tc, ok := info.Conn.(*tls.Conn); !ok || tc.ConnectionState().NegotiatedProtocol != "h2" {
				info.Conn.Close()
			}
			g.count(dirRequest, resultRefused, reasonReplay)
			g.logger.Warn("xml request not sent again",
				zap.String("direction", dirRequest),
				zap.String("reason", reasonReplay),
				zap.String("method", r.Method),
				zap.String("path", r.URL.Path),
				zap.String("upstream", info.Conn.RemoteAddr().String()))
		},
	}
	return r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
}

// violation is why a request or response was refused.
type violation struct {
	status int // toward the client, for requests
	reason string
	size   int
	err    error
}

// checkRequest reads and checks r's body and, when it passes, puts the same
// bytes back as a body that can be read once.
func (g *XMLGuard) checkRequest(r *http.Request) *violation {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		g.count(dirRequest, resultPassed, reasonNoBody)
		return nil
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isXMLMediaType(ct) {
		return &violation{http.StatusUnsupportedMediaType, reasonContentType, 0, fmt.Errorf("Content-Type %q is not XML", ct)}
	}
	if r.ContentLength > g.MaxSize {
		return g.tooLarge(http.StatusRequestEntityTooLarge, r.ContentLength)
	}
	body, v := g.readRequestBody(r)
	if v != nil {
		return v
	}
	if v := g.checkDocument(body, http.StatusBadRequest); v != nil {
		return v
	}
	if v := g.checkSOAPAction(r, len(body)); v != nil {
		return v
	}
	g.count(dirRequest, resultPassed, reasonChecked)
	r.Body = &onceBody{rd: bytes.NewReader(body)}
	r.GetBody = nil
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	r.Header.Del("Transfer-Encoding")
	return nil
}

// readRequestBody reads the whole body, at most MaxSize bytes.
func (g *XMLGuard) readRequestBody(r *http.Request) ([]byte, *violation) {
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(r.Body, g.MaxSize+1))
	switch {
	case err != nil:
		return nil, &violation{http.StatusBadRequest, reasonIncomplete, int(n), fmt.Errorf("reading the request body: %w", err)}
	case n > g.MaxSize:
		return nil, g.tooLarge(http.StatusRequestEntityTooLarge, n)
	case r.ContentLength > 0 && n != r.ContentLength:
		return nil, &violation{http.StatusBadRequest, reasonIncomplete, int(n), fmt.Errorf("Content-Length %d, body %d bytes", r.ContentLength, n)}
	}
	return buf.Bytes(), nil
}

func (g *XMLGuard) tooLarge(status int, size int64) *violation {
	return &violation{status, policyguard.ReasonTooLarge, int(min(size, g.MaxSize+1)), fmt.Errorf("body of at least %d bytes is over max_size (%d bytes)", size, g.MaxSize)}
}

// checkDocument runs the XML check and the root check; status is what a
// failure answers.
func (g *XMLGuard) checkDocument(body []byte, status int) *violation {
	root, err := policyguard.CheckXML(body, g.limits)
	if err != nil {
		reason := policyguard.ReasonMalformedXML
		var ve *policyguard.VerifyError
		if errors.As(err, &ve) {
			// The reason goes in its own log field; keep only what was wrong.
			reason, err = ve.Reason, ve.Err
		}
		if reason == policyguard.ReasonTooLarge && status == http.StatusBadRequest {
			status = http.StatusRequestEntityTooLarge
		}
		return &violation{status, reason, len(body), err}
	}
	if !g.rootAllowed(root) {
		return &violation{status, reasonUnlistedRoot, len(body), fmt.Errorf("root element {%s}%s is not listed in roots", root.Space, root.Local)}
	}
	return nil
}

func (g *XMLGuard) rootAllowed(root xml.Name) bool {
	if len(g.roots) == 0 {
		return true
	}
	for _, allowed := range g.roots {
		if allowed.name.Local == root.Local && (allowed.anyNamespace || allowed.name.Space == root.Space) {
			return true
		}
	}
	return false
}

// checkSOAPAction refuses a request whose action is missing, repeated or
// not listed, when SOAPActions is set.
func (g *XMLGuard) checkSOAPAction(r *http.Request, size int) *violation {
	if len(g.SOAPActions) == 0 {
		return nil
	}
	action, err := requestSOAPAction(r)
	if err == nil {
		for _, allowed := range g.SOAPActions {
			if action == allowed {
				return nil
			}
		}
		err = fmt.Errorf("SOAP action %q is not listed in soap_actions", action)
	}
	return &violation{http.StatusBadRequest, reasonSOAPAction, size, err}
}

// requestSOAPAction returns the SOAPAction header without its quotes, or
// else the action parameter of a SOAP 1.2 Content-Type.
func requestSOAPAction(r *http.Request) (string, error) {
	values := r.Header.Values("SOAPAction")
	switch {
	case len(values) > 1:
		return "", fmt.Errorf("%d SOAPAction headers", len(values))
	case len(values) == 1:
		return strings.Trim(strings.TrimSpace(values[0]), `"`), nil
	}
	if _, params, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && params["action"] != "" {
		return params["action"], nil
	}
	return "", errors.New("no SOAPAction header and no action in the Content-Type")
}

// isXMLMediaType is true for text/xml, application/xml and */*+xml.
func isXMLMediaType(contentType string) bool {
	mediaType, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return mediaType == "text/xml" || mediaType == "application/xml" || strings.HasSuffix(mediaType, "+xml")
}

// refuseRequest answers a refused request; the manager never sees it.
func (g *XMLGuard) refuseRequest(w http.ResponseWriter, r *http.Request, v *violation) error {
	g.count(dirRequest, resultRefused, v.reason)
	g.logger.Warn("xml request refused",
		zap.String("direction", dirRequest),
		zap.String("reason", v.reason),
		zap.Int("status", v.status),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.Int("bytes", v.size),
		zap.Error(v.err))
	return response.Refuse(w, v.status, 0, http.StatusText(v.status)+": the request was refused by the gateway's XML guard\n")
}

// switchingProtocols is the one response xml_guard does not hold: a
// switched protocol is no longer XML.
func switchingProtocols(status int) bool { return status == http.StatusSwitchingProtocols }

// serveChecked lets the chain answer into a recorder and forwards the
// response only once it has been checked.
func (g *XMLGuard) serveChecked(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	rec := response.NewRecorder(w, g.MaxSize, switchingProtocols)
	defer rec.Release()
	aborted, err := response.ServeNext(rec, r, next)
	switch {
	case rec.Ambiguous() != nil:
		return g.refuseResponse(w, r, rec, &violation{http.StatusBadGateway, reasonDuplicateHeader, rec.Len(), rec.Ambiguous()})
	case rec.Streamed() || (!rec.WroteHeader() && (aborted || err != nil)):
		// A switched protocol, or nothing answered yet: the chain's own
		// error (reverse_proxy's 502) goes to the client as it is.
		if aborted {
			panic(http.ErrAbortHandler)
		}
		return err
	case rec.TooLarge():
		return g.refuseResponse(w, r, rec, g.tooLarge(http.StatusBadGateway, max(rec.Declared(), int64(rec.Len())+1)))
	case aborted || err != nil:
		return g.refuseResponse(w, r, rec, &violation{http.StatusBadGateway, reasonIncomplete, rec.Len(), response.Incomplete(err)})
	}
	if v := g.checkResponse(r, rec); v != nil {
		return g.refuseResponse(w, r, rec, v)
	}
	return rec.Forward(w, r, false)
}

// checkResponse decides on a complete, buffered response.
func (g *XMLGuard) checkResponse(r *http.Request, rec *response.Recorder) *violation {
	status := rec.FinalStatus()
	if r.Method == http.MethodHead || rec.Len() == 0 || status == http.StatusNoContent || status == http.StatusNotModified {
		g.count(dirResponse, resultPassed, reasonNoBody)
		return nil
	}
	ct := rec.Held().Get("Content-Type")
	if status >= 200 && status < 300 {
		if check, v := g.checkResponseForm(rec, status, ct); !check {
			return v
		}
	} else if ct != "" && !isXMLMediaType(ct) {
		g.count(dirResponse, resultPassed, reasonNotXML)
		return nil
	}
	if v := g.checkDocument(rec.Body(), http.StatusBadGateway); v != nil {
		return v
	}
	g.count(dirResponse, resultPassed, reasonChecked)
	return nil
}

// checkResponseForm judges the form of a non-empty 2xx response before its
// XML is checked (check true). It refuses one whose encoding is not
// identity, whose body is not XML by its bytes (unless its media type is
// listed in allow_non_xml), or whose XML comes with a Content-Type that is
// neither XML nor listed. A listed non-XML body passes unchecked: counted
// here, check false and no violation.
func (g *XMLGuard) checkResponseForm(rec *response.Recorder, status int, ct string) (check bool, v *violation) {
	body := rec.Body()
	if err := response.IdentityEncoded(rec.Held()); err != nil {
		return false, &violation{http.StatusBadGateway, reasonContentEncoding, len(body), err}
	}
	isXML, err := xmlscan.Plain(body)
	if err != nil {
		return false, &violation{http.StatusBadGateway, reasonXMLEncoding, len(body), errors.Unwrap(err)}
	}
	listed := response.MediaTypeListed(rec.Held(), g.allowNonXML)
	switch {
	case !isXML && listed:
		g.count(dirResponse, resultPassed, reasonNotXML)
		return false, nil
	case !isXML:
		return false, &violation{http.StatusBadGateway, reasonNotXML, len(body), fmt.Errorf("manager answered %d with a body that is not XML, Content-Type %q not listed in allow_non_xml", status, ct)}
	case ct != "" && !isXMLMediaType(ct) && !listed:
		return false, &violation{http.StatusBadGateway, reasonContentType, len(body), fmt.Errorf("manager answered %d with Content-Type %q, not XML", status, ct)}
	}
	return true, nil
}

// refuseResponse answers 502; the client gets none of the manager's headers
// or bytes.
func (g *XMLGuard) refuseResponse(w http.ResponseWriter, r *http.Request, rec *response.Recorder, v *violation) error {
	g.count(dirResponse, resultRefused, v.reason)
	fields := []zap.Field{
		zap.String("direction", dirResponse),
		zap.String("reason", v.reason),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.Int("upstream_status", rec.FinalStatus()),
		zap.Int("upstream_bytes", v.size),
		zap.Error(v.err),
	}
	if name := response.HeaderName(v.err); name != "" {
		fields = append(fields, zap.String("header", name))
	}
	g.logger.Warn("xml response refused", fields...)
	return response.Refuse(w, http.StatusBadGateway, 0, "502 Bad Gateway: the manager's response was refused by the gateway's XML guard\n")
}

func (g *XMLGuard) count(direction, result, reason string) {
	g.results.WithLabelValues(direction, result, reason).Inc()
}

// onceBody is a checked request body. It can be read through once:
// after it has been closed, reads fail instead of starting again, so a retry
// further down the chain cannot send the body to the manager a second time.
type onceBody struct {
	rd     *bytes.Reader
	closed atomic.Bool
}

var errBodySent = errors.New("xml_guard: the request body was already sent once and is not replayed")

func (b *onceBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodySent
	}
	return b.rd.Read(p)
}

func (b *onceBody) Close() error {
	b.closed.Store(true)
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*XMLGuard)(nil)
	_ caddy.Validator             = (*XMLGuard)(nil)
	_ caddyhttp.MiddlewareHandler = (*XMLGuard)(nil)
)

package caddymodule

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
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/policyguard"
)

func init() {
	caddy.RegisterModule(XMLGuard{})
	httpcaddyfile.RegisterHandlerDirective("xml_guard", parseXMLGuard)
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
	roots       []xmlGuardRoot
	logger      *zap.Logger
	results     *prometheus.CounterVec
}

// xmlGuardRoot is an allowed root element; anyNamespace when the name was
// given without one.
type xmlGuardRoot struct {
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
	xmlGuardRequest  = "request"
	xmlGuardResponse = "response"

	xmlGuardPassed  = "passed"
	xmlGuardRefused = "refused"

	xmlGuardChecked      = "checked"
	xmlGuardNoBody       = "no_body"
	xmlGuardNotXML       = "not_xml"
	xmlGuardContentType  = "content_type"
	xmlGuardIncomplete   = "incomplete"
	xmlGuardUnlistedRoot = "unlisted_root"
	xmlGuardSOAPAction   = "soap_action"
	xmlGuardReplay       = "replay"

	xmlGuardDuplicateHeader = reasonDuplicateHeader
	xmlGuardContentEncoding = reasonContentEncoding
	xmlGuardXMLEncoding     = reasonXMLEncoding
)

var xmlGuardResults = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "legacygate_xml_guard_results_total",
	Help: "Requests and responses handled by xml_guard, by direction (request, response), result (passed, refused) and reason.",
}, []string{"direction", "result", "reason"})

// Provision applies the defaults, parses Roots and registers the metric.
func (g *XMLGuard) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	if err := g.Validate(); err != nil {
		return err
	}
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
		root, _ := parseXMLGuardRoot(s)
		g.roots = append(g.roots, root)
	}
	var err error
	if g.allowNonXML, err = normalizeMediaTypes("xml_guard: allow_non_xml", g.AllowNonXML); err != nil {
		return err
	}
	g.results, err = registerCollector(ctx.GetMetricsRegistry(), xmlGuardResults)
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
	if _, err := normalizeMediaTypes("xml_guard: allow_non_xml", g.AllowNonXML); err != nil {
		return err
	}
	for _, s := range g.Roots {
		if _, err := parseXMLGuardRoot(s); err != nil {
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

// parseXMLGuardRoot reads "local" or "{namespace}local".
func parseXMLGuardRoot(s string) (xmlGuardRoot, error) {
	local, anyNamespace := s, true
	var space string
	if rest, ok := strings.CutPrefix(s, "{"); ok {
		ns, name, found := strings.Cut(rest, "}")
		if !found || ns == "" {
			return xmlGuardRoot{}, fmt.Errorf("%q: want local or {namespace}local", s)
		}
		space, local, anyNamespace = ns, name, false
	}
	if local == "" || strings.ContainsAny(local, " \t\r\n<>/:{}\"'&") {
		return xmlGuardRoot{}, fmt.Errorf("%q: %q is not an element's local name", s, local)
	}
	return xmlGuardRoot{name: xml.Name{Space: space, Local: local}, anyNamespace: anyNamespace}, nil
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
			g.count(xmlGuardRequest, xmlGuardRefused, xmlGuardReplay)
			g.logger.Warn("xml request not sent again",
				zap.String("direction", xmlGuardRequest),
				zap.String("reason", xmlGuardReplay),
				zap.String("method", r.Method),
				zap.String("path", r.URL.Path),
				zap.String("upstream", info.Conn.RemoteAddr().String()))
		},
	}
	return r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
}

// xmlGuardViolation is why a request or response was refused.
type xmlGuardViolation struct {
	status int // toward the client, for requests
	reason string
	size   int
	err    error
}

// checkRequest reads and checks r's body and, when it passes, puts the same
// bytes back as a body that can be read once.
func (g *XMLGuard) checkRequest(r *http.Request) *xmlGuardViolation {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		g.count(xmlGuardRequest, xmlGuardPassed, xmlGuardNoBody)
		return nil
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isXMLMediaType(ct) {
		return &xmlGuardViolation{http.StatusUnsupportedMediaType, xmlGuardContentType, 0, fmt.Errorf("Content-Type %q is not XML", ct)}
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
	g.count(xmlGuardRequest, xmlGuardPassed, xmlGuardChecked)
	r.Body = &xmlGuardBody{rd: bytes.NewReader(body)}
	r.GetBody = nil
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	r.Header.Del("Transfer-Encoding")
	return nil
}

// readRequestBody reads the whole body, at most MaxSize bytes.
func (g *XMLGuard) readRequestBody(r *http.Request) ([]byte, *xmlGuardViolation) {
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(r.Body, g.MaxSize+1))
	switch {
	case err != nil:
		return nil, &xmlGuardViolation{http.StatusBadRequest, xmlGuardIncomplete, int(n), fmt.Errorf("reading the request body: %w", err)}
	case n > g.MaxSize:
		return nil, g.tooLarge(http.StatusRequestEntityTooLarge, n)
	case r.ContentLength > 0 && n != r.ContentLength:
		return nil, &xmlGuardViolation{http.StatusBadRequest, xmlGuardIncomplete, int(n), fmt.Errorf("Content-Length %d, body %d bytes", r.ContentLength, n)}
	}
	return buf.Bytes(), nil
}

func (g *XMLGuard) tooLarge(status int, size int64) *xmlGuardViolation {
	return &xmlGuardViolation{status, policyguard.ReasonTooLarge, int(min(size, g.MaxSize+1)), fmt.Errorf("body of at least %d bytes is over max_size (%d bytes)", size, g.MaxSize)}
}

// checkDocument runs the XML check and the root check; status is what a
// failure answers.
func (g *XMLGuard) checkDocument(body []byte, status int) *xmlGuardViolation {
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
		return &xmlGuardViolation{status, reason, len(body), err}
	}
	if !g.rootAllowed(root) {
		return &xmlGuardViolation{status, xmlGuardUnlistedRoot, len(body), fmt.Errorf("root element {%s}%s is not listed in roots", root.Space, root.Local)}
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
func (g *XMLGuard) checkSOAPAction(r *http.Request, size int) *xmlGuardViolation {
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
	return &xmlGuardViolation{http.StatusBadRequest, xmlGuardSOAPAction, size, err}
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
func (g *XMLGuard) refuseRequest(w http.ResponseWriter, r *http.Request, v *xmlGuardViolation) error {
	g.count(xmlGuardRequest, xmlGuardRefused, v.reason)
	g.logger.Warn("xml request refused",
		zap.String("direction", xmlGuardRequest),
		zap.String("reason", v.reason),
		zap.Int("status", v.status),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.Int("bytes", v.size),
		zap.Error(v.err))
	return writeXMLGuardRefusal(w, v.status, http.StatusText(v.status)+": the request was refused by the gateway's XML guard\n")
}

// serveChecked lets the chain answer into a recorder and forwards the
// response only once it has been checked.
func (g *XMLGuard) serveChecked(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	rec := &xmlGuardRecorder{w: w, header: make(http.Header), limit: g.MaxSize}
	aborted, err := xmlGuardServeNext(rec, r, next)
	switch {
	case rec.ambiguous != nil:
		return g.refuseResponse(w, r, rec, &xmlGuardViolation{http.StatusBadGateway, xmlGuardDuplicateHeader, rec.body.Len(), rec.ambiguous})
	case rec.stream || (!rec.wroteHeader && (aborted || err != nil)):
		// A switched protocol, or nothing answered yet: the chain's own
		// error (reverse_proxy's 502) goes to the client as it is.
		if aborted {
			panic(http.ErrAbortHandler)
		}
		return err
	case rec.tooLarge:
		return g.refuseResponse(w, r, rec, g.tooLarge(http.StatusBadGateway, max(rec.declared, int64(rec.body.Len())+1)))
	case aborted || err != nil:
		return g.refuseResponse(w, r, rec, &xmlGuardViolation{http.StatusBadGateway, xmlGuardIncomplete, rec.body.Len(), incompleteError(err)})
	}
	if v := g.checkResponse(r, rec); v != nil {
		return g.refuseResponse(w, r, rec, v)
	}
	return rec.forward(r)
}

// checkResponse decides on a complete, buffered response.
func (g *XMLGuard) checkResponse(r *http.Request, rec *xmlGuardRecorder) *xmlGuardViolation {
	status := rec.statusCode()
	if r.Method == http.MethodHead || rec.body.Len() == 0 || status == http.StatusNoContent || status == http.StatusNotModified {
		g.count(xmlGuardResponse, xmlGuardPassed, xmlGuardNoBody)
		return nil
	}
	ct := rec.header.Get("Content-Type")
	if status >= 200 && status < 300 {
		if check, v := g.checkResponseForm(rec, status, ct); !check {
			return v
		}
	} else if ct != "" && !isXMLMediaType(ct) {
		g.count(xmlGuardResponse, xmlGuardPassed, xmlGuardNotXML)
		return nil
	}
	if v := g.checkDocument(rec.body.Bytes(), http.StatusBadGateway); v != nil {
		return v
	}
	g.count(xmlGuardResponse, xmlGuardPassed, xmlGuardChecked)
	return nil
}

// checkResponseForm judges the form of a non-empty 2xx response before its
// XML is checked (check true). It refuses one whose encoding is not
// identity, whose body is not XML by its bytes (unless its media type is
// listed in allow_non_xml), or whose XML comes with a Content-Type that is
// neither XML nor listed. A listed non-XML body passes unchecked: counted
// here, check false and no violation.
func (g *XMLGuard) checkResponseForm(rec *xmlGuardRecorder, status int, ct string) (check bool, v *xmlGuardViolation) {
	body := rec.body.Bytes()
	if err := identityEncoded(rec.header); err != nil {
		return false, &xmlGuardViolation{http.StatusBadGateway, xmlGuardContentEncoding, len(body), err}
	}
	isXML, err := plainXML(body)
	if err != nil {
		return false, &xmlGuardViolation{http.StatusBadGateway, xmlGuardXMLEncoding, len(body), errors.Unwrap(err)}
	}
	listed := mediaTypeListed(rec.header, g.allowNonXML)
	switch {
	case !isXML && listed:
		g.count(xmlGuardResponse, xmlGuardPassed, xmlGuardNotXML)
		return false, nil
	case !isXML:
		return false, &xmlGuardViolation{http.StatusBadGateway, xmlGuardNotXML, len(body), fmt.Errorf("manager answered %d with a body that is not XML, Content-Type %q not listed in allow_non_xml", status, ct)}
	case ct != "" && !isXMLMediaType(ct) && !listed:
		return false, &xmlGuardViolation{http.StatusBadGateway, xmlGuardContentType, len(body), fmt.Errorf("manager answered %d with Content-Type %q, not XML", status, ct)}
	}
	return true, nil
}

// refuseResponse answers 502; the client gets none of the manager's headers
// or bytes.
func (g *XMLGuard) refuseResponse(w http.ResponseWriter, r *http.Request, rec *xmlGuardRecorder, v *xmlGuardViolation) error {
	g.count(xmlGuardResponse, xmlGuardRefused, v.reason)
	fields := []zap.Field{
		zap.String("direction", xmlGuardResponse),
		zap.String("reason", v.reason),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.Int("upstream_status", rec.statusCode()),
		zap.Int("upstream_bytes", v.size),
		zap.Error(v.err),
	}
	if name := headerName(v.err); name != "" {
		fields = append(fields, zap.String("header", name))
	}
	g.logger.Warn("xml response refused", fields...)
	return writeXMLGuardRefusal(w, http.StatusBadGateway, "502 Bad Gateway: the manager's response was refused by the gateway's XML guard\n")
}

func writeXMLGuardRefusal(w http.ResponseWriter, status int, body string) error {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := io.WriteString(w, body)
	return err
}

func (g *XMLGuard) count(direction, result, reason string) {
	g.results.WithLabelValues(direction, result, reason).Inc()
}

// xmlGuardServeNext runs the rest of the chain. reverse_proxy reports a
// response body that failed mid-copy by panicking with
// http.ErrAbortHandler; that is recovered here and reported as aborted.
func xmlGuardServeNext(rec *xmlGuardRecorder, r *http.Request, next caddyhttp.Handler) (aborted bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler { //nolint:errorlint // the sentinel is panicked, not wrapped
				panic(v)
			}
			aborted = true
		}
	}()
	return false, next.ServeHTTP(rec, r)
}

// xmlGuardBody is a checked request body. It can be read through once:
// after it has been closed, reads fail instead of starting again, so a retry
// further down the chain cannot send the body to the manager a second time.
type xmlGuardBody struct {
	rd     *bytes.Reader
	closed atomic.Bool
}

var errXMLGuardBodySent = errors.New("xml_guard: the request body was already sent once and is not replayed")

func (b *xmlGuardBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errXMLGuardBodySent
	}
	return b.rd.Read(p)
}

func (b *xmlGuardBody) Close() error {
	b.closed.Store(true)
	return nil
}

// xmlGuardRecorder holds the manager's response until it has been checked.
// A 101 Switching Protocols response is passed straight through (stream).
type xmlGuardRecorder struct {
	w           http.ResponseWriter
	header      http.Header
	body        bytes.Buffer
	limit       int64
	declared    int64 // the Content-Length over limit, when that made it tooLarge
	status      int
	wroteHeader bool
	stream      bool
	tooLarge    bool
	ambiguous   error // a repeated singleton header: nothing is forwarded
}

// Header is the recorder's own map, or the client's once streaming.
func (rec *xmlGuardRecorder) Header() http.Header {
	if rec.stream {
		return rec.w.Header()
	}
	return rec.header
}

// WriteHeader records the status. Informational responses other than 101
// are not forwarded. A repeated singleton header makes the response
// ambiguous, whatever its status: it is held and refused.
func (rec *xmlGuardRecorder) WriteHeader(status int) {
	if rec.wroteHeader || (status >= 100 && status < 200 && status != http.StatusSwitchingProtocols) {
		return
	}
	rec.status, rec.wroteHeader = status, true
	if rec.ambiguous = repeatedSingleton(rec.header); rec.ambiguous != nil {
		return
	}
	if status == http.StatusSwitchingProtocols {
		rec.stream = true
		copyHeaderMap(rec.w.Header(), rec.header)
		rec.w.WriteHeader(status)
		return
	}
	if cl, err := strconv.ParseInt(rec.header.Get("Content-Length"), 10, 64); err == nil && cl > rec.limit {
		rec.declared, rec.tooLarge = cl, true
	}
}

func (rec *xmlGuardRecorder) Write(p []byte) (int, error) {
	rec.WriteHeader(http.StatusOK)
	if rec.ambiguous != nil {
		return 0, errXMLGuardAmbiguous
	}
	if rec.stream {
		return rec.w.Write(p)
	}
	if rec.tooLarge || int64(rec.body.Len()+len(p)) > rec.limit {
		rec.tooLarge = true
		return 0, errXMLGuardResponseTooLarge
	}
	return rec.body.Write(p)
}

var (
	errXMLGuardResponseTooLarge = errors.New("xml_guard: response body over max_size")
	errXMLGuardAmbiguous        = errors.New("xml_guard: response refused for a repeated singleton header")
)

// FlushError flushes a streamed response; a held one is not flushed.
func (rec *xmlGuardRecorder) FlushError() error {
	if !rec.stream {
		return nil
	}
	return http.NewResponseController(rec.w).Flush()
}

// Unwrap gives http.ResponseController the client's writer (deadlines,
// hijacking after a 101).
func (rec *xmlGuardRecorder) Unwrap() http.ResponseWriter { return rec.w }

func (rec *xmlGuardRecorder) statusCode() int {
	if rec.status == 0 {
		return http.StatusOK
	}
	return rec.status
}

// forward writes the held response unchanged: the manager's headers
// (trailers left out), its status and its bytes, with a Content-Length
// counted from them.
func (rec *xmlGuardRecorder) forward(r *http.Request) error {
	h := rec.w.Header()
	copyResponseHeader(h, rec.header)
	status := rec.statusCode()
	if r.Method != http.MethodHead && status != http.StatusNoContent && status != http.StatusNotModified {
		h.Set("Content-Length", strconv.Itoa(rec.body.Len()))
	}
	rec.w.WriteHeader(status)
	if rec.body.Len() == 0 {
		return nil
	}
	_, err := rec.w.Write(rec.body.Bytes())
	return err
}

func parseXMLGuard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(XMLGuard)
	err := g.UnmarshalCaddyfile(h.Dispenser)
	return g, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	xml_guard [<matcher>] {
//	    max_size     <size>
//	    max_depth    <n>
//	    max_elements <n>
//	    roots        <element> [<element>...]
//	    soap_actions <action> [<action>...]
//	    requests     on|off
//	    responses    on|off
//	    allow_non_xml <media-type> [<media-type>...]
//	}
//
// The block is optional: `xml_guard /MAWebService2/*` checks requests and
// responses with the defaults. Sizes take units (1MiB, 512KB) or plain
// bytes. An element is a local name (Envelope, any namespace) or
// {namespace}local. roots and soap_actions may be repeated; their lists add
// up. Actions are written without the quotes the SOAPAction header carries.
// allow_non_xml (repeatable, lists add up) names the media types, such as
// text/plain, whose 2xx response bodies may pass although they are not XML;
// without it such a response is refused with a 502. Whether a body is XML
// is decided by its bytes: an XML body is checked whatever its Content-Type.
// A response that repeats Content-Encoding, Content-Type, Content-Length or
// Transfer-Encoding, or whose 2xx body is encoded other than identity, is
// refused too.
func (g *XMLGuard) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "max_size":
			g.MaxSize, err = sizeArg(d)
		case "max_depth":
			g.MaxDepth, err = xmlGuardCountArg(d)
		case "max_elements":
			g.MaxElements, err = xmlGuardCountArg(d)
		case "roots":
			g.Roots, err = appendArgs(d, g.Roots)
		case "soap_actions":
			g.SOAPActions, err = appendArgs(d, g.SOAPActions)
		case "requests":
			g.SkipRequests, err = xmlGuardOffArg(d)
		case "responses":
			g.SkipResponses, err = xmlGuardOffArg(d)
		case "allow_non_xml":
			g.AllowNonXML, err = appendArgs(d, g.AllowNonXML)
		default:
			return d.Errf("xml_guard: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// xmlGuardCountArg reads one positive whole number.
func xmlGuardCountArg(d *caddyfile.Dispenser) (int, error) {
	field := d.Val()
	if !d.NextArg() {
		return 0, d.Errf("%s: want a positive whole number", field)
	}
	n, err := strconv.Atoi(d.Val())
	if err != nil || n <= 0 {
		return 0, d.Errf("%s: %q is not a positive whole number", field, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return n, nil
}

// xmlGuardOffArg reads on or off and reports whether it was off.
func xmlGuardOffArg(d *caddyfile.Dispenser) (bool, error) {
	field := d.Val()
	if !d.NextArg() {
		return false, d.Errf("%s: want on or off", field)
	}
	value := d.Val()
	if d.NextArg() {
		return false, d.ArgErr()
	}
	switch value {
	case "on":
		return false, nil
	case "off":
		return true, nil
	}
	return false, d.Errf("%s: %q is neither on nor off", field, value)
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*XMLGuard)(nil)
	_ caddy.Validator             = (*XMLGuard)(nil)
	_ caddyhttp.MiddlewareHandler = (*XMLGuard)(nil)
	_ caddyfile.Unmarshaler       = (*XMLGuard)(nil)
)

// Package managerrequest is the manager_request HTTP handler: the first
// thing every request to a manager site meets. It reduces the request to
// the one canonical form a Windows manager and the gateway's own matchers
// agree on (or refuses it), enforces an exact allow-list of paths and
// methods, and keeps manager banners, internal addresses and stack traces
// out of the answers.
package managerrequest

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/caddymodule/internal/response"
	"github.com/legacygate/legacygate/internal/canonical"
	"github.com/legacygate/legacygate/internal/query"
)

func init() {
	caddy.RegisterModule(ManagerRequest{})
	httpcaddyfile.RegisterHandlerDirective("manager_request", parseCaddyfile)
	// First of all handlers: nothing may match on, log or forward a spelling
	// other than the canonical one. "tracing" is first in Caddy's order.
	httpcaddyfile.RegisterDirectiveOrder("manager_request", httpcaddyfile.Before, "tracing")
}

// ManagerRequest canonicalizes requests to a manager site and cleans the
// manager's answers. A request is refused (never passed on) when its path
// or query is ambiguous for a Windows server (400), its path is not listed
// (404), its method is not listed for the path (405, with Allow), it has a
// body where the protocol has none or repeats a singleton header (400), or
// its head is larger than max_header_size (431). Accepted requests are
// rewritten to the listed spelling of the path and of decision query keys,
// and lose forwarding headers the peer may not set.
type ManagerRequest struct {
	// Allow lists the paths served and the methods allowed on each. A path
	// ending in "/*" is a prefix. Matching is ASCII case-insensitive and the
	// request is rewritten to the listed spelling. Required.
	Allow []AllowRule `json:"allow,omitempty"`

	// DecisionKeys are the query keys the gateway decides on (heartbeat_limit
	// keys, bridge and migration rules, client_id). A request naming one twice
	// (after decoding, case-insensitively) is refused; each is rewritten to
	// its listed spelling. At most 64.
	DecisionKeys []string `json:"decision_keys,omitempty"`

	// MaxHeaderSize is the largest request head accepted, in bytes: the
	// request line and every header field counted as "name: value\r\n",
	// Host included. Default: the server's max_header_size.
	MaxHeaderSize int `json:"max_header_size,omitempty"`

	// KeepHeaders names manager response headers kept although they are on
	// the default drop list (Server, Via, X-Powered-By, X-AspNet*,
	// MicrosoftOfficeWebServer, MicrosoftSharePointTeamServices,
	// X-SourceFiles, Set-Cookie).
	KeepHeaders []string `json:"keep_headers,omitempty"`

	// FixedErrorBody replaces the body of a 5xx answer from the manager with
	// "<code> <status text>\n", keeping the status. Default true.
	FixedErrorBody *bool `json:"fixed_error_body,omitempty"`

	exact          []allowEntry
	prefixes       []allowEntry // longest first
	fixedErrorBody bool
	bodyWait       time.Duration // emptyBodyWait unless a test shortens it
	logger         *zap.Logger
	passed         prometheus.Counter
	refused        prometheus.Counter
	refusals       map[string]prometheus.Counter
	replaced       map[string]prometheus.Counter
}

// AllowRule is one allowed path and its methods.
type AllowRule struct {
	// Path is an exact path ("/secars/secars.dll") or a prefix ending in
	// "/*" ("/content/*"), in canonical form (no escapes).
	Path string `json:"path"`
	// Methods are upper-case method names, e.g. GET, POST.
	Methods []string `json:"methods"`
}

type allowEntry struct {
	path    string // listed spelling; for a prefix, up to and including its final '/'
	methods []string
	allow   string // the Allow header value
}

// CaddyModule returns the Caddy module information.
func (ManagerRequest) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.manager_request",
		New: func() caddy.Module { return new(ManagerRequest) },
	}
}

// Reasons of this module (canonical.Reasons are the others).
const (
	reasonHeaderTooLarge   = "header_too_large"
	reasonDuplicateHeader  = "duplicate_header"
	reasonPathNotAllowed   = "path_not_allowed"
	reasonMethodNotAllowed = "method_not_allowed"
	reasonBodyNotAllowed   = "body_not_allowed"
	reasonUpgrade          = "upgrade"
	reasonTrailer          = "trailer"
	reasonBadHost          = "bad_host"

	reasonDuplicateResponseHeader = "duplicate_response_header"
	reasonManagerErrorBody        = "manager_error_body"
)

var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "legacygate_manager_request_total",
		Help: "Requests judged by manager_request, by result (passed, refused).",
	}, []string{"result"})
	refusalsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "legacygate_manager_request_refusals_total",
		Help: "Requests refused by manager_request, by reason.",
	}, []string{"reason"})
	replacedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "legacygate_manager_response_replaced_total",
		Help: "Manager answers whose body manager_request replaced, by reason (manager_error_body, duplicate_response_header).",
	}, []string{"reason"})
)

// Provision checks the configuration and builds the allow-list.
func (m *ManagerRequest) Provision(ctx caddy.Context) error {
	if err := m.Validate(); err != nil {
		return err
	}
	m.logger = ctx.Logger()
	m.fixedErrorBody = m.FixedErrorBody == nil || *m.FixedErrorBody
	m.exact, m.prefixes = nil, nil
	for _, rule := range m.Allow {
		path, prefix := strings.CutSuffix(rule.Path, "*")
		list := &m.exact
		if prefix {
			list = &m.prefixes
		}
		i := slices.IndexFunc(*list, func(e allowEntry) bool { return e.path == path })
		if i < 0 {
			*list = append(*list, allowEntry{path: path})
			i = len(*list) - 1
		}
		e := &(*list)[i]
		for _, method := range rule.Methods {
			if !slices.Contains(e.methods, method) {
				e.methods = append(e.methods, method)
			}
		}
		e.allow = strings.Join(e.methods, ", ")
	}
	sort.SliceStable(m.prefixes, func(i, j int) bool { return len(m.prefixes[i].path) > len(m.prefixes[j].path) })

	reg := ctx.GetMetricsRegistry()
	requests, err := metrics.Register(reg, requestsTotal)
	if err != nil {
		return err
	}
	refusals, err := metrics.Register(reg, refusalsTotal)
	if err != nil {
		return err
	}
	replaced, err := metrics.Register(reg, replacedTotal)
	if err != nil {
		return err
	}
	m.passed, m.refused = requests.WithLabelValues("passed"), requests.WithLabelValues("refused")
	m.refusals = map[string]prometheus.Counter{}
	for _, reason := range append(slices.Clone(canonical.Reasons),
		reasonHeaderTooLarge, reasonDuplicateHeader, reasonPathNotAllowed, reasonMethodNotAllowed, reasonBodyNotAllowed,
		reasonUpgrade, reasonTrailer, reasonBadHost) {
		m.refusals[reason] = refusals.WithLabelValues(reason)
	}
	m.replaced = map[string]prometheus.Counter{
		reasonDuplicateResponseHeader: replaced.WithLabelValues(reasonDuplicateResponseHeader),
		reasonManagerErrorBody:        replaced.WithLabelValues(reasonManagerErrorBody),
	}
	return nil
}

// Validate names the first wrong field.
func (m *ManagerRequest) Validate() error {
	if len(m.Allow) == 0 {
		return errors.New("manager_request: allow: at least one path and its methods are required")
	}
	spelled := map[string]string{} // lower-case → listed spelling
	for _, rule := range m.Allow {
		if err := validateAllowPath(rule.Path); err != nil {
			return fmt.Errorf("manager_request: allow: %w", err)
		}
		lower := strings.ToLower(rule.Path)
		if prev, ok := spelled[lower]; ok && prev != rule.Path {
			return fmt.Errorf("manager_request: allow: %q and %q are one path spelled two ways; list one spelling", prev, rule.Path)
		}
		spelled[lower] = rule.Path
		if len(rule.Methods) == 0 {
			return fmt.Errorf("manager_request: allow: %q: at least one method is required", rule.Path)
		}
		for _, method := range rule.Methods {
			if !isMethodToken(method) {
				return fmt.Errorf("manager_request: allow: %q: method %q is not an upper-case name such as GET", rule.Path, method)
			}
		}
	}
	if len(m.DecisionKeys) > canonical.MaxDecisionKeys {
		return fmt.Errorf("manager_request: decision_keys: %d keys, at most %d", len(m.DecisionKeys), canonical.MaxDecisionKeys)
	}
	for i, key := range m.DecisionKeys {
		if !isKeyName(key) {
			return fmt.Errorf("manager_request: decision_keys: %q is not a plain query key (letters, digits, '-', '_', '.')", key)
		}
		for _, prev := range m.DecisionKeys[:i] {
			if query.EqualFold(prev, key) {
				return fmt.Errorf("manager_request: decision_keys: %q is listed twice", key)
			}
		}
	}
	if m.MaxHeaderSize < 0 {
		return fmt.Errorf("manager_request: max_header_size: %d is negative", m.MaxHeaderSize)
	}
	for _, name := range m.KeepHeaders {
		if !onDropList(name) {
			return fmt.Errorf("manager_request: keep_header: %q is not dropped by default (the drop list: %s, X-AspNet*)", name, strings.Join(dropNames, ", "))
		}
	}
	return nil
}

// validateAllowPath checks that an allow path is in canonical form, so that
// the spelling the manager receives is itself one the gateway accepts.
func validateAllowPath(path string) error {
	base, prefix := strings.CutSuffix(path, "/*")
	if prefix && base == "" {
		base = "/"
	}
	got, err := canonical.Path(base)
	if err != nil {
		return fmt.Errorf("%q is not a canonical path: %w", path, err)
	}
	if got != base {
		return fmt.Errorf("%q is not a canonical path: write it decoded, as %q", path, got)
	}
	return nil
}

func isMethodToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'A' || c > 'Z') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

func isKeyName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// ServeHTTP refuses the request or rewrites it to its canonical form and
// passes it on with a response writer that cleans the answer.
func (m *ManagerRequest) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// Caddy pre-sets its banner; removing it here covers refusals and the
	// error pages of later handlers too.
	delete(w.Header(), "Server")
	stripForwarding(r.Header, caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey) == true)

	if limit := m.headerLimit(r); headSize(r, limit) > limit {
		return m.refuse(w, r, http.StatusRequestHeaderFieldsTooLarge, reasonHeaderTooLarge, "")
	}
	if response.Repeated(r.Header, singletonRequestHeaders) != "" {
		return m.refuse(w, r, http.StatusBadRequest, reasonDuplicateHeader, "")
	}
	if !validHost(r.Host) {
		return m.refuse(w, r, http.StatusBadRequest, reasonBadHost, "")
	}
	// An upgrade (h2c, WebSocket) would turn the connection to the manager
	// into a tunnel that no later request is judged on; the client
	// protocol never asks for one.
	if _, ok := r.Header["Upgrade"]; ok || r.Header["Http2-Settings"] != nil ||
		httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		return m.refuse(w, r, http.StatusBadRequest, reasonUpgrade, "")
	}
	// Request trailers reach the manager as fields after the body, with
	// chunked framing the client did not send; the protocol has none.
	if len(r.Trailer) > 0 || r.Header["Trailer"] != nil {
		return m.refuse(w, r, http.StatusBadRequest, reasonTrailer, "")
	}
	dropUnderscoreNames(r.Header)

	rawPath, rawQuery := r.URL.EscapedPath(), r.URL.RawQuery
	if r.RequestURI != "" {
		// The target as sent: r.URL is Go's reading of it, which may differ
		// (a raw '\' shows up re-escaped as %5C).
		rawPath, rawQuery, _ = strings.Cut(r.RequestURI, "?")
	}
	path, err := canonical.Path(rawPath)
	if err != nil {
		return m.refuse(w, r, http.StatusBadRequest, reasonOf(err), "")
	}
	query, err := canonical.Query(rawQuery, m.DecisionKeys)
	if err != nil {
		return m.refuse(w, r, http.StatusBadRequest, reasonOf(err), "")
	}
	entry, path := m.match(path)
	if entry == nil {
		return m.refuse(w, r, http.StatusNotFound, reasonPathNotAllowed, "")
	}
	if !slices.Contains(entry.methods, r.Method) {
		return m.refuse(w, r, http.StatusMethodNotAllowed, reasonMethodNotAllowed, entry.allow)
	}
	if (r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions) &&
		m.hasBody(w, r) {
		return m.refuse(w, r, http.StatusBadRequest, reasonBodyNotAllowed, "")
	}

	r.URL.Path, r.URL.RawPath = path, ""
	if path != rawPath || query != rawQuery {
		r.URL.RawQuery = query
		r.RequestURI = r.URL.RequestURI()
	}
	m.passed.Inc()

	rw := &responseWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, m: m, r: r}
	err = next.ServeHTTP(rw, r)
	if !rw.wroteHeader {
		// Nothing was written (an error for Caddy's error routes, or an
		// implicit 200): the header map may still carry manager fields.
		rw.clean(w.Header())
	}
	// Trailers the proxy set after the body would be sent once this
	// returns, past clean: Set-Cookie, Server or Content-Encoding as a
	// trailer. The client protocol has none.
	for name := range w.Header() {
		if strings.HasPrefix(name, http.TrailerPrefix) || rw.trailers[http.CanonicalHeaderKey(name)] {
			delete(w.Header(), name)
		}
	}
	return err
}

// emptyBodyWait bounds how long an HTTP/2 or HTTP/3 request of unknown
// length may take to end its stream before it is taken to carry a body.
// Honest clients end it with the header block or right after.
const emptyBodyWait = 5 * time.Second

// hasBody reports whether a request whose method has no body carries one.
// HTTP/1.x frames a body with Content-Length or Transfer-Encoding only.
// HTTP/2 and HTTP/3 may leave the length unknown (-1): quic-go does so for
// every request without Content-Length, x/net/http2 when the header block
// did not end the stream. Then only the stream tells: one byte is read,
// bounded by bodyWait and the request's context; end of stream proves
// there is none, and the request becomes the canonical bodiless one
// (http.NoBody, length 0), so no proxy sends it up with chunked framing.
// Data, an error or no answer in time count as a body: nothing read is
// ever passed on, and a refused stream is ended by the server.
func (m *ManagerRequest) hasBody(w http.ResponseWriter, r *http.Request) bool {
	if r.ContentLength > 0 || len(r.TransferEncoding) > 0 {
		return true
	}
	if r.ProtoMajor < 2 {
		return r.ContentLength != 0
	}
	if r.ContentLength == 0 {
		// A declared length of 0 is held by the protocol layer: more data
		// resets the stream.
		return false
	}
	if r.Body == nil || r.Body == http.NoBody {
		r.Body, r.ContentLength = http.NoBody, 0
		return false
	}
	wait := m.bodyWait
	if wait <= 0 {
		wait = emptyBodyWait
	}
	// Unblocks the read on the server's own stream; where the writer
	// cannot (ErrNotSupported), the timer below still bounds the wait.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(wait))
	body := r.Body
	result := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := io.ReadAtLeast(body, b[:], 1)
		result <- err
	}()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case err := <-result:
		if !errors.Is(err, io.EOF) {
			return true
		}
	case <-timer.C:
		return true
	case <-r.Context().Done():
		return true
	}
	r.Body, r.ContentLength = http.NoBody, 0
	return false
}

// headerLimit is max_header_size, else the server's max_header_size.
func (m *ManagerRequest) headerLimit(r *http.Request) int {
	if m.MaxHeaderSize > 0 {
		return m.MaxHeaderSize
	}
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil && srv.MaxHeaderBytes > 0 {
		return srv.MaxHeaderBytes
	}
	return 16 << 10 // Caddy's default when the server sets none
}

// headSize counts the request line and header fields as
// "name: value\r\n" each, Host included, stopping once past limit. Go's
// server admits up to 4 KiB more than its MaxHeaderBytes; this holds the
// configured value.
func headSize(r *http.Request, limit int) int {
	target := len(r.RequestURI)
	if target == 0 {
		target = len(r.URL.EscapedPath()) + 1 + len(r.URL.RawQuery)
	}
	n := len(r.Method) + 1 + target + 1 + len(r.Proto) + 2
	if _, ok := r.Header["Host"]; !ok && r.Host != "" {
		n += len("Host: ") + len(r.Host) + 2
	}
	for name, values := range r.Header {
		for _, v := range values {
			n += len(name) + 2 + len(v) + 2
		}
		if n > limit {
			return n
		}
	}
	return n
}

// singletonRequestHeaders may appear once: two values let the gateway and
// the manager each read a different one.
var singletonRequestHeaders = []string{"Host", "Content-Length", "Content-Type", "Transfer-Encoding", "Content-Encoding", "Authorization", "Expect"}

// validHost reports whether the Host field (which the proxy passes on as
// X-Forwarded-Host) is a name or address with at most a numeric port:
// Caddy's host matcher ignores what follows the colon, the manager may not.
// An absent Host (HTTP/1.0 clients) is no ambiguity and passes.
func validHost(host string) bool {
	if host == "" {
		return true
	}
	name, port, found := strings.Cut(host, ":")
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return false
		}
		name, port, found = host[:end+1], "", false
		if rest := host[end+1:]; rest != "" {
			if rest[0] != ':' {
				return false
			}
			port, found = rest[1:], true
		}
	} else if strings.Contains(port, ":") {
		return false
	}
	if name == "" || found && (port == "" || len(port) > 5) {
		return false
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	return true
}

// dropUnderscoreNames deletes fields whose name holds '_': IIS and other
// CGI-style servers read "Content_Type" and "Content-Type" (or
// "X_Endpoint_Id" and "X-Endpoint-Id") as one variable, so a client could
// send the manager a second value of a field the gateway judged. Apache 2.4
// and nginx drop them too.
func dropUnderscoreNames(h http.Header) {
	for name := range h {
		if strings.Contains(name, "_") {
			delete(h, name)
		}
	}
}

// stripForwarding deletes the forwarding headers a client may not set. A
// trusted proxy (Caddy's trusted_proxies) keeps X-Forwarded-For, -Proto and
// -Host, spelled with hyphens; X-Original-URL and X-Rewrite-URL go always, as IIS URL Rewrite
// serves the path they name instead of the request's. Names compare with
// '_' equal to '-', as CGI-style servers read them.
func stripForwarding(h http.Header, trusted bool) {
	for name := range h {
		if !headerNameIs(name, "X-Forwarded-", true) &&
			!headerNameIs(name, "X-Real-IP", false) &&
			!headerNameIs(name, "Forwarded", false) &&
			!headerNameIs(name, "X-Client-IP", false) &&
			!headerNameIs(name, "True-Client-IP", false) &&
			!headerNameIs(name, "X-Original-URL", false) &&
			!headerNameIs(name, "X-Rewrite-URL", false) {
			continue
		}
		// Only the hyphenated spellings: an underscore variant from a
		// trusted proxy is still the client's, passed along.
		if trusted && (query.EqualFold(name, "X-Forwarded-For") ||
			query.EqualFold(name, "X-Forwarded-Proto") ||
			query.EqualFold(name, "X-Forwarded-Host")) {
			continue
		}
		delete(h, name)
	}
}

// headerNameIs compares a header name with want (or its prefix), ASCII
// case-insensitively and with '_' and '-' equal.
func headerNameIs(name, want string, prefix bool) bool {
	if len(name) < len(want) || !prefix && len(name) != len(want) {
		return false
	}
	for i := 0; i < len(want); i++ {
		a, b := name[i], want[i]
		if a == '_' {
			a = '-'
		}
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// match finds the allow entry for the decoded path and returns the path
// rewritten to its listed spelling.
func (m *ManagerRequest) match(path string) (*allowEntry, string) {
	for i := range m.exact {
		if query.EqualFold(path, m.exact[i].path) {
			return &m.exact[i], m.exact[i].path
		}
	}
	for i := range m.prefixes {
		e := &m.prefixes[i]
		if len(path) > len(e.path) && query.HasPrefixFold(path, e.path) {
			if path[:len(e.path)] == e.path {
				return e, path
			}
			return e, e.path + path[len(e.path):]
		}
	}
	return nil, ""
}

func reasonOf(err error) string {
	var cerr *canonical.Error
	if errors.As(err, &cerr) {
		return cerr.Reason
	}
	return canonical.ReasonRequestTarget
}

// refuse answers status with a fixed one-line body, logs why and counts it.
func (m *ManagerRequest) refuse(w http.ResponseWriter, r *http.Request, status int, reason, allow string) error {
	m.refused.Inc()
	if c, ok := m.refusals[reason]; ok {
		c.Inc()
	}
	m.logger.Info("manager request refused",
		zap.String("reason", reason),
		zap.Int("status", status),
		zap.String("method", r.Method),
		zap.String("path", logPath(r)),
		zap.String("remote", r.RemoteAddr))
	h := w.Header()
	if allow != "" {
		h.Set("Allow", allow)
	}
	if r.ProtoMajor < 2 && (reason == reasonBodyNotAllowed || reason == reasonHeaderTooLarge) {
		// The unread body or oversized head stays on the connection. HTTP/2
		// and HTTP/3 end just the stream, and forbid the field.
		h.Set("Connection", "close")
	}
	writeFixed(w, status)
	return nil
}

// writeFixed writes status with the body "<code> <status text>\n".
func writeFixed(w http.ResponseWriter, status int) {
	body := strconv.Itoa(status) + " " + http.StatusText(status) + "\n"
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// logPath is the request's path as sent, with bytes outside printable
// ASCII percent-escaped, cut at 256 bytes.
func logPath(r *http.Request) string {
	raw := r.URL.EscapedPath()
	if r.RequestURI != "" {
		raw, _, _ = strings.Cut(r.RequestURI, "?")
	}
	const max = 256
	var b strings.Builder
	for i := 0; i < len(raw) && b.Len() < max; i++ {
		c := raw[i]
		if c <= ' ' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	s := b.String()
	if len(s) > max {
		s = s[:max]
	}
	return s
}

// dropNames are the manager response headers removed unless kept; any
// X-AspNet* header goes too.
var dropNames = []string{
	"Server", "Via", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version",
	"MicrosoftOfficeWebServer", "MicrosoftSharePointTeamServices", "X-SourceFiles", "Set-Cookie",
}

func onDropList(name string) bool {
	if query.HasPrefixFold(name, "X-AspNet") {
		return true
	}
	for _, d := range dropNames {
		if query.EqualFold(name, d) {
			return true
		}
	}
	return false
}

// singletonResponseHeaders may appear once in an answer: a client and the
// gateway's guards could otherwise read different values.
var singletonResponseHeaders = []string{"Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "Location"}

// responseWriter cleans the answer's header on its way out and replaces
// the body of manager 5xx answers. It streams: only a replaced body is
// written by itself, and the original is then discarded.
type responseWriter struct {
	caddyhttp.ResponseWriterWrapper
	m           *ManagerRequest
	r           *http.Request
	wroteHeader bool
	discard     bool
	// trailers are the fields the answer announced as trailers, removed
	// with the Trailer field itself.
	trailers map[string]bool
}

func (rw *responseWriter) WriteHeader(status int) {
	if rw.wroteHeader {
		if !rw.discard {
			rw.ResponseWriter.WriteHeader(status) // let net/http report the superfluous call
		}
		return
	}
	h := rw.ResponseWriter.Header()
	if status < 200 {
		rw.clean(h)
		rw.ResponseWriter.WriteHeader(status)
		return
	}
	rw.wroteHeader = true
	if name := response.Repeated(h, singletonResponseHeaders); name != "" {
		rw.replace(http.StatusBadGateway, status, reasonDuplicateResponseHeader, name, true)
		return
	}
	rw.clean(h)
	if status >= 500 && rw.m.fixedErrorBody && rw.fromManager(status) {
		rw.replace(status, status, reasonManagerErrorBody, "", false)
		return
	}
	rw.ResponseWriter.WriteHeader(status)
}

// fromManager reports whether status is the manager's: reverse_proxy sets
// the placeholder just before it writes the manager's status, while the
// gateway's own 5xx (heartbeat_limit's 503, policy_guard's 502) come with
// none or with another code.
func (rw *responseWriter) fromManager(status int) bool {
	repl, ok := rw.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return false
	}
	v, ok := repl.Get("http.reverse_proxy.status_code")
	code, isInt := v.(int)
	return ok && isInt && code == status
}

// replace writes status with the fixed body instead of the answer. all
// clears every header field; otherwise only those describing the old body
// go (a 503's Retry-After stays).
func (rw *responseWriter) replace(status, original int, reason, header string, all bool) {
	h := rw.ResponseWriter.Header()
	for name := range h {
		if all || bodyHeader(name) {
			delete(h, name)
		}
	}
	rw.discard = true
	rw.m.replaced[reason].Inc()
	rw.m.logger.Info("manager answer replaced",
		zap.String("reason", reason),
		zap.Int("status", original),
		zap.String("header", header),
		zap.String("method", rw.r.Method),
		zap.String("path", rw.r.URL.Path),
		zap.String("remote", rw.r.RemoteAddr))
	writeFixed(rw.ResponseWriter, status)
}

func bodyHeader(name string) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "Content-Range",
		"Content-Language", "Content-Disposition", "Content-Location", "Content-Md5", "Etag", "Last-Modified", "Trailer":
		return true
	}
	return false
}

// clean drops the Trailer announcement (noting its names), the headers on
// the drop list, and reduces an absolute
// Location to its path and query.
func (rw *responseWriter) clean(h http.Header) {
	if announced, ok := h["Trailer"]; ok {
		if rw.trailers == nil {
			rw.trailers = map[string]bool{}
		}
		for _, v := range announced {
			for name := range strings.SplitSeq(v, ",") {
				rw.trailers[http.CanonicalHeaderKey(strings.TrimSpace(name))] = true
			}
		}
		delete(h, "Trailer")
	}
	for name := range h {
		if onDropList(name) && !rw.kept(name) {
			delete(h, name)
		}
	}
	if v, ok := h["Location"]; ok && len(v) == 1 {
		if loc, ok := relativeLocation(v[0]); ok {
			if loc != v[0] {
				h["Location"] = []string{loc}
			}
		} else {
			delete(h, "Location")
		}
	}
}

func (rw *responseWriter) kept(name string) bool {
	for _, k := range rw.m.KeepHeaders {
		if query.EqualFold(name, k) {
			return true
		}
	}
	return false
}

// relativeLocation reduces an absolute Location (scheme and/or host: the
// manager's own address) to its path and query, so the client resolves it
// against the gateway. A value that does not parse, or holds a backslash
// some clients read as '/', is refused.
func relativeLocation(v string) (string, bool) {
	if strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "//") && !strings.ContainsAny(v, "\\") &&
		!strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return v, true // the usual relative path: no parsing needed
	}
	u, err := url.Parse(v)
	if err != nil || strings.Contains(v, "\\") {
		return "", false
	}
	if u.Scheme == "" && u.Host == "" && !strings.HasPrefix(v, "//") {
		return v, true
	}
	if u.Opaque != "" {
		return "", false
	}
	loc := u.EscapedPath()
	if loc == "" {
		loc = "/"
	}
	if u.RawQuery != "" {
		loc += "?" + u.RawQuery
	}
	return loc, true
}

func (rw *responseWriter) Write(p []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.discard {
		return len(p), nil
	}
	return rw.ResponseWriter.Write(p)
}

// ReadFrom keeps io.Copy from reaching the underlying writer (and its
// implicit header) around WriteHeader.
func (rw *responseWriter) ReadFrom(src io.Reader) (int64, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.discard {
		return io.Copy(io.Discard, src)
	}
	return rw.ResponseWriterWrapper.ReadFrom(src)
}

// FlushError is what http.ResponseController calls; flushing before
// WriteHeader would send the header uncleaned.
func (rw *responseWriter) FlushError() error {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(rw.ResponseWriter).Flush()
}

// Flush implements http.Flusher.
func (rw *responseWriter) Flush() { _ = rw.FlushError() }

// Interface guards.
var (
	_ caddy.Provisioner           = (*ManagerRequest)(nil)
	_ caddy.Validator             = (*ManagerRequest)(nil)
	_ caddyhttp.MiddlewareHandler = (*ManagerRequest)(nil)
	_ http.Flusher                = (*responseWriter)(nil)
	_ io.ReaderFrom               = (*responseWriter)(nil)
)

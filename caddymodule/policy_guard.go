package caddymodule

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/policyguard"
)

func init() {
	caddy.RegisterModule(PolicyGuard{})
	httpcaddyfile.RegisterHandlerDirective("policy_guard", parsePolicyGuard)
}

// Defaults for the size settings.
const (
	defaultPolicyMaxSize   = 16 << 20
	defaultPolicyCacheSize = 64 << 20
)

// PolicyGuard verifies the manager's signature on policy payloads and re-signs
// them with the gateway's key (module http.handlers.policy_guard).
//
// It stands in front of reverse_proxy. For every request it handles (scope it
// with a matcher), it asks the manager for the identity encoding, then buffers
// each 2xx response, headers included, up to max_size. A body whose root
// element is one of Roots must carry an enveloped XML-DSig signature that
// verifies against one of the pinned upstream certificates; the client then
// receives the payload signed by the gateway's key, with Content-Length and
// ETag computed from those bytes. Refused with a 502, with nothing of the
// manager's response reaching the client: a listed root without a valid
// signature, a body cut short, over max_size, with any Content-Encoding but
// a single identity (identity was asked for), a partial (206) response,
// UTF-16 or UTF-32 text, XML whose prolog cannot be read to its root
// element, and a body that is not XML (see AllowNonXML). Whether a body is
// XML is decided by its bytes, never by its Content-Type. An answer of any
// status that repeats Content-Encoding, Content-Type, Content-Length or
// Transfer-Encoding is refused too: a client may read it differently.
//
// Passed through unchanged: non-2xx responses (a client never applies a policy
// from an error), responses without a body (204, 205, 304, or an empty 2xx
// body), non-XML bodies of a media type listed in AllowNonXML, and XML whose
// root is not listed, such as the unsigned index document at the same path
// (with a rewrite block, the index's settings serial gets a suffix; see
// IndexSerial).
type PolicyGuard struct {
	// UpstreamCerts are PEM files holding the manager certificates whose keys
	// may sign policy payloads. List the current and the next certificate
	// while the manager's key changes.
	UpstreamCerts []string `json:"upstream_certs,omitempty"`

	// SigningKeyFile is the PEM private key (RSA, 2048 bits or more) that
	// signs the payloads the clients receive. Without it, the legacygate
	// app chooses the key for each client (rotation windows).
	SigningKeyFile string `json:"signing_key_file,omitempty"`

	// SigningCertFile is the PEM certificate of SigningKeyFile, embedded in
	// every signature's KeyInfo. Clients trust this certificate.
	SigningCertFile string `json:"signing_cert_file,omitempty"`

	// Roots are the local names of the root elements that must be signed,
	// for example Profile and ServerSettings.
	Roots []string `json:"roots,omitempty"`

	// AllowSHA1 accepts RSA-SHA1 signatures and SHA-1 digests from the
	// manager, for managers installed before SHA-256 certificates. The
	// gateway always signs with SHA-256.
	AllowSHA1 bool `json:"allow_sha1,omitempty"`

	// IgnoreExpiry accepts pinned certificates outside their validity dates;
	// legacy self-signed manager certificates are often expired.
	IgnoreExpiry bool `json:"ignore_expiry,omitempty"`

	// MaxSize is the largest response body buffered for verification, in
	// bytes. A larger body in scope is refused. Default 16 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// CacheSize bounds the cache of re-signed payloads, in bytes. Default 64 MiB.
	CacheSize int64 `json:"cache_size,omitempty"`

	// Rewrite rewrites settings documents between verification and signing
	// (see GuardRewrite). Nil: payloads are re-signed unchanged.
	Rewrite *GuardRewrite `json:"rewrite,omitempty"`

	// AllowNonXML lists the media types (type/subtype, such as text/plain)
	// of the 2xx answers in scope that may pass although their body is not
	// XML, such as the "OK" of a reachability probe or a log upload. A body
	// that is XML is judged as XML whatever its Content-Type says. Empty: a
	// non-empty 2xx body that is not XML is refused.
	AllowNonXML []string `json:"allow_non_xml,omitempty"`

	allowNonXML []string // AllowNonXML, lower-cased
	pipeline    resigner
	heartbeat   func(*http.Request) // tells the legacygate app of each request; nil without the app
	index       *indexSerial        // rewrites the index's settings serial; nil without rewrite
	pinned      []string
	logger      *zap.Logger
	results     *prometheus.CounterVec
}

// CaddyModule returns the Caddy module information.
func (PolicyGuard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.policy_guard",
		New: func() caddy.Module { return new(PolicyGuard) },
	}
}

// resigner is the verify → transform → sign pipeline as the handler needs it:
// doc is the manager's body for request r.
type resigner interface {
	resign(r *http.Request, doc []byte) (signedPayload, error)
}

// signedPayload is what the client receives in place of the manager's body.
type signedPayload struct {
	body []byte
	etag string
}

// refusal is a failure with the stable reason token that goes into the log
// line and the metric label.
type refusal struct {
	reason string
	err    error
}

func (e *refusal) Error() string { return e.reason + ": " + e.err.Error() }
func (e *refusal) Unwrap() error { return e.err }

// Results and reasons, the values of the metric labels.
const (
	resultSigned  = "signed"
	resultPassed  = "passed"
	resultRefused = "refused"
	resultHeld    = "held"

	reasonVerified        = "verified"
	reasonStatus          = "status"
	reasonNoBody          = "no_body"
	reasonNotXML          = "not_xml"
	reasonUnlistedRoot    = "unlisted_root"
	reasonTooLarge        = "too_large"
	reasonIncomplete      = "incomplete"
	reasonContentEncoding = "content_encoding"
	reasonPartialContent  = "partial_content"
	reasonMalformed       = "malformed"
	reasonXMLEncoding     = "xml_encoding"
	reasonSignFailed      = "sign_failed"
	reasonNoSigner        = "no_signer"
	reasonDuplicateHeader = "duplicate_header"

	reasonAwaitingConfirmation = "awaiting_confirmation"
)

var policyGuardMetrics = struct {
	results *prometheus.CounterVec
	cache   *prometheus.CounterVec
}{
	results: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "legacygate_policy_guard_results_total",
		Help: "Responses handled by policy_guard, by result (signed, passed, refused, held) and reason.",
	}, []string{"result", "reason"}),
	cache: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "legacygate_policy_guard_cache_total",
		Help: "Re-signed policy payloads served from the cache (hit) or verified and signed anew (miss; identical concurrent misses are signed once).",
	}, []string{"result"}),
}

// Provision loads the certificates and the signing key and registers the metrics.
func (g *PolicyGuard) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	if err := g.Validate(); err != nil {
		return err
	}
	if g.MaxSize == 0 {
		g.MaxSize = defaultPolicyMaxSize
	}
	if g.CacheSize == 0 {
		g.CacheSize = defaultPolicyCacheSize
	}
	var err error
	if g.allowNonXML, err = normalizeMediaTypes("policy_guard: allow_non_xml", g.AllowNonXML); err != nil {
		return err
	}
	if g.results, err = registerCollector(ctx.GetMetricsRegistry(), policyGuardMetrics.results); err != nil {
		return err
	}
	cache, err := registerCollector(ctx.GetMetricsRegistry(), policyGuardMetrics.cache)
	if err != nil {
		return err
	}
	app, err := ctx.AppIfConfigured("legacygate")
	switch {
	case err == nil:
		return g.provisionPipeline(cache, app.(*App))
	case errors.Is(err, caddy.ErrNotConfigured):
		return g.provisionPipeline(cache, nil)
	}
	return fmt.Errorf("policy_guard: the legacygate app: %w", err)
}

// provisionPipeline loads the pinned certificates and the signing key (or
// takes the keys from app). Its errors name the Caddyfile field.
func (g *PolicyGuard) provisionPipeline(cache *prometheus.CounterVec, app *App) error {
	pinned, err := policyguard.LoadCertificates(g.UpstreamCerts...)
	if err != nil {
		return fmt.Errorf("policy_guard: upstream_cert: %w", err)
	}
	verifier, err := policyguard.NewVerifier(pinned, policyguard.VerifyOptions{
		AllowSHA1:    g.AllowSHA1,
		IgnoreExpiry: g.IgnoreExpiry,
		MaxBytes:     g.MaxSize,
	})
	if err != nil {
		return fmt.Errorf("policy_guard: upstream_cert: %w", err)
	}
	signing, err := newGuardSigning(g.SigningKeyFile, g.SigningCertFile, g.Rewrite, app)
	if err != nil {
		return err
	}
	g.heartbeat = signing.observe
	g.index = newIndexSerial(g.Rewrite, signing)
	g.pinned = make([]string, len(pinned))
	for i, c := range pinned {
		g.pinned[i] = policyguard.Fingerprint(c)
	}
	g.pipeline = &policyPipeline{
		// The Resigner's own cache is off: it still coalesces identical
		// misses, and payloadCache serves hits without hashing the body.
		resigner: policyguard.NewResigner(verifier, 0),
		signing:  signing,
		cache:    newPayloadCache(g.CacheSize),
		hits:     cache.WithLabelValues("hit"),
		misses:   cache.WithLabelValues("miss"),
	}
	return nil
}

// policyPipeline is the resigner backed by the policyguard package; signing
// chooses, per request, the key and the settings rewrite.
type policyPipeline struct {
	resigner     *policyguard.Resigner
	signing      *guardSigning
	cache        *payloadCache
	hits, misses prometheus.Counter
}

// heldError: the payload is withheld from a client that has not confirmed
// the next certificate (guardChoice.hold); it may ask again after
// retryAfter.
type heldError struct{ retryAfter time.Duration }

func (e *heldError) Error() string {
	return "client fetched the next certificate and has not confirmed it"
}

func (p *policyPipeline) resign(r *http.Request, doc []byte) (signedPayload, error) {
	choice := p.signing.choose(r, doc)
	if choice.hold {
		return signedPayload{}, &heldError{retryAfter: p.signing.retryAfter()}
	}
	if choice.signer == nil {
		return signedPayload{}, &refusal{reasonNoSigner, errors.New("no signing key for this client")}
	}
	key := p.cache.key(doc, choice)
	payload, ok := p.cache.get(key, doc)
	if ok {
		p.hits.Inc()
	} else {
		out, err := p.resigner.Resign(doc, choice.signer, choice.transform)
		if err != nil {
			if reason := policyguard.Reason(err); reason != "" {
				return signedPayload{}, &refusal{reason, err}
			}
			return signedPayload{}, &refusal{reasonSignFailed, err}
		}
		p.misses.Inc()
		sum := sha256.Sum256(out)
		payload = signedPayload{body: out, etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
		p.cache.put(key, doc, payload)
	}
	p.signing.served(r, choice)
	return payload, nil
}

// payloadCache holds re-signed payloads with the manager bytes they came
// from, least recently used first out, bounded in bytes (cache_size). A
// lookup hashes the body with maphash and confirms with bytes.Equal, which is
// exact and several times cheaper than a SHA-256 of 100 KB on every request;
// a hit also brings its ETag, computed once when the payload was signed.
type payloadCache struct {
	seed     maphash.Seed
	maxBytes int64

	mu      sync.Mutex
	lru     *list.List // of *cachedPayload, most recently used first
	entries map[payloadKey]*list.Element
	bytes   int64
}

// payloadKey names a payload: the manager's bytes (maphash), the key that
// signed it and the rewrite applied.
type payloadKey struct {
	doc       uint64
	keyID     string
	transform string
}

type cachedPayload struct {
	key     payloadKey
	doc     []byte
	payload signedPayload
}

func newPayloadCache(maxBytes int64) *payloadCache {
	return &payloadCache{seed: maphash.MakeSeed(), maxBytes: maxBytes, lru: list.New(), entries: map[payloadKey]*list.Element{}}
}

func (c *payloadCache) key(doc []byte, choice guardChoice) payloadKey {
	key := payloadKey{doc: maphash.Bytes(c.seed, doc), keyID: choice.signer.KeyID()}
	if choice.transform != nil {
		key.transform = choice.transform.ID()
	}
	return key
}

// get returns the payload signed from exactly doc. Entries never change
// once stored, so the comparison runs outside the lock.
func (c *payloadCache) get(key payloadKey, doc []byte) (signedPayload, bool) {
	c.mu.Lock()
	e, ok := c.entries[key]
	if ok {
		c.lru.MoveToFront(e)
	}
	c.mu.Unlock()
	if !ok {
		return signedPayload{}, false
	}
	entry := e.Value.(*cachedPayload)
	if !bytes.Equal(entry.doc, doc) {
		return signedPayload{}, false
	}
	return entry.payload, true
}

// put stores a copy of doc (the caller's buffer goes back to a pool) with
// its payload, and evicts the least recently used entries over the bound.
func (c *payloadCache) put(key payloadKey, doc []byte, payload signedPayload) {
	size := entrySize(doc, payload)
	if size > c.maxBytes {
		return
	}
	entry := &cachedPayload{key: key, doc: bytes.Clone(doc), payload: payload}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.entries[key]; ok {
		c.remove(old)
	}
	c.entries[key] = c.lru.PushFront(entry)
	c.bytes += size
	for c.bytes > c.maxBytes {
		c.remove(c.lru.Back())
	}
}

func (c *payloadCache) remove(e *list.Element) {
	entry := c.lru.Remove(e).(*cachedPayload)
	delete(c.entries, entry.key)
	c.bytes -= entrySize(entry.doc, entry.payload)
}

func entrySize(doc []byte, payload signedPayload) int64 {
	return int64(len(doc) + len(payload.body) + len(payload.etag))
}

// Validate names the first field that is missing or out of range.
func (g *PolicyGuard) Validate() error {
	switch {
	case len(g.UpstreamCerts) == 0:
		return errors.New("policy_guard: upstream_cert: at least one manager certificate file is required")
	case (g.SigningKeyFile == "") != (g.SigningCertFile == ""):
		return errors.New("policy_guard: signing_key: a key file and a certificate file go together")
	case len(g.Roots) == 0:
		return errors.New("policy_guard: roots: at least one root element name is required")
	case g.MaxSize < 0:
		return fmt.Errorf("policy_guard: max_size: %d is negative", g.MaxSize)
	case g.CacheSize < 0:
		return fmt.Errorf("policy_guard: cache_size: %d is negative", g.CacheSize)
	}
	for _, root := range g.Roots {
		if root == "" || strings.ContainsAny(root, " \t\r\n<>/:") {
			return fmt.Errorf("policy_guard: roots: %q is not an element name", root)
		}
	}
	if _, err := normalizeMediaTypes("policy_guard: allow_non_xml", g.AllowNonXML); err != nil {
		return err
	}
	if g.Rewrite != nil {
		return g.Rewrite.validate(g.Roots)
	}
	return nil
}

// ServeHTTP lets the rest of the chain (reverse_proxy) answer into a recorder
// and writes nothing to the client before the response is known to be safe.
func (g *PolicyGuard) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if g.heartbeat != nil {
		g.heartbeat(r)
	}
	ifNoneMatch := r.Header.Get("If-None-Match")
	up := upstreamRequest(r)
	rec := newGuardRecorder(w, g.MaxSize)
	defer rec.release()

	aborted, err := serveNext(rec, up, next)
	switch {
	case rec.ambiguous != nil:
		return g.refuse(w, r, rec, &refusal{reasonDuplicateHeader, rec.ambiguous})
	case !rec.wroteHeader || rec.stream:
		if aborted {
			panic(http.ErrAbortHandler)
		}
		if err == nil && rec.stream {
			g.count(resultPassed, reasonStatus)
		}
		return err
	case rec.tooLarge:
		return g.refuse(w, r, rec, &refusal{reasonTooLarge, fmt.Errorf("body over max_size (%d bytes)", g.MaxSize)})
	case aborted || err != nil:
		return g.refuse(w, r, rec, &refusal{reasonIncomplete, incompleteError(err)})
	}
	return g.finish(w, r, rec, ifNoneMatch)
}

// finish decides what a complete, buffered 2xx response becomes.
func (g *PolicyGuard) finish(w http.ResponseWriter, r *http.Request, rec *guardRecorder, ifNoneMatch string) error {
	body := rec.buf.Bytes()
	if err := checkBuffered(rec, body); err != nil {
		return g.refuse(w, r, rec, err)
	}
	root, err := documentRoot(body)
	if err != nil {
		return g.refuse(w, r, rec, err)
	}
	if root == nil {
		return g.passNonXML(w, r, rec, body, ifNoneMatch)
	}
	if !g.listed(root) {
		if g.index.matches(root) {
			if done, err := g.rewriteIndex(w, r, rec, body); done {
				return err
			}
		}
		g.count(resultPassed, reasonUnlistedRoot)
		copyResponseHeader(w.Header(), rec.header)
		return writeResponse(w, r, rec.status, body, ifNoneMatch)
	}
	out, err := g.pipeline.resign(r, body)
	if held, ok := errors.AsType[*heldError](err); ok {
		return g.hold(w, r, held.retryAfter)
	}
	if err != nil {
		return g.refuse(w, r, rec, err)
	}
	g.count(resultSigned, reasonVerified)
	h := w.Header()
	copyResponseHeader(h, rec.header)
	for _, k := range staleAfterResign {
		delete(h, k)
	}
	h["Content-Length"] = []string{strconv.Itoa(len(out.body))}
	h["Etag"] = []string{out.etag}
	return writeResponse(w, r, rec.status, out.body, ifNoneMatch)
}

// passNonXML forwards an empty body, or a body that is not XML when its
// media type is listed in allow_non_xml, and refuses any other.
func (g *PolicyGuard) passNonXML(w http.ResponseWriter, r *http.Request, rec *guardRecorder, body []byte, ifNoneMatch string) error {
	reason := reasonNotXML
	switch {
	case len(body) == 0:
		reason = reasonNoBody
	case !mediaTypeListed(rec.header, g.allowNonXML):
		return g.refuse(w, r, rec, &refusal{reasonNotXML, fmt.Errorf("a %d-byte body that is not XML, Content-Type %q not listed in allow_non_xml", len(body), rec.header.Get("Content-Type"))})
	}
	g.count(resultPassed, reason)
	copyResponseHeader(w.Header(), rec.header)
	return writeResponse(w, r, rec.status, body, ifNoneMatch)
}

// staleAfterResign are the manager's headers that describe bytes the client
// no longer receives. Last-Modified goes too: the re-signed payload changes
// when the gateway's key changes, not only when the manager's does, and the
// ETag already lets clients revalidate.
var staleAfterResign = []string{
	"Last-Modified", "Etag", "Content-Md5", "Digest", "Content-Digest", "Repr-Digest",
	"Content-Encoding", "Content-Range", "Accept-Ranges",
}

// checkBuffered refuses the transport-level problems of a buffered 2xx response.
func checkBuffered(rec *guardRecorder, body []byte) error {
	if rec.status == http.StatusPartialContent {
		return &refusal{reasonPartialContent, errors.New("manager answered 206 Partial Content although no range was asked")}
	}
	if err := identityEncoded(rec.header); err != nil {
		return &refusal{reasonContentEncoding, err}
	}
	var digits [20]byte
	if cl := rec.header.Get("Content-Length"); cl != "" && cl != string(strconv.AppendInt(digits[:0], int64(len(body)), 10)) {
		return &refusal{reasonIncomplete, fmt.Errorf("manager promised Content-Length %s and sent %d bytes", cl, len(body))}
	}
	return nil
}

func incompleteError(err error) error {
	if err == nil {
		return errors.New("the upstream response body ended early")
	}
	return fmt.Errorf("the upstream response body ended early: %w", err)
}

func (g *PolicyGuard) listed(root []byte) bool {
	for _, name := range g.Roots {
		if string(root) == name {
			return true
		}
	}
	return false
}

func (g *PolicyGuard) count(result, reason string) {
	g.results.WithLabelValues(result, reason).Inc()
}

// refuse answers 502 with a short body, logs why, and counts it. The client
// gets none of the manager's headers or bytes.
func (g *PolicyGuard) refuse(w http.ResponseWriter, r *http.Request, rec *guardRecorder, err error) error {
	reason := reasonSignFailed
	var ref *refusal
	if errors.As(err, &ref) {
		reason, err = ref.reason, ref.err
	}
	g.count(resultRefused, reason)
	fields := []zap.Field{
		zap.String("reason", reason),
		zap.String("path", r.URL.Path),
		zap.Int("upstream_status", rec.status),
		zap.Int("upstream_bytes", rec.buf.Len()),
		zap.Strings("pinned", g.pinned),
		zap.Strings("seen", documentCertificates(rec.buf.Bytes())),
		zap.Error(err),
	}
	if name := headerName(err); name != "" {
		fields = append(fields, zap.String("header", name))
	}
	g.logger.Warn("policy payload refused", fields...)

	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(refusalBody)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusBadGateway)
	_, werr := io.WriteString(w, refusalBody)
	return werr
}

// refusalBody is all a client learns of a refusal; the reason is in the log.
const refusalBody = "502 Bad Gateway: the manager's response was refused by the gateway\n"

// hold answers 503 with Retry-After and a short body, logs at debug (a
// rotation can hold many requests) and counts it. As with a refusal, the
// client gets none of the manager's headers or bytes. A legacy client takes
// it as "come back later": one degraded heartbeat, never a signature it
// cannot verify.
func (g *PolicyGuard) hold(w http.ResponseWriter, r *http.Request, retry time.Duration) error {
	g.count(resultHeld, reasonAwaitingConfirmation)
	g.logger.Debug("policy payload held until the client confirms the next certificate",
		zap.String("path", r.URL.Path), zap.Duration("retry_after", retry))

	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(holdBody)))
	h.Set("Cache-Control", "no-store")
	h.Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
	w.WriteHeader(http.StatusServiceUnavailable)
	_, err := io.WriteString(w, holdBody)
	return err
}

// holdBody is all a held client learns.
const holdBody = "503 Service Unavailable: try again later\n"

// upstreamRequest asks the manager for the whole representation in identity
// encoding: ranges and compressed bodies cannot be verified, and conditional
// requests would compare the client's ETags (the gateway's) with the
// manager's. A HEAD becomes a GET, since headers that describe a body can
// only be given once the body has been verified.
func upstreamRequest(r *http.Request) *http.Request {
	h := r.Header
	h.Set("Accept-Encoding", "identity")
	for _, k := range []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"} {
		delete(h, k)
	}
	if r.Method != http.MethodHead {
		return r
	}
	up := r.WithContext(r.Context())
	up.Method = http.MethodGet
	return up
}

// serveNext runs the rest of the chain. reverse_proxy reports a body that
// failed mid-copy by panicking with http.ErrAbortHandler; that is recovered
// here and reported as aborted.
func serveNext(rec *guardRecorder, r *http.Request, next caddyhttp.Handler) (aborted bool, err error) {
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

// writeResponse writes status and body, or 304 when the client's
// If-None-Match already names the ETag, and no body for HEAD.
func writeResponse(w http.ResponseWriter, r *http.Request, status int, body []byte, ifNoneMatch string) error {
	h := w.Header()
	if status == http.StatusOK && etagMatches(ifNoneMatch, h.Get("Etag")) {
		delete(h, "Content-Length")
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(body)
	return err
}

// etagMatches is the weak comparison If-None-Match uses (RFC 9110 13.1.2).
func etagMatches(ifNoneMatch, etag string) bool {
	if ifNoneMatch == "" || etag == "" {
		return false
	}
	etag = strings.TrimPrefix(etag, "W/")
	for candidate := range strings.SplitSeq(ifNoneMatch, ",") {
		candidate = strings.TrimSpace(candidate)
		if candidate == "*" || strings.TrimPrefix(candidate, "W/") == etag {
			return true
		}
	}
	return false
}

// copyResponseHeader copies the manager's headers, leaving out trailers:
// a buffered body is sent with a Content-Length and no trailer section.
func copyResponseHeader(dst, src http.Header) {
	for k, v := range src {
		if k == "Trailer" || strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		dst[k] = v
	}
	for _, names := range src["Trailer"] {
		for name := range strings.SplitSeq(names, ",") {
			delete(dst, http.CanonicalHeaderKey(strings.TrimSpace(name)))
		}
	}
}

// singletonHeaders may appear at most once in a manager answer. Two lines of
// one of them (Content-Encoding: identity, then gzip) are read one way by
// the gateway and another way by a client, so such an answer is refused.
var singletonHeaders = [...]string{"Content-Encoding", "Content-Type", "Content-Length", "Transfer-Encoding"}

// headerError names the manager header that made an answer ambiguous; the
// refusal's log line carries the name in its own field.
type headerError struct {
	name   string
	values []string
	what   string
}

// Bounds on what a headerError puts in a log line.
const (
	maxLoggedHeaderValues = 4
	maxLoggedHeaderValue  = 64
)

func (e *headerError) Error() string {
	shown := e.values[:min(len(e.values), maxLoggedHeaderValues)]
	quoted := make([]string, len(shown))
	for i, v := range shown {
		if len(v) > maxLoggedHeaderValue {
			v = v[:maxLoggedHeaderValue] + "…"
		}
		quoted[i] = strconv.Quote(v)
	}
	return fmt.Sprintf("%s: %s (%d lines: %s)", e.name, e.what, len(e.values), strings.Join(quoted, ", "))
}

// headerName is the name of the header err is about, "" when none.
func headerName(err error) string {
	if he, ok := errors.AsType[*headerError](err); ok {
		return he.name
	}
	return ""
}

// headerValues gathers the lines of the header name under any spelling of
// its key: a map filled by hand may hold "content-encoding" beside
// "Content-Encoding", and both would be written to the client.
func headerValues(h http.Header, name string) []string {
	var values []string
	for k, vs := range h {
		if len(k) == len(name) && strings.EqualFold(k, name) {
			values = append(values, vs...)
		}
	}
	return values
}

// repeatedSingleton refuses an answer that carries one of singletonHeaders
// on more than one line. It runs on every answer in scope and allocates
// only to report a refusal.
func repeatedSingleton(h http.Header) error {
	for _, name := range singletonHeaders {
		lines := 0
		for k, vs := range h {
			if len(k) == len(name) && strings.EqualFold(k, name) {
				lines += len(vs)
			}
		}
		if lines > 1 {
			return &headerError{name: name, values: headerValues(h, name), what: "repeated, it may appear once"}
		}
	}
	return nil
}

// identityEncoded accepts an answer without Content-Encoding or with exactly
// one line that says identity. Anything else (gzip, an empty value, a list
// such as "identity, gzip") names bytes the gateway would judge encoded one
// way and the client decode another, although identity was asked for.
func identityEncoded(h http.Header) error {
	values := headerValues(h, "Content-Encoding")
	if len(values) == 0 || (len(values) == 1 && strings.EqualFold(strings.TrimSpace(values[0]), "identity")) {
		return nil
	}
	return &headerError{name: "Content-Encoding", values: values, what: "not identity, although identity was asked"}
}

// plainXML reports whether body is XML by its bytes alone: after a UTF-8
// byte order mark and whitespace, it starts with '<'. The Content-Type the
// manager chose plays no part: an unsigned <Profile> labelled text/plain is
// still a Profile to a client. UTF-16 and UTF-32 text is an error, since a
// client's parser could read a policy there that this test does not see.
func plainXML(body []byte) (bool, error) {
	b := bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	if len(b) >= 2 && (b[0] == 0 || b[1] == 0 || (b[0] == 0xfe && b[1] == 0xff) || (b[0] == 0xff && b[1] == 0xfe)) {
		return false, &refusal{reasonXMLEncoding, errors.New("body is UTF-16 or UTF-32")}
	}
	i := skipSpace(b, 0)
	return i < len(b) && b[i] == '<', nil
}

// normalizeMediaTypes checks the media types of an allow_non_xml list and
// returns them lower-cased; field prefixes the error, e.g.
// "policy_guard: allow_non_xml".
func normalizeMediaTypes(field string, list []string) ([]string, error) {
	out := make([]string, 0, len(list))
	for _, s := range list {
		mediaType, params, err := mime.ParseMediaType(s)
		typ, sub, ok := strings.Cut(mediaType, "/")
		if err != nil || len(params) > 0 || !ok || typ == "" || sub == "" || strings.ContainsAny(mediaType, "*") || strings.Count(mediaType, "/") != 1 {
			return nil, fmt.Errorf("%s: %q is not a media type (want type/subtype, without parameters or wildcards)", field, s)
		}
		out = append(out, mediaType)
	}
	return out, nil
}

// mediaTypeListed reports whether the answer's Content-Type names one of
// the (lower-cased) media types in list. A missing or unreadable
// Content-Type is never listed.
func mediaTypeListed(h http.Header, list []string) bool {
	if len(list) == 0 {
		return false
	}
	values := headerValues(h, "Content-Type")
	if len(values) != 1 {
		return false
	}
	mediaType, _, err := mime.ParseMediaType(values[0])
	if err != nil {
		return false
	}
	return slices.Contains(list, mediaType)
}

// guardRecorder holds the manager's response until it has been judged. 2xx
// responses are buffered with their headers; anything else is streamed
// straight to the client (stream), headers copied when the status is written.
type guardRecorder struct {
	w           http.ResponseWriter
	header      http.Header
	buf         *bytes.Buffer
	limit       int64
	status      int
	wroteHeader bool
	stream      bool
	tooLarge    bool
	ambiguous   error // a repeated singleton header: nothing is forwarded
}

var (
	errTooLarge  = errors.New("policy_guard: response body over max_size")
	errAmbiguous = errors.New("policy_guard: response refused for a repeated singleton header")
)

// Buffers over this capacity are dropped instead of pooled, so one large
// payload does not pin its memory for the life of the process.
const maxPooledBuffer = 1 << 20

var recorderPool = sync.Pool{New: func() any {
	return &guardRecorder{header: make(http.Header), buf: new(bytes.Buffer)}
}}

func newGuardRecorder(w http.ResponseWriter, limit int64) *guardRecorder {
	rec := recorderPool.Get().(*guardRecorder)
	rec.w, rec.limit = w, limit
	return rec
}

func (rec *guardRecorder) release() {
	clear(rec.header)
	if rec.buf.Cap() > maxPooledBuffer {
		rec.buf = new(bytes.Buffer)
	}
	rec.buf.Reset()
	*rec = guardRecorder{header: rec.header, buf: rec.buf}
	recorderPool.Put(rec)
}

// Header is the recorder's own map until a streamed status is written; the
// client's map after that, so trailers of a streamed response still work.
func (rec *guardRecorder) Header() http.Header {
	if rec.stream {
		return rec.w.Header()
	}
	return rec.header
}

// WriteHeader decides, by status, between buffering and streaming.
// Informational responses other than 101 are not forwarded. An answer of
// any status with a repeated singleton header is neither: it is refused.
func (rec *guardRecorder) WriteHeader(status int) {
	if rec.wroteHeader {
		return
	}
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		return
	}
	rec.status, rec.wroteHeader = status, true
	if rec.ambiguous = repeatedSingleton(rec.header); rec.ambiguous != nil {
		return
	}
	if bufferStatus(status) {
		rec.reserve()
		return
	}
	rec.stream = true
	copyHeaderMap(rec.w.Header(), rec.header)
	rec.w.WriteHeader(status)
}

// bufferStatus is true for the responses that may carry a policy payload.
func bufferStatus(status int) bool {
	switch status {
	case http.StatusNoContent, http.StatusResetContent:
		return false
	}
	return status >= 200 && status < 300
}

// reserve sizes the buffer from Content-Length, or marks the response too
// large before a byte of it is read.
func (rec *guardRecorder) reserve() {
	cl, err := strconv.ParseInt(rec.header.Get("Content-Length"), 10, 64)
	switch {
	case err != nil || cl < 0:
	case cl > rec.limit:
		rec.tooLarge = true
	default:
		rec.buf.Grow(int(cl))
	}
}

func (rec *guardRecorder) Write(p []byte) (int, error) {
	rec.WriteHeader(http.StatusOK)
	if rec.ambiguous != nil {
		return 0, errAmbiguous
	}
	if rec.stream {
		return rec.w.Write(p)
	}
	if rec.tooLarge || int64(rec.buf.Len())+int64(len(p)) > rec.limit {
		rec.tooLarge = true
		return 0, errTooLarge
	}
	return rec.buf.Write(p)
}

// FlushError flushes a streamed response; a buffered one is not flushed.
func (rec *guardRecorder) FlushError() error {
	if !rec.stream {
		return nil
	}
	return http.NewResponseController(rec.w).Flush()
}

// Unwrap gives http.ResponseController the client's writer (deadlines,
// hijacking a 101 response).
func (rec *guardRecorder) Unwrap() http.ResponseWriter { return rec.w }

func copyHeaderMap(dst, src http.Header) {
	for k, v := range src {
		dst[k] = v
	}
}

// documentRoot returns the local name of body's root element, nil when body
// is not XML (its first byte after a UTF-8 byte order mark and whitespace is
// not '<'). XML whose prolog cannot be read to the root element is an error,
// and so is UTF-16 or UTF-32, which a client's parser could read as a policy
// this scan does not see. It allocates nothing.
func documentRoot(body []byte) ([]byte, error) {
	if isXML, err := plainXML(body); !isXML {
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

func malformed(what string) error {
	return &refusal{reasonMalformed, errors.New(what)}
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

// maxSeenCertificates bounds what a refused document can put in the log.
const maxSeenCertificates = 4

// documentCertificates returns the fingerprints of the X509Certificate
// elements in body, for the log line of a refusal. Nothing here is trusted.
func documentCertificates(body []byte) []string {
	var seen []string
	d := xml.NewDecoder(bytes.NewReader(body))
	var text []byte
	inCert := false
	for len(seen) < maxSeenCertificates {
		tok, err := d.RawToken()
		if err != nil {
			return seen
		}
		switch t := tok.(type) {
		case xml.StartElement:
			inCert, text = t.Name.Local == "X509Certificate", text[:0]
		case xml.CharData:
			if inCert && len(text) < 64<<10 {
				text = append(text, t...)
			}
		case xml.EndElement:
			if inCert {
				if der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(text)), "")); err == nil {
					seen = append(seen, fingerprint(der))
				}
				inCert = false
			}
		}
	}
	return seen
}

// fingerprint is the hex SHA-256 of a DER certificate, the form
// policyguard.Fingerprint gives the pinned ones.
func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func parsePolicyGuard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(PolicyGuard)
	err := g.UnmarshalCaddyfile(h.Dispenser)
	return g, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	policy_guard [<matcher>] {
//	    upstream_cert <file> [<file>...]
//	    signing_key   <key_file> <cert_file>
//	    roots         <element> [<element>...]
//	    allow_sha1
//	    ignore_expiry
//	    max_size      <size>
//	    cache_size    <size>
//	    allow_non_xml <media-type> [<media-type>...]
//	    rewrite {
//	        ...
//	    }
//	}
//
// upstream_cert, roots and allow_non_xml may be repeated; their lists add
// up. allow_non_xml names the media types (text/plain) whose 2xx bodies may
// pass although they are not XML; without it such a body is refused with a
// 502. A body that is XML is judged as XML whatever its Content-Type. Sizes take
// units (16MiB, 64MB) or plain bytes. Without signing_key, the legacygate
// global option supplies the keys. The rewrite block's syntax is in
// unmarshalGuardRewrite.
func (g *PolicyGuard) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "upstream_cert":
			g.UpstreamCerts, err = appendArgs(d, g.UpstreamCerts)
		case "roots":
			g.Roots, err = appendArgs(d, g.Roots)
		case "signing_key":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Err("signing_key: want <key_file> <cert_file>")
			}
			g.SigningKeyFile, g.SigningCertFile = args[0], args[1]
		case "allow_sha1":
			g.AllowSHA1, err = true, noArgs(d)
		case "ignore_expiry":
			g.IgnoreExpiry, err = true, noArgs(d)
		case "max_size":
			g.MaxSize, err = sizeArg(d)
		case "cache_size":
			g.CacheSize, err = sizeArg(d)
		case "rewrite":
			g.Rewrite, err = unmarshalGuardRewrite(d)
		case "allow_non_xml":
			g.AllowNonXML, err = appendArgs(d, g.AllowNonXML)
		default:
			return d.Errf("policy_guard: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func appendArgs(d *caddyfile.Dispenser, list []string) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.Errf("%s: want at least one value", d.Val())
	}
	return append(list, args...), nil
}

func noArgs(d *caddyfile.Dispenser) error {
	field := d.Val()
	if d.NextArg() {
		return d.Errf("%s takes no value", field)
	}
	return nil
}

func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	field := d.Val()
	if !d.NextArg() {
		return 0, d.Errf("%s: want a size such as 16MiB", field)
	}
	n, err := humanize.ParseBytes(d.Val())
	if err != nil || n == 0 || n > 1<<40 {
		return 0, d.Errf("%s: %q is not a size between 1 byte and 1TiB", field, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return int64(n), nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*PolicyGuard)(nil)
	_ caddy.Validator             = (*PolicyGuard)(nil)
	_ caddyhttp.MiddlewareHandler = (*PolicyGuard)(nil)
	_ caddyfile.Unmarshaler       = (*PolicyGuard)(nil)
)

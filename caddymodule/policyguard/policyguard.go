package policyguard

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/caddymodule/internal/response"
	"github.com/legacygate/legacygate/caddymodule/rotation"
	"github.com/legacygate/legacygate/internal/payloadcache"
	"github.com/legacygate/legacygate/internal/xmlscan"
	guardlib "github.com/legacygate/legacygate/policyguard"
)

func init() {
	caddy.RegisterModule(PolicyGuard{})
	httpcaddyfile.RegisterHandlerDirective("policy_guard", parsePolicyGuard)
	// After encode, so it sees the manager's identity bytes, and before
	// handle, so a top-level policy_guard wraps handle blocks too (see
	// caddymodule/doc.go).
	httpcaddyfile.RegisterDirectiveOrder("policy_guard", httpcaddyfile.Before, "invoke")
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

	// Offload serves a client's profile without asking the manager when
	// the index the manager last sent that client names a profile the
	// gateway holds verified (see Offload). Nil: every request is asked.
	Offload *Offload `json:"offload,omitempty"`

	allowNonXML []string   // AllowNonXML, lower-cased
	offload     *offloader // nil without Offload
	pipeline    resigner
	heartbeat   func(*http.Request) // tells the legacygate app of each request; nil without the app
	index       *indexSerial        // rewrites the index's settings serial; nil without rewrite
	pinned      []string
	logger      *zap.Logger
	results     *prometheus.CounterVec

	unregisterKey func() // takes the own signing_key off the rotation status
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
	reasonDuplicateHeader = response.ReasonDuplicateHeader

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

// Provision loads the certificates and the signing key and registers the
// metrics. Caddy calls Validate after it.
func (g *PolicyGuard) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	if g.MaxSize == 0 {
		g.MaxSize = defaultPolicyMaxSize
	}
	if g.MaxSize < 0 { // checked here: the verifier is built with it
		return fmt.Errorf("policy_guard: max_size: %d is negative", g.MaxSize)
	}
	if g.CacheSize == 0 {
		g.CacheSize = defaultPolicyCacheSize
	}
	var err error
	if g.allowNonXML, err = response.MediaTypes("policy_guard: allow_non_xml", g.AllowNonXML); err != nil {
		return err
	}
	if g.results, err = metrics.Register(ctx.GetMetricsRegistry(), policyGuardMetrics.results); err != nil {
		return err
	}
	cache, err := metrics.Register(ctx.GetMetricsRegistry(), policyGuardMetrics.cache)
	if err != nil {
		return err
	}
	app, err := ctx.AppIfConfigured("legacygate")
	switch {
	case err == nil:
		return g.provisionPipeline(cache, app.(*rotation.App))
	case errors.Is(err, caddy.ErrNotConfigured):
		return g.provisionPipeline(cache, nil)
	}
	return fmt.Errorf("policy_guard: the legacygate app: %w", err)
}

// provisionPipeline loads the pinned certificates and the signing key (or
// takes the keys from app). Its errors name the Caddyfile field.
func (g *PolicyGuard) provisionPipeline(cache *prometheus.CounterVec, app *rotation.App) error {
	pinned, err := guardlib.LoadCertificates(g.UpstreamCerts...)
	if err != nil {
		return fmt.Errorf("policy_guard: upstream_cert: %w", err)
	}
	verifier, err := guardlib.NewVerifier(pinned, guardlib.VerifyOptions{
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
	if signing.own != nil {
		g.unregisterKey = rotation.RegisterHandlerKey(signing.own)
	}
	g.index = newIndexSerial(g.Rewrite, signing)
	g.pinned = make([]string, len(pinned))
	for i, c := range pinned {
		g.pinned[i] = guardlib.Fingerprint(c)
	}
	if g.Offload != nil {
		g.offload = newOffloader(g.Offload)
	}
	g.pipeline = &policyPipeline{
		// The Resigner's own cache is off: it still coalesces identical
		// misses, and payloadCache serves hits without hashing the body.
		resigner: guardlib.NewResigner(verifier, 0),
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
	resigner     *guardlib.Resigner
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
		return signedPayload{}, &response.Refusal{Reason: reasonNoSigner, Err: errors.New("no signing key for this client")}
	}
	key := p.cache.key(doc, choice)
	payload, ok := p.cache.get(key, doc)
	if ok {
		p.hits.Inc()
	} else {
		out, err := p.resigner.Resign(doc, choice.signer, choice.transform)
		if err != nil {
			if reason := guardlib.Reason(err); reason != "" {
				return signedPayload{}, &response.Refusal{Reason: reason, Err: err}
			}
			return signedPayload{}, &response.Refusal{Reason: reasonSignFailed, Err: err}
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
	seed maphash.Seed
	lru  *payloadcache.LRU[payloadKey, *cachedPayload]
}

// payloadKey names a payload: the manager's bytes (maphash), the key that
// signed it and the rewrite applied.
type payloadKey struct {
	doc       uint64
	keyID     string
	transform string
}

type cachedPayload struct {
	doc     []byte
	payload signedPayload
}

func newPayloadCache(maxBytes int64) *payloadCache {
	return &payloadCache{seed: maphash.MakeSeed(), lru: payloadcache.New(maxBytes, func(_ payloadKey, e *cachedPayload) int64 {
		return entrySize(e.doc, e.payload)
	})}
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
	entry, ok := c.lru.Get(key)
	if !ok || !bytes.Equal(entry.doc, doc) {
		return signedPayload{}, false
	}
	return entry.payload, true
}

// put stores a copy of doc (the caller's buffer goes back to a pool) with
// its payload, and evicts the least recently used entries over the bound.
func (c *payloadCache) put(key payloadKey, doc []byte, payload signedPayload) {
	c.lru.Put(key, &cachedPayload{doc: bytes.Clone(doc), payload: payload})
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
	if _, err := response.MediaTypes("policy_guard: allow_non_xml", g.AllowNonXML); err != nil {
		return err
	}
	if g.Offload != nil {
		if err := g.Offload.validate(g.Roots); err != nil {
			return err
		}
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
	if g.offload != nil && g.offload.isProfileRequest(r) {
		done, err, release := g.serveOffloaded(w, r)
		if done {
			return err
		}
		if release != nil {
			defer release()
		}
	}
	ifNoneMatch := r.Header.Get("If-None-Match")
	up := upstreamRequest(r)
	rec := response.NewRecorder(w, g.MaxSize, streamStatus)
	defer rec.Release()

	aborted, err := response.ServeNext(rec, up, next)
	switch {
	case rec.Ambiguous() != nil:
		return g.refuse(w, r, rec, &response.Refusal{Reason: reasonDuplicateHeader, Err: rec.Ambiguous()})
	case !rec.WroteHeader() || rec.Streamed():
		if aborted {
			panic(http.ErrAbortHandler)
		}
		if err == nil && rec.Streamed() {
			g.count(resultPassed, reasonStatus)
		}
		return err
	case rec.TooLarge():
		return g.refuse(w, r, rec, &response.Refusal{Reason: reasonTooLarge, Err: fmt.Errorf("body over max_size (%d bytes)", g.MaxSize)})
	case aborted || err != nil:
		return g.refuse(w, r, rec, &response.Refusal{Reason: reasonIncomplete, Err: response.Incomplete(err)})
	}
	return g.finish(w, r, rec, ifNoneMatch)
}

// finish decides what a complete, buffered 2xx response becomes.
func (g *PolicyGuard) finish(w http.ResponseWriter, r *http.Request, rec *response.Recorder, ifNoneMatch string) error {
	body := rec.Body()
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
		if g.offload != nil {
			g.offload.remember(r, root, body)
		}
		if g.index.matches(root) {
			if done, err := g.rewriteIndex(w, r, rec, body); done {
				return err
			}
		}
		g.count(resultPassed, reasonUnlistedRoot)
		response.CopyHeader(w.Header(), rec.Held())
		return writeResponse(w, r, rec.Status(), body, ifNoneMatch)
	}
	out, err := g.pipeline.resign(r, body)
	if held, ok := errors.AsType[*heldError](err); ok {
		return g.hold(w, r, held.retryAfter)
	}
	if err != nil {
		return g.refuse(w, r, rec, err)
	}
	g.count(resultSigned, reasonVerified)
	if g.offload != nil && string(root) == g.offload.cfg.Element && g.offload.isProfileRequest(r) {
		g.offload.keep(r, body, rec.Held().Get("Content-Type"))
	}
	h := w.Header()
	response.CopyHeader(h, rec.Held())
	for _, k := range staleAfterResign {
		delete(h, k)
	}
	h["Content-Length"] = []string{strconv.Itoa(len(out.body))}
	h["Etag"] = []string{out.etag}
	return writeResponse(w, r, rec.Status(), out.body, ifNoneMatch)
}

// passNonXML forwards an empty body, or a body that is not XML when its
// media type is listed in allow_non_xml, and refuses any other.
func (g *PolicyGuard) passNonXML(w http.ResponseWriter, r *http.Request, rec *response.Recorder, body []byte, ifNoneMatch string) error {
	reason := reasonNotXML
	switch {
	case len(body) == 0:
		reason = reasonNoBody
	case !response.MediaTypeListed(rec.Held(), g.allowNonXML):
		return g.refuse(w, r, rec, &response.Refusal{Reason: reasonNotXML, Err: fmt.Errorf("a %d-byte body that is not XML, Content-Type %q not listed in allow_non_xml", len(body), rec.Held().Get("Content-Type"))})
	}
	g.count(resultPassed, reason)
	response.CopyHeader(w.Header(), rec.Held())
	return writeResponse(w, r, rec.Status(), body, ifNoneMatch)
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
func checkBuffered(rec *response.Recorder, body []byte) error {
	if rec.Status() == http.StatusPartialContent {
		return &response.Refusal{Reason: reasonPartialContent, Err: errors.New("manager answered 206 Partial Content although no range was asked")}
	}
	if err := response.IdentityEncoded(rec.Held()); err != nil {
		return &response.Refusal{Reason: reasonContentEncoding, Err: err}
	}
	var digits [20]byte
	if cl := rec.Held().Get("Content-Length"); cl != "" && cl != string(strconv.AppendInt(digits[:0], int64(len(body)), 10)) {
		return &response.Refusal{Reason: reasonIncomplete, Err: fmt.Errorf("manager promised Content-Length %s and sent %d bytes", cl, len(body))}
	}
	return nil
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
func (g *PolicyGuard) refuse(w http.ResponseWriter, r *http.Request, rec *response.Recorder, err error) error {
	reason := reasonSignFailed
	var ref *response.Refusal
	if errors.As(err, &ref) {
		reason, err = ref.Reason, ref.Err
	}
	g.count(resultRefused, reason)
	fields := []zap.Field{
		zap.String("reason", reason),
		zap.String("path", r.URL.Path),
		zap.Int("upstream_status", rec.Status()),
		zap.Int("upstream_bytes", rec.Len()),
		zap.Strings("pinned", g.pinned),
		zap.Strings("seen", documentCertificates(rec.Body())),
		zap.Error(err),
	}
	if name := response.HeaderName(err); name != "" {
		fields = append(fields, zap.String("header", name))
	}
	g.logger.Warn("policy payload refused", fields...)

	return response.Refuse(w, http.StatusBadGateway, 0, refusalBody)
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

	return response.Refuse(w, http.StatusServiceUnavailable, retry, holdBody)
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

// streamStatus is the recorder's stream policy: everything but what
// bufferStatus holds goes straight to the client.
func streamStatus(status int) bool { return !bufferStatus(status) }

// bufferStatus is true for the responses that may carry a policy payload.
func bufferStatus(status int) bool {
	switch status {
	case http.StatusNoContent, http.StatusResetContent:
		return false
	}
	return status >= 200 && status < 300
}

// documentRoot is xmlscan.Root with its failure as a refusal.
func documentRoot(body []byte) ([]byte, error) {
	root, err := xmlscan.Root(body)
	if se, ok := errors.AsType[*xmlscan.Error](err); ok {
		return nil, &response.Refusal{Reason: se.Reason, Err: se.Err}
	}
	return root, err
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
// guardlib.Fingerprint gives the pinned ones.
func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// Cleanup takes the handler's own key off the rotation status.
func (g *PolicyGuard) Cleanup() error {
	if g.unregisterKey != nil {
		g.unregisterKey()
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*PolicyGuard)(nil)
	_ caddy.CleanerUpper          = (*PolicyGuard)(nil)
	_ caddy.Validator             = (*PolicyGuard)(nil)
	_ caddyhttp.MiddlewareHandler = (*PolicyGuard)(nil)
)

package packageguard

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/caddymodule/internal/response"
	"github.com/legacygate/legacygate/policyguard"
)

func init() {
	caddy.RegisterModule(PackageGuard{})
	httpcaddyfile.RegisterHandlerDirective("package_guard", parsePackageGuard)
	httpcaddyfile.RegisterDirectiveOrder("package_guard", httpcaddyfile.Before, "invoke")
}

// Defaults and bounds of package_guard.
const (
	defaultPackageMaxSize   = 64 << 20
	defaultSignatureSuffix  = ".p7s"
	maxPackageSignatureSize = 1 << 20
)

// PackageGuard checks the manager's CMS (PKCS#7) detached signature on the
// packages it serves, and forwards only packages that verify (module
// http.handlers.package_guard).
//
// For every request it handles (scope it with a matcher, for example
// /epm/packages/*), it lets the rest of the chain (reverse_proxy) answer into
// a buffer of at most max_size bytes. A 2xx package is then checked against
// its detached signature: by default the manager's sidecar file, the same
// path with signature_suffix (".p7s") appended, fetched with a GET through
// the same chain; with signature_header, the base64 value of that response
// header instead. The signer must be one of the pinned upstream_cert
// certificates, or issued by one. A package that verifies is forwarded byte
// for byte; anything else in scope (no signature, a signature that does not
// verify, a body cut short, partial or over max_size, any Content-Encoding
// but a single identity) is refused with a 502 and none of the manager's
// bytes reach the client. An answer of any status, signature files
// included, that repeats Content-Encoding, Content-Type, Content-Length or
// Transfer-Encoding is refused too: a client may read it differently.
//
// Passed through unchanged: requests for the signature files themselves, and
// non-2xx responses (a client installs nothing from an error). Unlike
// policy_guard and xml_guard there is no allow_non_xml: a package is
// judged by its detached signature over its exact bytes, whatever they are.
type PackageGuard struct {
	// UpstreamCerts are PEM files holding the manager certificates whose keys
	// may sign packages.
	UpstreamCerts []string `json:"upstream_certs,omitempty"`

	// SignatureHeader, if set, is the response header carrying the base64
	// detached signature; no sidecar file is fetched.
	SignatureHeader string `json:"signature_header,omitempty"`

	// SignatureSuffix is appended to a package's path to fetch its detached
	// signature. Default ".p7s".
	SignatureSuffix string `json:"signature_suffix,omitempty"`

	// AllowSHA1 accepts SHA-1 digests, for managers that sign with them.
	AllowSHA1 bool `json:"allow_sha1,omitempty"`

	// IgnoreExpiry accepts pinned certificates outside their validity dates.
	IgnoreExpiry bool `json:"ignore_expiry,omitempty"`

	// MaxSize is the largest package buffered for verification, in bytes.
	// A larger one in scope is refused. Default 64 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	verifier *policyguard.DetachedVerifier
	pinned   []string
	logger   *zap.Logger
	results  *prometheus.CounterVec
}

// CaddyModule returns the Caddy module information.
func (PackageGuard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.package_guard",
		New: func() caddy.Module { return new(PackageGuard) },
	}
}

// Package guard results and reasons, the values of the metric labels.
const (
	pkgResultVerified = "verified"
	pkgResultPassed   = "passed"
	pkgResultRefused  = "refused"

	pkgReasonVerified         = "verified"
	pkgReasonSignatureFile    = "signature_file"
	pkgReasonStatus           = "status"
	pkgReasonTooLarge         = "too_large"
	pkgReasonIncomplete       = "incomplete"
	pkgReasonContentEncoding  = "content_encoding"
	pkgReasonPartialContent   = "partial_content"
	pkgReasonMissingSignature = "missing_signature"
	pkgReasonBadSignatureEnc  = "bad_signature_encoding"
	pkgReasonUpstream         = "upstream_error"
	pkgReasonSignature        = "bad_signature" // or the verifier's reason: untrusted_key, digest_mismatch, malformed_cms, …
	pkgReasonDuplicateHeader  = response.ReasonDuplicateHeader
)

var guardResults = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "legacygate_package_guard_results_total",
	Help: "Responses handled by package_guard, by result (verified, passed, refused) and reason.",
}, []string{"result", "reason"})

// Provision loads the pinned certificates and registers the metric.
// Caddy calls Validate after it.
func (g *PackageGuard) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	if g.SignatureSuffix == "" {
		g.SignatureSuffix = defaultSignatureSuffix
	}
	if g.MaxSize == 0 {
		g.MaxSize = defaultPackageMaxSize
	}
	if g.MaxSize < 0 { // checked here: the verifier is built with it
		return fmt.Errorf("package_guard: max_size: %d is negative", g.MaxSize)
	}
	var err error
	if g.results, err = metrics.Register(ctx.GetMetricsRegistry(), guardResults); err != nil {
		return err
	}
	pinned, err := policyguard.LoadCertificates(g.UpstreamCerts...)
	if err != nil {
		return fmt.Errorf("package_guard: upstream_cert: %w", err)
	}
	g.verifier, err = policyguard.NewDetachedVerifier(pinned, policyguard.VerifyOptions{
		AllowSHA1:    g.AllowSHA1,
		IgnoreExpiry: g.IgnoreExpiry,
		MaxBytes:     g.MaxSize,
	})
	if err != nil {
		return fmt.Errorf("package_guard: upstream_cert: %w", err)
	}
	g.pinned = make([]string, len(pinned))
	for i, c := range pinned {
		g.pinned[i] = policyguard.Fingerprint(c)
	}
	return nil
}

// Validate checks the configuration; each error names its field.
func (g *PackageGuard) Validate() error {
	switch {
	case len(g.UpstreamCerts) == 0:
		return errors.New("package_guard: upstream_cert: at least one manager certificate file is required")
	case g.MaxSize < 0:
		return fmt.Errorf("package_guard: max_size: %d is negative", g.MaxSize)
	case g.SignatureHeader != "" && !pkgHeaderName(g.SignatureHeader):
		return fmt.Errorf("package_guard: signature_header: %q is not a header name", g.SignatureHeader)
	case g.SignatureSuffix != "" && (strings.ContainsAny(g.SignatureSuffix, "/?# \t") || !strings.HasPrefix(g.SignatureSuffix, ".")):
		return fmt.Errorf("package_guard: signature_suffix: %q must start with '.' and hold no '/', '?', '#' or space", g.SignatureSuffix)
	}
	return nil
}

// validHeaderName accepts RFC 9110 token characters.
func pkgHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return s != ""
}

// ServeHTTP buffers the package, fetches and checks its signature, and
// writes the package only when it verifies.
func (g *PackageGuard) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if g.SignatureHeader == "" && strings.HasSuffix(r.URL.Path, g.SignatureSuffix) {
		// Held, not streamed, so that a repeated singleton header is refused.
		sig, err := g.fetch(r, next, g.MaxSize)
		defer sig.Release()
		if err != nil {
			return g.fail(w, r, sig, err)
		}
		g.count(pkgResultPassed, pkgReasonSignatureFile)
		return sig.Forward(w, r, false)
	}
	pkg, err := g.fetch(packageRequest(r, ""), next, g.MaxSize)
	defer pkg.Release()
	if err != nil {
		return g.fail(w, r, pkg, err)
	}
	if !pkgIs2xx(pkg.Status()) {
		g.count(pkgResultPassed, pkgReasonStatus)
		return pkg.Forward(w, r, true)
	}
	if err := checkPackage(pkg); err != nil {
		return g.refuse(w, r, pkg, err)
	}
	sig, err := g.signature(r, pkg, next)
	if err != nil {
		return g.fail(w, r, pkg, err)
	}
	if err := g.verifier.Verify(pkg.Body(), sig); err != nil {
		return g.refuse(w, r, pkg, &response.Refusal{Reason: cmp.Or(policyguard.Reason(err), pkgReasonSignature), Err: err})
	}
	g.count(pkgResultVerified, pkgReasonVerified)
	return pkg.Forward(w, r, true)
}

// packageRequest is the request the chain answers: r itself for the
// package, or a GET of r's path with suffix appended for its signature.
// Either way the manager is asked for the whole body in identity encoding.
func packageRequest(r *http.Request, suffix string) *http.Request {
	up := r
	if suffix != "" || r.Method == http.MethodHead {
		up = r.Clone(r.Context())
	}
	if r.Method == http.MethodHead {
		up.Method = http.MethodGet
	}
	if suffix != "" {
		up.Method = http.MethodGet
		up.Body, up.ContentLength = http.NoBody, 0
		up.URL.Path += suffix
		if up.URL.RawPath != "" {
			up.URL.RawPath += suffix
		}
		up.RequestURI = up.URL.RequestURI()
	}
	h := up.Header
	h.Set("Accept-Encoding", "identity")
	for _, k := range []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"} {
		delete(h, k)
	}
	return up
}

// fetch runs the rest of the chain for req into a buffer of at most limit
// bytes, nothing streamed. A body that failed mid-copy (reverse_proxy's
// http.ErrAbortHandler) is incomplete, unless the answer repeats a
// singleton header: that is its refusal, whether or not its body arrived.
// The recorder is never nil; release it.
func (g *PackageGuard) fetch(req *http.Request, next caddyhttp.Handler, limit int64) (*response.Recorder, error) {
	rec := response.NewRecorder(nil, limit, nil)
	aborted, err := response.ServeNext(rec, req, next)
	switch {
	case rec.Ambiguous() != nil:
		return rec, &response.Refusal{Reason: pkgReasonDuplicateHeader, Err: rec.Ambiguous()}
	case aborted:
		return rec, &response.Refusal{Reason: pkgReasonIncomplete, Err: errors.New("the upstream response body ended early")}
	case rec.TooLarge():
		return rec, &response.Refusal{Reason: pkgReasonTooLarge, Err: fmt.Errorf("body over %d bytes", limit)}
	case err != nil && rec.Status() == 0:
		return rec, err // nothing arrived: Caddy's error handling answers
	case err != nil:
		return rec, &response.Refusal{Reason: pkgReasonIncomplete, Err: fmt.Errorf("upstream: %w", err)}
	}
	rec.WriteHeader(http.StatusOK) // a handler that wrote nothing answered 200
	return rec, nil
}

// checkPackage refuses the transport-level problems of a buffered 2xx package.
func checkPackage(rec *response.Recorder) error {
	if rec.Status() == http.StatusPartialContent {
		return &response.Refusal{Reason: pkgReasonPartialContent, Err: errors.New("manager answered 206 Partial Content although no range was asked")}
	}
	if err := response.IdentityEncoded(rec.Held()); err != nil {
		return &response.Refusal{Reason: pkgReasonContentEncoding, Err: err}
	}
	if cl := rec.Held().Get("Content-Length"); cl != "" && cl != strconv.Itoa(rec.Len()) {
		return &response.Refusal{Reason: pkgReasonIncomplete, Err: fmt.Errorf("manager promised Content-Length %s and sent %d bytes", cl, rec.Len())}
	}
	return nil
}

// signature returns the package's detached signature, from the response
// header or the sidecar file.
func (g *PackageGuard) signature(r *http.Request, pkg *response.Recorder, next caddyhttp.Handler) ([]byte, error) {
	if g.SignatureHeader != "" {
		v := strings.TrimSpace(pkg.Held().Get(g.SignatureHeader))
		if v == "" {
			return nil, &response.Refusal{Reason: pkgReasonMissingSignature, Err: fmt.Errorf("no %s header", g.SignatureHeader)}
		}
		if len(v) > base64.StdEncoding.EncodedLen(maxPackageSignatureSize) {
			return nil, &response.Refusal{Reason: pkgReasonTooLarge, Err: fmt.Errorf("%s header of %d bytes", g.SignatureHeader, len(v))}
		}
		sig, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, &response.Refusal{Reason: pkgReasonBadSignatureEnc, Err: fmt.Errorf("%s header: %w", g.SignatureHeader, err)}
		}
		return sig, nil
	}
	rec, err := g.fetch(packageRequest(r, g.SignatureSuffix), next, maxPackageSignatureSize)
	defer rec.Release()
	if err != nil {
		var ref *response.Refusal
		if errors.As(err, &ref) {
			ref.Err = fmt.Errorf("signature %s%s: %w", r.URL.Path, g.SignatureSuffix, ref.Err)
		}
		return nil, err
	}
	if rec.Status() != http.StatusOK {
		return nil, &response.Refusal{Reason: pkgReasonMissingSignature, Err: fmt.Errorf("signature %s%s: manager answered %d", r.URL.Path, g.SignatureSuffix, rec.Status())}
	}
	if err := checkPackage(rec); err != nil {
		return nil, err
	}
	return bytes.Clone(rec.Body()), nil // the recorder goes back to its pool
}

func pkgIs2xx(status int) bool { return status >= 200 && status < 300 }

func (g *PackageGuard) count(result, reason string) {
	g.results.WithLabelValues(result, reason).Inc()
}

// fail refuses a response, or hands an upstream error that came before any
// response (the manager unreachable, a timeout) to Caddy's error handling,
// which answers 502 or 504 and logs it. Either way nothing of the package
// reaches the client.
func (g *PackageGuard) fail(w http.ResponseWriter, r *http.Request, pkg *response.Recorder, err error) error {
	var ref *response.Refusal
	if errors.As(err, &ref) {
		return g.refuse(w, r, pkg, err)
	}
	g.count(pkgResultRefused, pkgReasonUpstream)
	return err
}

// refuse answers 502 with a short body, logs why, and counts it. The client
// gets none of the manager's headers or bytes.
func (g *PackageGuard) refuse(w http.ResponseWriter, r *http.Request, pkg *response.Recorder, err error) error {
	reason := pkgReasonSignature
	var ref *response.Refusal
	if errors.As(err, &ref) {
		reason = ref.Reason
	}
	g.count(pkgResultRefused, reason)
	fields := []zap.Field{
		zap.String("reason", reason),
		zap.String("path", r.URL.Path),
		zap.Int("upstream_status", pkg.Status()),
		zap.Int("upstream_bytes", pkg.Len()),
		zap.Strings("pinned", g.pinned),
		zap.Error(err),
	}
	if name := response.HeaderName(err); name != "" {
		fields = append(fields, zap.String("header", name))
	}
	g.logger.Warn("package refused", fields...)
	return response.Refuse(w, http.StatusBadGateway, 0, packageRefusalBody)
}

// packageRefusalBody is all a client learns of a refusal; the reason is in the log.
const packageRefusalBody = "502 Bad Gateway: the manager's package was refused by the gateway\n"

// Interface guards.
var (
	_ caddy.Provisioner           = (*PackageGuard)(nil)
	_ caddy.Validator             = (*PackageGuard)(nil)
	_ caddyhttp.MiddlewareHandler = (*PackageGuard)(nil)
)

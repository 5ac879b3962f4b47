package legacytls

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
)

func init() {
	caddy.RegisterModule(LegacyTLS{})
}

// LegacyTLS is an upstream transport for managers that speak only old TLS:
// TLS 1.0 or 1.1, RSA key exchange, SHA-1-signed, CN-only or expired
// self-signed certificates. It is Caddy's `http` transport (every option of
// it still works: timeouts, keep-alive, buffers, `tls_server_name`, …) that
// always speaks TLS to the upstream, even when the upstream address has no
// https:// scheme, and adds pinning, protocol versions and cipher suites.
//
// The manager is authenticated by its key: with pins, the chain and name
// checks are replaced by comparing the SHA-256 of the leaf certificate's
// SubjectPublicKeyInfo with the pins. With a trust pool instead
// (`tls_trust_pool`, JSON `tls.ca`), the usual chain and name verification
// applies. With both, both must pass. With neither, provisioning fails:
// there is no insecure mode (`tls_insecure_skip_verify` and
// `tls_except_ports` are refused).
//
// No GODEBUG setting is needed: versions below TLS 1.2 and the RSA
// key-exchange and 3DES suites are enabled per connection by this
// transport's own tls.Config, so the client-facing side keeps Go's defaults.
type LegacyTLS struct {
	reverseproxy.HTTPTransport

	// Pins are the accepted keys of the manager, each "sha256/" followed by
	// the base64 SHA-256 of the certificate's SubjectPublicKeyInfo (what
	// `legacygate pin HOST:PORT` prints). Several may be given, so the
	// manager's next key can be pinned before it changes.
	Pins []string `json:"pins,omitempty"`

	// MinVersion is the lowest TLS version offered to the manager: tls1.0,
	// tls1.1, tls1.2 or tls1.3. Default: tls1.2.
	MinVersion string `json:"min_version,omitempty"`

	// MaxVersion is the highest TLS version offered. Default: tls1.3.
	MaxVersion string `json:"max_version,omitempty"`

	// CipherSuites replaces Go's default TLS 1.0-1.2 suites with these, by
	// Go's names (TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, …). RSA key-exchange
	// (TLS_RSA_WITH_…) and 3DES suites are only offered when listed here.
	// TLS 1.3 suites are not configurable.
	CipherSuites []string `json:"cipher_suites,omitempty"`

	// MaxConns is the most connections open to the manager (per upstream
	// address) and the most requests in flight through this transport.
	// Default: 64. A request beyond it waits, at most MaxConnWait, in a
	// queue of at most 4×MaxConns requests; past either bound it is answered
	// 503 with Retry-After (MaxConnWait in whole seconds, at least 1)
	// without reaching the manager. As many connections are kept idle
	// (keepalive_idle_conns_per_host, if set, wins), so the manager sees a
	// TLS handshake only when the pool grows or a connection ages out.
	MaxConns int `json:"max_conns,omitempty"`

	// MaxConnWait is how long a request may wait for a free connection
	// before the 503. Default: 5s.
	MaxConnWait caddy.Duration `json:"max_conn_wait,omitempty"`

	pool *pool
	h1   *h1Client // nil when Go's transport serves every request
	// abandonedLimit bounds a request whose client left after it was
	// written (atTheWire); tests shorten it.
	abandonedLimit time.Duration
	pins           [][sha256.Size]byte
	logger         *zap.Logger
	handshakes     *prometheus.CounterVec
	retries        *prometheus.CounterVec
}

// CaddyModule returns the Caddy module information.
func (LegacyTLS) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.legacy_tls",
		New: func() caddy.Module { return new(LegacyTLS) },
	}
}

// tlsVersions maps the version names users type to Go's constants.
var tlsVersions = map[string]uint16{
	"tls1.0": tls.VersionTLS10,
	"tls1.1": tls.VersionTLS11,
	"tls1.2": tls.VersionTLS12,
	"tls1.3": tls.VersionTLS13,
}

// Provision checks the configuration, builds Caddy's HTTP transport and
// then adjusts its TLS client configuration.
func (l *LegacyTLS) Provision(ctx caddy.Context) error {
	l.logger = ctx.Logger()
	cfg, err := l.tlsSettings()
	if err != nil {
		return err
	}
	if l.TLS == nil {
		l.TLS = new(reverseproxy.TLSConfig)
	}
	if err := l.checkVerification(); err != nil {
		return err
	}
	if slices.Contains(l.Versions, "3") || slices.Contains(l.Versions, "h2c") {
		return errors.New("legacy_tls: versions: HTTP/3 and h2c are not supported, use 1.1 and/or 2")
	}
	if l.handshakes, err = metrics.Register(ctx.GetMetricsRegistry(), legacyTLSHandshakes); err != nil {
		return fmt.Errorf("legacy_tls: %w", err)
	}
	if l.retries, err = metrics.Register(ctx.GetMetricsRegistry(), upstreamRetries); err != nil {
		return fmt.Errorf("legacy_tls: %w", err)
	}
	if err := l.provisionPool(ctx); err != nil {
		return err
	}
	if err := l.HTTPTransport.Provision(ctx); err != nil {
		return fmt.Errorf("legacy_tls: %w", err)
	}
	l.applyTLS(cfg)
	l.countConnections()
	l.h1 = newH1Client(l)
	return nil
}

// tlsSettings parses pins, versions and suites into a template config.
func (l *LegacyTLS) tlsSettings() (*tls.Config, error) {
	l.pins = l.pins[:0]
	for i, p := range l.Pins {
		sum, err := CheckPin(p)
		if err != nil {
			return nil, fmt.Errorf("legacy_tls: pins[%d]: %w", i, err)
		}
		l.pins = append(l.pins, sum)
	}
	minV, err := parseTLSVersion("min_version", l.MinVersion, tls.VersionTLS12)
	if err != nil {
		return nil, err
	}
	maxV, err := parseTLSVersion("max_version", l.MaxVersion, tls.VersionTLS13)
	if err != nil {
		return nil, err
	}
	if minV > maxV {
		return nil, fmt.Errorf("legacy_tls: min_version %s is above max_version %s",
			tls.VersionName(minV), tls.VersionName(maxV))
	}
	suites, err := parseCipherSuites(l.CipherSuites)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: minV, MaxVersion: maxV, CipherSuites: suites}, nil
}

// checkVerification refuses configurations that would not authenticate the
// manager.
func (l *LegacyTLS) checkVerification() error {
	if l.TLS.InsecureSkipVerify {
		return errors.New("legacy_tls: tls_insecure_skip_verify (tls.insecure_skip_verify) is not allowed: pin the manager's key with `pin` instead")
	}
	if len(l.TLS.ExceptPorts) > 0 {
		return errors.New("legacy_tls: tls_except_ports (tls.except_ports) is not allowed: this transport always speaks TLS")
	}
	if len(l.pins) == 0 && !l.hasTrustPool() {
		return errors.New("legacy_tls: no pin and no trust pool: set `pin sha256/…` (JSON pins; `legacygate pin HOST:PORT` prints it) or `tls_trust_pool` (JSON tls.ca)")
	}
	return nil
}

func (l *LegacyTLS) hasTrustPool() bool {
	return l.TLS.CARaw != nil || len(l.TLS.RootCAPool) > 0 || len(l.TLS.RootCAPEMFiles) > 0
}

// applyTLS changes, in place, the client config Caddy built (it already
// carries ALPN, renegotiation, server name, client certificate and curves).
func (l *LegacyTLS) applyTLS(want *tls.Config) {
	cfg := l.Transport.TLSClientConfig
	if cfg == nil {
		cfg = new(tls.Config)
		l.Transport.TLSClientConfig = cfg
	}
	cfg.MinVersion = want.MinVersion
	cfg.MaxVersion = want.MaxVersion
	cfg.CipherSuites = want.CipherSuites
	if len(l.pins) > 0 {
		// Without a trust pool, the pin is the whole check; with one, Go
		// verifies the chain first and the pin is checked after.
		cfg.InsecureSkipVerify = !l.hasTrustPool()
		cfg.VerifyConnection = l.verifyPin
	}
}

// verifyPin accepts the handshake only if the leaf's key is pinned.
func (l *LegacyTLS) verifyPin(cs tls.ConnectionState) error {
	version := tlsVersionLabel(cs.Version)
	if len(cs.PeerCertificates) == 0 {
		l.handshakes.WithLabelValues("no_certificate", version).Inc()
		return errors.New("legacy_tls: the upstream presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	seen := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	if slices.Contains(l.pins, seen) {
		l.handshakes.WithLabelValues("pin_ok", version).Inc()
		return nil
	}
	l.handshakes.WithLabelValues("pin_mismatch", version).Inc()
	return &PinMismatchError{Seen: FormatPin(seen), Expected: l.Pins, Subject: leaf.Subject.String(), Version: cs.Version}
}

// RoundTrip is the http transport's behind the pool (see MaxConns). A
// small request body of known length leaves with the headers in one write
// (see coalesceBody) and is retried once on a new connection when the
// manager had closed the reused one before any byte of it was written (see
// retryUnsent); nothing is retried once bytes reached the manager. Every failure that reverse_proxy turns into a 502,
// 503 or 504 is logged here once, at error level, with its reason, the
// upstream's address (the handshake itself does not know it) and the path.
func (l *LegacyTLS) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := l.pool.acquire(req.Context()); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		if !errors.Is(err, errPoolExhausted) {
			return nil, err // the client gave up waiting
		}
		l.logFailure(req, poolExhaustedReason, err)
		return busyResponse(req, time.Duration(l.MaxConnWait)), nil
	}
	resp, w, err := l.send(req)
	if err != nil {
		w.done()
		l.pool.release()
		if reason := failureReason(err); reason != "" {
			l.logFailure(req, reason, err)
		}
		return nil, err
	}
	l.holdUntilBodyDone(req, resp, w)
	return resp, nil
}

// errRequestBody marks a request whose body could not be read from the client.
var errRequestBody = errors.New("legacy_tls: reading the request body")

// send takes the synchronous HTTP/1.1 path when it can (see h1Client),
// Go's transport otherwise, and returns the request's wire (see
// atTheWire).
func (l *LegacyTLS) send(req *http.Request) (*http.Response, *wire, error) {
	l.SetScheme(req)
	if l.h1.usable(req) {
		w := onTheWire(req, l.abandonedLimit)
		req = h1Request(req)
		resp, err := l.h1.roundTrip(req, w)
		if !errors.Is(err, errUseTransport) {
			return resp, w, err
		}
		w.done() // req's body is whole: Go's transport takes it as it is
	}
	out, w := atTheWire(req, l.abandonedLimit)
	resp, err := l.roundTrip(out)
	return resp, w, err
}

// h1Request is what the HTTP/1.1 client is given: req itself, or a copy
// when it has a body, which the client may replace with one it buffered
// (reverse_proxy's request keeps the body it gave, as with Go's transport,
// which is given a copy too).
func h1Request(req *http.Request) *http.Request {
	if req.Body == nil || req.Body == http.NoBody {
		return req
	}
	out := *req
	return &out
}

// Cleanup closes the idle connections of both paths.
func (l *LegacyTLS) Cleanup() error {
	if l.h1 != nil {
		l.h1.closeIdle()
	}
	return l.HTTPTransport.Cleanup()
}

func (l *LegacyTLS) roundTrip(req *http.Request) (*http.Response, error) {
	out, body := l.coalesceBody(req)
	resp, err := l.HTTPTransport.RoundTrip(out)
	if body != nil {
		resp, err = l.retryUnsent(out, body, resp, err)
		if readErr := body.finish(); readErr != nil {
			// Whatever the transport did with the empty body (HTTP/2 may
			// even have completed the stream), the request failed.
			if resp != nil {
				resp.Body.Close()
			}
			return nil, fmt.Errorf("%w: %w", errRequestBody, readErr)
		}
	}
	return resp, err
}

// coalesceBody lets a request's headers and body leave in one write, one
// TLS record. Go's transport flushes the headers on their own before
// copying a body it cannot tell is in memory, so a heartbeat's few hundred
// bytes would cost a second record and syscall. A body of known length that
// fits the write buffer is therefore read whole as soon as a connection to
// the manager is ready (not before: when the dial fails, the body is left
// unread and reverse_proxy can retry another upstream), and handed to the
// transport from memory. Bodies of unknown or larger length, and requests
// with Expect, incremental forwarding or a GetBody of their own, are passed
// as they are. If the body cannot be read, the request's context is
// cancelled with the read error before anything is sent: over HTTP/1.1 the
// transport closes the connection without flushing the headers, over
// HTTP/2 it resets the stream instead of ending it after an empty body.
// Once buffered, the body can be sent again: see retryUnsent.
func (l *LegacyTLS) coalesceBody(req *http.Request) (*http.Request, *bufferedBody) {
	if !fitsOneWrite(req, l.writeBufferSize()) || req.GetBody != nil || req.Header.Get("Expect") != "" {
		return req, nil
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	body := &bufferedBody{src: req.Body, size: int(req.ContentLength), cancel: cancel}
	body.trace.GotConn = body.gotConn
	body.trace.WroteHeaders = body.wroteSomething
	body.trace.WroteRequest = func(httptrace.WroteRequestInfo) { body.wroteSomething() }
	out := req.WithContext(httptrace.WithClientTrace(ctx, &body.trace))
	out.Body = io.NopCloser(&body.reader)
	if !goReplaysAfterWriting(req) {
		out.GetBody = body.getBody
	}
	return out, body
}

// defaultWriteBuffer is the size of Go's transport write buffer when the
// http transport's write_buffer is not set.
const defaultWriteBuffer = 4 << 10

// writeBufferSize is the write buffer of a connection to the manager.
func (l *LegacyTLS) writeBufferSize() int {
	if l.WriteBufferSize > 0 {
		return l.WriteBufferSize
	}
	return defaultWriteBuffer
}

// fitsOneWrite reports whether req's body has a known length that fits
// limit with room to be read whole before the write, and is not streamed
// on purpose (Incremental).
func fitsOneWrite(req *http.Request, limit int) bool {
	return req.Body != nil && req.Body != http.NoBody && req.ContentLength > 0 &&
		req.ContentLength <= int64(limit) && len(req.TransferEncoding) == 0 &&
		!caddyhttp.IsIncremental(req.Header)
}

// bufferedBody is a request body read whole once the connection is ready.
type bufferedBody struct {
	src    io.ReadCloser
	size   int
	reader bytes.Reader          // what the transport copies from
	trace  httptrace.ClientTrace // calls gotConn
	cancel context.CancelCauseFunc

	mu     sync.Mutex
	used   bool   // read, or given up by finish
	err    error  // why the read failed
	data   []byte // the body once read whole
	conns  int    // connections the request was given, one per attempt
	reused bool   // the last connection was HTTP/1 and had served a request before
	wrote  bool   // the transport began writing the request on it
}

// gotConn reads the body into reader once a connection is ready; on error
// reader stays empty. It reads at most once, and not after finish, but
// records every attempt.
func (b *bufferedBody) gotConn(info httptrace.GotConnInfo) {
	b.mu.Lock()
	b.conns++
	b.reused, b.wrote = info.Reused && !isHTTP2(info.Conn), false
	if b.used {
		b.mu.Unlock()
		return
	}
	b.used = true
	b.mu.Unlock()
	buf := make([]byte, b.size)
	_, err := io.ReadFull(b.src, buf)
	b.src.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.err = err
		b.cancel(err)
		return
	}
	b.data = buf
	b.reader.Reset(buf)
}

// finish closes a body no connection was found for (a RoundTripper always
// closes the body; reverse_proxy's wrapper keeps an unread one for a retry)
// and returns why reading it failed, if it did.
func (b *bufferedBody) finish() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.used {
		b.used = true
		b.src.Close()
	}
	return b.err
}

func parseTLSVersion(field, name string, fallback uint16) (uint16, error) {
	if name == "" {
		return fallback, nil
	}
	v, ok := tlsVersions[name]
	if !ok {
		return 0, fmt.Errorf("legacy_tls: %s: unknown TLS version %q, want tls1.0, tls1.1, tls1.2 or tls1.3", field, name)
	}
	return v, nil
}

func tlsVersionLabel(v uint16) string {
	for name, id := range tlsVersions {
		if id == v {
			return name
		}
	}
	return "unknown"
}

// parseCipherSuites maps Go's suite names (secure and insecure) to ids.
func parseCipherSuites(names []string) ([]uint16, error) {
	if len(names) == 0 {
		return nil, nil
	}
	known := make(map[string]*tls.CipherSuite)
	for _, s := range slices.Concat(tls.CipherSuites(), tls.InsecureCipherSuites()) {
		known[s.Name] = s
	}
	ids := make([]uint16, 0, len(names))
	for _, name := range names {
		s, ok := known[name]
		if !ok {
			return nil, fmt.Errorf("legacy_tls: cipher_suites: unknown suite %q (use Go's names, e.g. TLS_RSA_WITH_AES_128_CBC_SHA)", name)
		}
		if slices.Equal(s.SupportedVersions, []uint16{tls.VersionTLS13}) {
			return nil, fmt.Errorf("legacy_tls: cipher_suites: %q is a TLS 1.3 suite; Go does not let TLS 1.3 suites be configured", name)
		}
		ids = append(ids, s.ID)
	}
	return ids, nil
}

// legacyTLSHandshakes counts pin checks by result and TLS version; declared
// once so counts carry over reloads (see metrics.Register).
var legacyTLSHandshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "legacygate",
	Subsystem: "upstream_tls",
	Name:      "handshakes_total",
	Help:      "Upstream TLS handshakes of the legacy_tls transport that reached the pin check, by result and TLS version.",
}, []string{"result", "tls_version"})

// Interface guards
var (
	_ caddy.Provisioner                                = (*LegacyTLS)(nil)
	_ http.RoundTripper                                = (*LegacyTLS)(nil)
	_ caddy.CleanerUpper                               = (*LegacyTLS)(nil)
	_ reverseproxy.TLSTransport                        = (*LegacyTLS)(nil)
	_ reverseproxy.HealthCheckSchemeOverriderTransport = (*LegacyTLS)(nil)
)

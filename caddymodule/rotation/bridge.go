package rotation

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/caddymodule/internal/response"
	"github.com/legacygate/legacygate/internal/query"
)

func init() {
	caddy.RegisterModule(PlaintextBridge{})
	httpcaddyfile.RegisterHandlerDirective("plaintext_bridge", parsePlaintextBridge)
	// First of legacygate's handlers (see caddymodule/doc.go).
	httpcaddyfile.RegisterDirectiveOrder("plaintext_bridge", httpcaddyfile.Before, "redir")
}

// What plaintext_bridge does outside the window.
const (
	outsideMigrate = "migrate"
	outside426     = "426"
	outside403     = "403"
)

// defaultBridgeMaxBody bounds request bodies on plain HTTP: registrations
// are small, log uploads (200-300 KB) are refused.
const defaultBridgeMaxBody = 64 << 10

// PlaintextBridge guards the plain-HTTP listener (SEPM's 8014) (module
// http.handlers.plaintext_bridge). It is meant for that listener only; on a
// TLS listener it applies the same rules.
//
// While the legacygate app's rotation window is open, it passes requests
// for the allowed paths on (to policy_guard and reverse_proxy). Outside the
// window it passes only the migration requests (the index and the settings
// document, which policy_guard rewrites with drop_http_only so the client
// moves to HTTPS) and refuses the rest with 426 Upgrade Required, or refuses
// everything with 426 or 403, as configured. Log uploads and request bodies
// over max_body are refused always. Each heartbeat it sees is reported to
// the app as seen on plaintext, so the operator knows who still uses it.
// Every refusal is logged with its reason and counted by reason.
//
// A request that names a query parameter the bridge decides on more than
// once (one in its migration or upload rules, the app's heartbeat
// parameters, or the app's client_id parameter), or with a malformed
// escape, is refused with 400 (duplicate_key, bad_query) before anything
// else: ?action=index&action=log is a log upload to a manager that reads the
// last value, whatever the first one says. Parameter names and values are
// matched ignoring ASCII case.
type PlaintextBridge struct {
	// Allow lists the paths passed on while the window is open. Matched
	// case-insensitively; a trailing * matches any rest.
	Allow []string `json:"allow,omitempty"`

	// Migration lists the requests passed on outside the window when
	// OutsideWindow is "migrate": list the heartbeat (index) request, which
	// tells the client new settings exist, and the settings request.
	Migration []RequestSpec `json:"migration,omitempty"`

	// Uploads lists the log upload requests, refused always. Default: path
	// /secars/secars.dll, query action=log.
	Uploads []RequestSpec `json:"uploads,omitempty"`

	// OutsideWindow is "migrate" (default), "426" or "403".
	OutsideWindow string `json:"outside_window,omitempty"`

	// MaxBody is the largest request body passed on, in bytes. Default 64 KiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// KeepFile names a file of client ids kept on plain HTTP: agents that
	// speak no TLS 1.2 (XP-era, TLS 1.0 only), which the front never
	// serves. Their requests for the allow paths pass outside the window
	// too (reason kept), policy_guard's rewrite leaves the plain-HTTP
	// server entries in their settings, their payloads are signed as
	// everyone's, and the rotation status lists them as needing an agent
	// upgrade. One id per line, # comments; at most 10,000 ids and 1 MiB.
	// Read at every provision, so a reload picks up changes.
	KeepFile string `json:"keep_file,omitempty"`

	app       *App
	keys      []string // the query parameters decided on
	allow     []requestMatcher
	migration []requestMatcher
	uploads   []requestMatcher
	logger    *zap.Logger
	results   *prometheus.CounterVec
	unkeep    func()
}

// CaddyModule returns the Caddy module information.
func (PlaintextBridge) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.plaintext_bridge",
		New: func() caddy.Module { return new(PlaintextBridge) },
	}
}

// Reasons, the values of the metric's reason label, with
// response.ReasonDuplicateKey and response.ReasonBadQuery.
const (
	bridgeWindowOpen     = "window_open"
	bridgeMigration      = "migration"
	bridgePathNotAllowed = "path_not_allowed"
	bridgeLogUpload      = "log_upload"
	bridgeBodyTooLarge   = "body_too_large"
	bridgeOutsideWindow  = "outside_window"
	bridgeKept           = "kept"
)

var plaintextBridgeResults = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "legacygate_plaintext_bridge_requests_total",
	Help: "Requests on the plaintext bridge, by result (passed, refused) and reason.",
}, []string{"result", "reason"})

// Provision finds the legacygate app and registers the counter. Caddy
// calls Validate after it.
func (b *PlaintextBridge) Provision(ctx caddy.Context) error {
	app, err := ctx.AppIfConfigured("legacygate")
	if err != nil {
		return fmt.Errorf("plaintext_bridge: needs the legacygate global option (its rotation window): %w", err)
	}
	return b.provision(ctx, app.(*App))
}

func (b *PlaintextBridge) provision(ctx caddy.Context, app *App) error {
	b.logger, b.app = ctx.Logger(), app
	if b.OutsideWindow == "" {
		b.OutsideWindow = outsideMigrate
	}
	if b.MaxBody == 0 {
		b.MaxBody = defaultBridgeMaxBody
	}
	uploads := b.Uploads
	if len(uploads) == 0 {
		uploads = []RequestSpec{{Path: defaultHeartbeatPath, Query: map[string]string{"action": "log"}}}
	}
	for _, p := range b.Allow {
		b.allow = append(b.allow, newRequestMatcher(RequestSpec{Path: p}))
	}
	for _, s := range b.Migration {
		b.migration = append(b.migration, newRequestMatcher(s))
	}
	for _, s := range uploads {
		b.uploads = append(b.uploads, newRequestMatcher(s))
	}
	for _, m := range slices.Concat(b.migration, b.uploads) {
		for _, k := range m.keys() {
			b.keys = appendKey(b.keys, k)
		}
	}
	for _, k := range app.decisionKeys() {
		b.keys = appendKey(b.keys, k)
	}
	if b.KeepFile != "" {
		ids, err := readKeepFile(b.KeepFile)
		if err != nil {
			return fmt.Errorf("plaintext_bridge: keep: %w", err)
		}
		b.unkeep = app.KeepClients(ids)
		b.logger.Info("clients kept on plain HTTP", zap.String("file", b.KeepFile), zap.Int("clients", len(ids)))
	}
	var err error
	b.results, err = metrics.Register(ctx.GetMetricsRegistry(), plaintextBridgeResults)
	return err
}

// Cleanup takes the handler's keep list off the app.
func (b *PlaintextBridge) Cleanup() error {
	if b.unkeep != nil {
		b.unkeep()
	}
	return nil
}

// Validate names the first wrong field.
func (b *PlaintextBridge) Validate() error {
	switch b.OutsideWindow {
	case "", outsideMigrate, outside426, outside403:
	default:
		return fmt.Errorf("plaintext_bridge: outside_window: %q is not migrate, 426 or 403", b.OutsideWindow)
	}
	if len(b.Allow) == 0 {
		return errors.New("plaintext_bridge: allow: at least one path is required")
	}
	if (b.OutsideWindow == "" || b.OutsideWindow == outsideMigrate) && len(b.Migration) == 0 {
		return errors.New("plaintext_bridge: migration: outside_window migrate needs at least one migration request (the index and the settings request)")
	}
	if b.MaxBody < 0 {
		return fmt.Errorf("plaintext_bridge: max_body: %d is negative", b.MaxBody)
	}
	for _, p := range b.Allow {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("plaintext_bridge: allow: %q does not start with /", p)
		}
	}
	for _, list := range []struct {
		field string
		specs []RequestSpec
	}{{"migration", b.Migration}, {"upload", b.Uploads}} {
		for _, s := range list.specs {
			if s.Path == "" && len(s.Query) == 0 {
				return fmt.Errorf("plaintext_bridge: %s: give a path, query parameters, or both", list.field)
			}
			if s.Path != "" && !strings.HasPrefix(s.Path, "/") {
				return fmt.Errorf("plaintext_bridge: %s: %q does not start with /", list.field, s.Path)
			}
		}
	}
	return nil
}

// ServeHTTP passes the request on or refuses it.
func (b *PlaintextBridge) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	for _, k := range b.keys {
		if _, _, err := query.Single(r.URL.RawQuery, k); err != nil {
			return b.refuse(w, r, http.StatusBadRequest, response.QueryReason(err), err)
		}
	}
	b.app.ObserveHeartbeat(r, true)
	if matchAny(b.uploads, r) {
		return b.refuse(w, r, http.StatusForbidden, bridgeLogUpload, nil)
	}
	if r.ContentLength > b.MaxBody {
		return b.refuse(w, r, http.StatusRequestEntityTooLarge, bridgeBodyTooLarge, nil)
	}
	reason := b.decide(r)
	switch reason {
	case bridgeWindowOpen, bridgeMigration, bridgeKept:
	case bridgePathNotAllowed:
		return b.refuse(w, r, http.StatusForbidden, reason, nil)
	default:
		status := http.StatusUpgradeRequired
		if b.OutsideWindow == outside403 {
			status = http.StatusForbidden
		}
		return b.refuse(w, r, status, reason, nil)
	}
	if r.Body != nil && r.Body != http.NoBody {
		// A body of unknown length is cut at max_body.
		r.Body = http.MaxBytesReader(w, r.Body, b.MaxBody)
	}
	b.results.WithLabelValues("passed", reason).Inc()
	return next.ServeHTTP(w, r)
}

// decide returns why r passes (window_open, kept, migration) or is refused.
func (b *PlaintextBridge) decide(r *http.Request) string {
	if b.app.windowOpen(b.app.now()) {
		if matchAny(b.allow, r) {
			return bridgeWindowOpen
		}
		return bridgePathNotAllowed
	}
	if matchAny(b.allow, r) && b.app.Kept(r) {
		return bridgeKept
	}
	if b.OutsideWindow == outsideMigrate && matchAny(b.migration, r) {
		return bridgeMigration
	}
	return bridgeOutsideWindow
}

// appendKey appends k to keys unless it is there, ignoring ASCII case.
func appendKey(keys []string, k string) []string {
	if slices.ContainsFunc(keys, func(x string) bool { return query.EqualFold(x, k) }) {
		return keys
	}
	return append(keys, k)
}

// matchAny reports whether one of ms matches r. ServeHTTP has refused every
// request on which a matcher could fail (a rule's parameter twice or
// malformed), so a failure here is no match.
func matchAny(ms []requestMatcher, r *http.Request) bool {
	for _, m := range ms {
		if ok, err := m.match(r); ok && err == nil {
			return true
		}
	}
	return false
}

// refuse answers status with a one-line body, logs why (with err, if any)
// and counts it. 426 names the protocol to move to (RFC 9110 15.5.22, RFC
// 2817).
func (b *PlaintextBridge) refuse(w http.ResponseWriter, r *http.Request, status int, reason string, err error) error {
	b.results.WithLabelValues("refused", reason).Inc()
	client, _ := b.app.clientID(r)
	fields := []zap.Field{
		zap.String("reason", reason),
		zap.Int("status", status),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.String("client", client),
		zap.String("remote", r.RemoteAddr),
	}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	b.logger.Info("plaintext request refused", fields...)
	h := w.Header()
	if status == http.StatusUpgradeRequired {
		h.Set("Upgrade", "TLS/1.2")
		h.Set("Connection", "Upgrade")
	}
	body := strconv.Itoa(status) + " " + http.StatusText(status) + ": " + bridgeRefusalText[reason] + "\n"
	return response.Refuse(w, status, 0, body)
}

var bridgeRefusalText = map[string]string{
	bridgePathNotAllowed: "this path is not served over plain HTTP",
	bridgeLogUpload:      "log uploads are not accepted over plain HTTP",
	bridgeBodyTooLarge:   "request body too large for plain HTTP",
	bridgeOutsideWindow:  "use HTTPS",

	response.ReasonDuplicateKey: response.QueryRefusalText(response.ReasonDuplicateKey),
	response.ReasonBadQuery:     response.QueryRefusalText(response.ReasonBadQuery),
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*PlaintextBridge)(nil)
	_ caddy.Validator             = (*PlaintextBridge)(nil)
	_ caddy.CleanerUpper          = (*PlaintextBridge)(nil)
	_ caddyhttp.MiddlewareHandler = (*PlaintextBridge)(nil)
)

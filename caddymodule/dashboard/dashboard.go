// Package dashboard is the operator's live rotation page (module
// http.handlers.legacygate_dashboard): the rotation window, clients by
// state, the share confirmed, plaintext clients, stragglers, heartbeat_limit
// outcomes and the upstream pool, refreshing itself.
package dashboard

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/rotation"
	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/rotationtable"
)

func init() {
	caddy.RegisterModule(Dashboard{})
	httpcaddyfile.RegisterHandlerDirective("legacygate_dashboard", parseDashboard)
	// With the handlers that answer (as metrics does), after basic_auth and
	// forward_auth, so that an auth directive in the same site runs first.
	httpcaddyfile.RegisterDirectiveOrder("legacygate_dashboard", httpcaddyfile.Before, "metrics")
}

// Defaults and bounds.
const (
	defaultRefresh    = 2 * time.Second
	minRefresh        = 500 * time.Millisecond
	maxRefresh        = time.Hour
	defaultStragglers = 20
)

// Dashboard serves the live rotation page: GET (or HEAD) answers the page,
// a static HTML document whose inline script polls ?format=json, the same
// figures as JSON for scripts. The page loads nothing else (it works
// offline) and is served with a Content-Security-Policy that allows only
// its own script and style, by hash. Client ids are chosen by clients: the
// page inserts them as text only, never as markup.
//
// It is an operator's page: put it on a site bound to loopback, or behind
// basic_auth. Unless allow_remote is set, a request whose peer (the TCP
// connection's remote address, not a forwarded header) is not a loopback
// address is refused with 403.
type Dashboard struct {
	// AllowRemote serves peers that are not on loopback. Set it only when
	// an authentication directive (basic_auth, forward_auth) guards the
	// route.
	AllowRemote bool `json:"allow_remote,omitempty"`

	// Refresh is how often the page asks for new figures. Default 2s;
	// 500ms to 1h.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// Stragglers is how many stragglers (unconfirmed clients, longest
	// silent first) are listed. Default 20; 1 to 1000.
	Stragglers int `json:"stragglers,omitempty"`

	app      *rotation.App // nil: no legacygate global option
	gatherer prometheus.Gatherer
	page     []byte
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Dashboard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.legacygate_dashboard",
		New: func() caddy.Module { return new(Dashboard) },
	}
}

// Provision finds the legacygate app (if configured) and the metrics.
func (d *Dashboard) Provision(ctx caddy.Context) error {
	d.logger = ctx.Logger()
	if d.Refresh == 0 {
		d.Refresh = caddy.Duration(defaultRefresh)
	}
	if d.Stragglers == 0 {
		d.Stragglers = defaultStragglers
	}
	if err := d.Validate(); err != nil {
		return err
	}
	app, err := ctx.AppIfConfigured("legacygate")
	switch {
	case err == nil:
		d.app = app.(*rotation.App)
	case !errors.Is(err, caddy.ErrNotConfigured):
		return fmt.Errorf("legacygate_dashboard: loading the legacygate app: %w", err)
	}
	d.gatherer = ctx.GetMetricsRegistry()
	d.page = renderPage(time.Duration(d.Refresh))
	return nil
}

// Validate names the first wrong field.
func (d *Dashboard) Validate() error {
	if r := time.Duration(d.Refresh); r != 0 && (r < minRefresh || r > maxRefresh) {
		return fmt.Errorf("legacygate_dashboard: refresh: %s is not from %s to %s", r, minRefresh, maxRefresh)
	}
	if d.Stragglers < 0 || d.Stragglers > rotationtable.MaxStragglerPage {
		return fmt.Errorf("legacygate_dashboard: stragglers: %d is not from 1 to %d", d.Stragglers, rotationtable.MaxStragglerPage)
	}
	return nil
}

// ServeHTTP answers the page or its JSON. It never calls next.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	if !d.AllowRemote && !loopbackPeer(r.RemoteAddr) {
		d.logger.Warn("dashboard request from a peer not on loopback refused",
			zap.String("remote", r.RemoteAddr), zap.String("reason", "not_loopback"))
		return plain(w, http.StatusForbidden, "403 Forbidden: the dashboard answers loopback peers only (see allow_remote)\n")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		return plain(w, http.StatusMethodNotAllowed, "405 Method Not Allowed: use GET\n")
	}
	format, _, err := query.Single(r.URL.RawQuery, "format")
	if err != nil {
		return plain(w, http.StatusBadRequest, "400 Bad Request: format: "+err.Error()+"\n")
	}
	switch format {
	case "":
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("Content-Length", strconv.Itoa(len(d.page)))
		if r.Method == http.MethodHead {
			return nil
		}
		_, err := w.Write(d.page)
		return err
	case "json":
		body, err := json.Marshal(d.snapshot())
		if err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		if r.Method == http.MethodHead {
			return nil
		}
		_, err = w.Write(body)
		return err
	}
	return plain(w, http.StatusBadRequest, "400 Bad Request: format: want json, or no format for the page\n")
}

func plain(w http.ResponseWriter, status int, body string) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, err := w.Write([]byte(body))
	return err
}

// loopbackPeer reports whether the connection's remote address is on
// loopback (127.0.0.0/8, ::1).
func loopbackPeer(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return ip != nil && ip.IsLoopback()
}

// Page parts, embedded so that the page needs nothing from the network.
var (
	//go:embed page.html
	pageHTML string
	//go:embed page.css
	pageCSS string
	//go:embed page.js
	pageJS string
)

// contentSecurityPolicy allows the page's own script and style (by hash),
// fetching from its own origin, and nothing else.
var contentSecurityPolicy = "default-src 'none'; script-src " + hashSource(pageJS) +
	"; style-src " + hashSource(pageCSS) + "; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func hashSource(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// renderPage fills the page template; nothing in it comes from a client.
func renderPage(refresh time.Duration) []byte {
	return []byte(strings.NewReplacer(
		"{{refresh_ms}}", strconv.FormatInt(refresh.Milliseconds(), 10),
		"{{style}}", pageCSS,
		"{{script}}", pageJS,
	).Replace(pageHTML))
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Dashboard)(nil)
	_ caddy.Validator             = (*Dashboard)(nil)
	_ caddyhttp.MiddlewareHandler = (*Dashboard)(nil)
)

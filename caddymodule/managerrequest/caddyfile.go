package managerrequest

import (
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(ManagerRequest)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// subdirectives, for the "did you mean" of an unknown one.
var subdirectives = []string{"allow", "decision_keys", "max_header_size", "keep_header", "fixed_error_body"}

// maxHeaderSizeLimit bounds max_header_size: far above any legacy client's
// head, low enough that a typo (16GB) is caught.
const maxHeaderSizeLimit = 1 << 20

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	manager_request [<matcher>] {
//	    allow            <METHOD> [<METHOD>...] <path>
//	    decision_keys    <key> [<key>...]
//	    max_header_size  <size>
//	    keep_header      <field> [<field>...]
//	    fixed_error_body on|off
//	}
//
// allow, decision_keys and keep_header may be repeated; allow is required.
// An allow path ending in "/*" is a prefix; paths match ASCII
// case-insensitively and are rewritten to the listed spelling. Methods are
// upper-case. A path not listed is 404, a method not listed for it 405.
// decision_keys are the query keys the gateway decides on: named twice in a
// request, it is refused. max_header_size takes a size as Caddy's own
// options do (16KB is 16000 bytes, 16KiB 16384) and defaults to the
// server's max_header_size. keep_header keeps a manager response field that
// is dropped by default (Server, Via, X-Powered-By, X-AspNet*,
// MicrosoftOfficeWebServer, MicrosoftSharePointTeamServices, X-SourceFiles,
// Set-Cookie). fixed_error_body (default on) replaces the body of a
// manager's 5xx answer with "<code> <status text>".
func (m *ManagerRequest) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.Errf("manager_request: takes no arguments, only a block (unexpected %q)", d.Val())
	}
	for d.NextBlock(0) {
		field := d.Val()
		switch field {
		case "allow":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("manager_request: allow: want one or more methods and a path, e.g. `allow GET POST /secars/secars.dll`")
			}
			path, methods := args[len(args)-1], args[:len(args)-1]
			if !strings.HasPrefix(path, "/") {
				return d.Errf("manager_request: allow: the last value %q is not a path starting with /", path)
			}
			for _, method := range methods {
				if !isMethodToken(method) {
					return d.Errf("manager_request: allow: method %q is not an upper-case name (did you mean %q?)", method, strings.ToUpper(method))
				}
			}
			m.Allow = append(m.Allow, AllowRule{Path: path, Methods: methods})
		case "decision_keys":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("manager_request: decision_keys: want at least one query key")
			}
			m.DecisionKeys = append(m.DecisionKeys, args...)
		case "max_header_size":
			args := d.RemainingArgs()
			if len(args) != 1 {
				return d.Errf("manager_request: max_header_size: want exactly one size, e.g. 16KB")
			}
			n, err := humanize.ParseBytes(args[0])
			if err != nil || n == 0 || n > maxHeaderSizeLimit {
				return d.Errf("manager_request: max_header_size: %q is not a size between 1 byte and 1MiB", args[0])
			}
			m.MaxHeaderSize = int(n)
		case "keep_header":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("manager_request: keep_header: want at least one header field name")
			}
			m.KeepHeaders = append(m.KeepHeaders, args...)
		case "fixed_error_body":
			args := d.RemainingArgs()
			if len(args) != 1 || (args[0] != "on" && args[0] != "off") {
				return d.Errf("manager_request: fixed_error_body: want on or off")
			}
			on := args[0] == "on"
			m.FixedErrorBody = &on
		default:
			return d.Errf("manager_request: unknown subdirective %q (did you mean %q?)", field, caddyarg.Nearest(field, subdirectives))
		}
		if d.NextBlock(1) {
			return d.Errf("manager_request: %s takes no block", field)
		}
	}
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*ManagerRequest)(nil)

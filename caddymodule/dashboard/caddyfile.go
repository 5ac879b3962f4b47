package dashboard

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

func parseDashboard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := new(Dashboard)
	err := d.UnmarshalCaddyfile(h.Dispenser)
	return d, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	legacygate_dashboard [<matcher>] {
//	    allow_remote
//	    refresh    <duration>
//	    stragglers <n>
//	}
//
// Put it on a site bound to loopback, or behind basic_auth (and then set
// allow_remote), for example:
//
//	http://127.0.0.1:2020 {
//	    legacygate_dashboard
//	}
func (d *Dashboard) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next()
	if disp.NextArg() {
		return disp.ArgErr()
	}
	for disp.NextBlock(0) {
		var err error
		switch disp.Val() {
		case "allow_remote":
			d.AllowRemote, err = true, caddyarg.None(disp)
		case "refresh":
			err = caddyarg.Duration(disp, &d.Refresh)
		case "stragglers":
			d.Stragglers, err = caddyarg.Int(disp, 1)
		default:
			return disp.Errf("legacygate_dashboard: unknown subdirective %q (allow_remote, refresh, stragglers)", disp.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*Dashboard)(nil)

package rotation

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

func parsePlaintextBridge(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	b := new(PlaintextBridge)
	err := b.UnmarshalCaddyfile(h.Dispenser)
	return b, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	plaintext_bridge [<matcher>] {
//	    allow          <path> [<path>...]
//	    migration      [<path>] [<param>=<value>...]
//	    upload         [<path>] [<param>=<value>...]
//	    outside_window migrate|426|403
//	    max_body       <size>
//	    keep           <file>
//	}
//
// allow, migration and upload may be repeated. A path matches
// case-insensitively, a trailing * matches any rest; every <param>=<value>
// must be in the query, once, name and value matched ignoring ASCII case.
// upload replaces the default (/secars/secars.dll action=log). A request
// naming any of these parameters, or the legacygate app's heartbeat or
// client_id parameters, more than once is refused with 400. keep names a
// file of client ids (one per line) kept on plain HTTP past the window.
func (b *PlaintextBridge) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "allow":
			b.Allow, err = caddyarg.Append(d, b.Allow)
		case "migration":
			var s *RequestSpec
			if s, err = unmarshalRequestSpec(d); err == nil {
				b.Migration = append(b.Migration, *s)
			}
		case "upload":
			var s *RequestSpec
			if s, err = unmarshalRequestSpec(d); err == nil {
				b.Uploads = append(b.Uploads, *s)
			}
		case "outside_window":
			b.OutsideWindow, err = caddyarg.One(d)
		case "max_body":
			b.MaxBody, err = caddyarg.Size(d)
		case "keep":
			b.KeepFile, err = caddyarg.One(d)
		default:
			return d.Errf("plaintext_bridge: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*PlaintextBridge)(nil)

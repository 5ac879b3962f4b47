package policyguard

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

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
//	    allow_sha1    [on|off]
//	    ignore_expiry
//	    max_size      <size>
//	    cache_size    <size>
//	    allow_non_xml <media-type> [<media-type>...]
//	    rewrite {
//	        ...
//	    }
//	    offload [{
//	        ...
//	    }]
//	}
//
// upstream_cert, roots and allow_non_xml may be repeated; their lists add
// up. allow_non_xml names the media types (text/plain) whose 2xx bodies may
// pass although they are not XML; without it such a body is refused with a
// 502. A body that is XML is judged as XML whatever its Content-Type. Sizes
// take units (16MiB, 64MB) or plain bytes. Without signing_key, the legacygate
// global option supplies the keys. The rewrite block's syntax is in
// unmarshalGuardRewrite, the offload block's (optional: `offload` alone
// takes the SEPM defaults) in unmarshalOffload.
func (g *PolicyGuard) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "upstream_cert":
			g.UpstreamCerts, err = caddyarg.Append(d, g.UpstreamCerts)
		case "roots":
			g.Roots, err = caddyarg.Append(d, g.Roots)
		case "signing_key":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Err("signing_key: want <key_file> <cert_file>")
			}
			g.SigningKeyFile, g.SigningCertFile = args[0], args[1]
		case "allow_sha1":
			// Alone, or on/off so an environment variable can switch it.
			g.AllowSHA1 = true
			if d.CountRemainingArgs() > 0 {
				var off bool
				off, err = caddyarg.Off(d)
				g.AllowSHA1 = !off
			}
		case "ignore_expiry":
			g.IgnoreExpiry, err = true, caddyarg.None(d)
		case "max_size":
			g.MaxSize, err = caddyarg.Size(d)
		case "cache_size":
			g.CacheSize, err = caddyarg.Size(d)
		case "rewrite":
			g.Rewrite, err = unmarshalGuardRewrite(d)
		case "allow_non_xml":
			g.AllowNonXML, err = caddyarg.Append(d, g.AllowNonXML)
		case "offload":
			g.Offload, err = unmarshalOffload(d)
		default:
			return d.Errf("policy_guard: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*PolicyGuard)(nil)

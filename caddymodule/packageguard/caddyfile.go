package packageguard

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

func parsePackageGuard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(PackageGuard)
	err := g.UnmarshalCaddyfile(h.Dispenser)
	return g, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	package_guard [<matcher>] {
//	    upstream_cert    <file> [<file>...]
//	    signature_header <header>
//	    signature_suffix <suffix>
//	    allow_sha1
//	    ignore_expiry
//	    max_size         <size>
//	}
//
// upstream_cert may be repeated; its lists add up. Without signature_header
// the signature is fetched from the package's path plus signature_suffix
// (default .p7s). Sizes take units (64MiB) or plain bytes. An answer that
// repeats Content-Encoding, Content-Type, Content-Length or
// Transfer-Encoding, on any status, and a 2xx package encoded other than
// identity are refused with a 502. There is no allow_non_xml: packages are
// not XML, and their detached signature covers their exact bytes. For
// example:
//
//	package_guard /epm/packages/* {
//	    upstream_cert /etc/legacygate/manager.crt
//	}
func (g *PackageGuard) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "upstream_cert":
			g.UpstreamCerts, err = caddyarg.Append(d, g.UpstreamCerts)
		case "signature_header":
			g.SignatureHeader, err = caddyarg.One(d)
		case "signature_suffix":
			g.SignatureSuffix, err = caddyarg.One(d)
		case "allow_sha1":
			g.AllowSHA1, err = true, caddyarg.None(d)
		case "ignore_expiry":
			g.IgnoreExpiry, err = true, caddyarg.None(d)
		case "max_size":
			g.MaxSize, err = caddyarg.Size(d)
		default:
			return d.Errf("package_guard: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*PackageGuard)(nil)

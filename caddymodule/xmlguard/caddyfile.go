package xmlguard

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

func parseXMLGuard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(XMLGuard)
	err := g.UnmarshalCaddyfile(h.Dispenser)
	return g, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	xml_guard [<matcher>] {
//	    max_size     <size>
//	    max_depth    <n>
//	    max_elements <n>
//	    roots        <element> [<element>...]
//	    soap_actions <action> [<action>...]
//	    requests     on|off
//	    responses    on|off
//	    allow_non_xml <media-type> [<media-type>...]
//	}
//
// The block is optional: `xml_guard /MAWebService2/*` checks requests and
// responses with the defaults. Sizes take units (1MiB, 512KB) or plain
// bytes. An element is a local name (Envelope, any namespace) or
// {namespace}local. roots and soap_actions may be repeated; their lists add
// up. Actions are written without the quotes the SOAPAction header carries.
// allow_non_xml (repeatable, lists add up) names the media types, such as
// text/plain, whose 2xx response bodies may pass although they are not XML;
// without it such a response is refused with a 502. Whether a body is XML
// is decided by its bytes: an XML body is checked whatever its Content-Type.
// A response that repeats Content-Encoding, Content-Type, Content-Length or
// Transfer-Encoding, or whose 2xx body is encoded other than identity, is
// refused too.
func (g *XMLGuard) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "max_size":
			g.MaxSize, err = caddyarg.Size(d)
		case "max_depth":
			g.MaxDepth, err = caddyarg.Int(d, 1)
		case "max_elements":
			g.MaxElements, err = caddyarg.Int(d, 1)
		case "roots":
			g.Roots, err = caddyarg.Append(d, g.Roots)
		case "soap_actions":
			g.SOAPActions, err = caddyarg.Append(d, g.SOAPActions)
		case "requests":
			g.SkipRequests, err = caddyarg.Off(d)
		case "responses":
			g.SkipResponses, err = caddyarg.Off(d)
		case "allow_non_xml":
			g.AllowNonXML, err = caddyarg.Append(d, g.AllowNonXML)
		default:
			return d.Errf("xml_guard: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*XMLGuard)(nil)

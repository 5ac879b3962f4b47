package contentcache

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

func parseContentCache(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	c := new(ContentCache)
	err := c.UnmarshalCaddyfile(h.Dispenser)
	return c, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	content_cache [<matcher>] {
//	    dir               <directory>
//	    max_disk          <size>
//	    max_object        <size>
//	    max_memory        <size>
//	    max_memory_object <size>
//	    prefix            <path>
//	    fetch_timeout     <duration>
//	}
//
// Every subdirective is optional. Sizes take units (4GiB, 64MB) or plain
// bytes. Scope it to the downloads, for example:
//
//	content_cache /content/* {
//	    max_disk 20GiB
//	}
func (c *ContentCache) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "dir":
			c.Dir, err = caddyarg.One(d)
		case "max_disk":
			c.MaxDisk, err = caddyarg.Size(d)
		case "max_object":
			c.MaxObject, err = caddyarg.Size(d)
		case "max_memory":
			c.MaxMemory, err = caddyarg.Size(d)
		case "max_memory_object":
			c.MaxMemoryObject, err = caddyarg.Size(d)
		case "prefix":
			c.Prefix, err = caddyarg.One(d)
		case "fetch_timeout":
			err = caddyarg.Duration(d, &c.FetchTimeout)
		default:
			return d.Errf("content_cache: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*ContentCache)(nil)

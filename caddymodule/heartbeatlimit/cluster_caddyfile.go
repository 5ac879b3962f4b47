package heartbeatlimit

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

// unmarshalCaddyfile reads the cluster block. Syntax:
//
//	cluster redis {
//	    address      <host:port>
//	    username     <name>
//	    password     <secret>
//	    db           <N>
//	    key_prefix   <prefix>
//	    tls
//	    timeout      <duration>
//	    interval     <duration>
//	    instance_ttl <duration>
//	}
//
// Without address, the Redis client of the configured storage is used
// (storage redis { … } in the global options). redis is the only backend.
func (c *HeartbeatCluster) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Err("heartbeat_limit: cluster: want a backend: cluster redis { … }")
	}
	if d.Val() != "redis" {
		return d.Errf("heartbeat_limit: cluster: unknown backend %q (want redis)", d.Val())
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "address":
			err = caddyarg.Parse(d, caddyarg.SetString(&c.Address))
		case "username":
			err = caddyarg.Parse(d, caddyarg.SetString(&c.Username))
		case "password":
			err = caddyarg.Parse(d, caddyarg.SetString(&c.Password))
		case "db":
			err = caddyarg.Parse(d, caddyarg.SetInt(&c.DB))
		case "key_prefix":
			err = caddyarg.Parse(d, caddyarg.SetString(&c.KeyPrefix))
		case "tls":
			err = caddyarg.None(d)
			c.TLS = true
		case "timeout":
			err = caddyarg.Parse(d, caddyarg.SetDuration(&c.Timeout))
		case "interval":
			err = caddyarg.Parse(d, caddyarg.SetDuration(&c.Interval))
		case "instance_ttl":
			err = caddyarg.Parse(d, caddyarg.SetDuration(&c.InstanceTTL))
		default:
			return d.Errf("heartbeat_limit: cluster: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

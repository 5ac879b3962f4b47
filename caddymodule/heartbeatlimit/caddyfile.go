package heartbeatlimit

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	heartbeat_limit [<matcher>] {
//	    zone        <name>
//	    key         <placeholder…> | xml_body <element>
//	    rate        <N>/<duration>
//	    burst       <N>
//	    max_clients <N>
//	    global_rate <N>/<duration>
//	    max_wait    <duration>
//	    status      429|503
//	    jitter      <fraction>
//	    body_file   <path>
//	    kcs         <hex Kcs of SyLink.xml>|off
//	    last_index  <max clients>
//	    distributed {
//	        zone      <name>
//	        interval  <duration>
//	        purge_age <duration>
//	        storage   <module> { … }
//	    }
//	    cluster redis { … }
//	}
//
// cluster redis is described at HeartbeatCluster's unmarshalCaddyfile.
//
// key values are ASCII upper-cased before hashing: SEPM host ids are hex
// digits or GUIDs, so folding merges only one client's own case variants
// (HOSTID=ab and hostid=AB share a bucket) instead of giving an id with n
// letters 2^n buckets. A query placeholder in key ({query.X}) must
// be a key part of its own; its parameter name matches ignoring case and
// after decoding, and a request that names X twice (hostid=A&HostId=B), or
// carries a key header twice, or has a malformed escape in X, is refused
// with 400 (reason duplicate_key or bad_query in the log and in
// legacygate_heartbeat_limit_requests_total{outcome="refused"}) and never
// reaches the manager, which might read the other value.
//
// For example, for a SEPM-style manager, one client being a host id seen
// from one address:
//
//	heartbeat_limit /secars/secars.dll {
//	    key {query.hostid} {client_ip}
//	    rate 1/60s
//	    burst 3
//	    max_clients 1000000
//	    global_rate 200/1s
//	    max_wait 2s
//	    status 503
//	}
func (h *HeartbeatLimit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "zone":
			err = caddyarg.Parse(d, caddyarg.SetString(&h.Zone))
		case "key":
			err = h.unmarshalKey(d)
		case "rate":
			err = caddyarg.Parse(d, caddyarg.SetString(&h.Rate))
		case "burst":
			err = caddyarg.Parse(d, caddyarg.SetInt(&h.Burst))
		case "max_clients":
			err = caddyarg.Parse(d, caddyarg.SetInt(&h.MaxClients))
		case "global_rate":
			err = caddyarg.Parse(d, caddyarg.SetString(&h.GlobalRate))
		case "max_wait":
			err = caddyarg.Parse(d, func(s string) error {
				v, err := caddy.ParseDuration(s)
				d := caddy.Duration(v)
				h.MaxWait = &d
				return err
			})
		case "status":
			err = caddyarg.Parse(d, caddyarg.SetInt(&h.Status))
		case "jitter":
			err = caddyarg.Parse(d, func(s string) error {
				v, err := strconv.ParseFloat(s, 64)
				h.Jitter = v
				return err
			})
		case "body_file":
			err = caddyarg.Parse(d, caddyarg.SetString(&h.BodyFile))
		case "kcs":
			err = caddyarg.Parse(d, caddyarg.SetString(&h.KCS))
		case "last_index":
			err = caddyarg.Parse(d, caddyarg.SetInt(&h.LastIndex))
		case "distributed":
			h.Distributed = new(HeartbeatDistributed)
			err = h.Distributed.unmarshalCaddyfile(d)
		case "cluster":
			h.Cluster = new(HeartbeatCluster)
			err = h.Cluster.unmarshalCaddyfile(d)
		default:
			return d.Errf("heartbeat_limit: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (h *HeartbeatLimit) unmarshalKey(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	if args[0] == "xml_body" {
		if len(args) != 2 {
			return d.Err("heartbeat_limit: key xml_body takes one element name")
		}
		h.XMLBodyElement = args[1]
		return nil
	}
	h.Key = args
	return nil
}

func parseHeartbeatLimit(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(HeartbeatLimit)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// unmarshalCaddyfile reads the distributed block.
func (d *HeartbeatDistributed) unmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	if disp.NextArg() {
		return disp.ArgErr()
	}
	for nesting := disp.Nesting(); disp.NextBlock(nesting); {
		var err error
		switch disp.Val() {
		case "zone":
			err = caddyarg.Parse(disp, caddyarg.SetString(&d.Zone))
		case "interval":
			err = caddyarg.Parse(disp, caddyarg.SetDuration(&d.Interval))
		case "purge_age":
			err = caddyarg.Parse(disp, caddyarg.SetDuration(&d.PurgeAge))
		case "storage":
			err = d.unmarshalStorage(disp)
		default:
			return disp.Errf("heartbeat_limit: distributed: unknown subdirective %q", disp.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *HeartbeatDistributed) unmarshalStorage(disp *caddyfile.Dispenser) error {
	if !disp.NextArg() {
		return disp.ArgErr()
	}
	name := disp.Val()
	mod, err := caddyfile.UnmarshalModule(disp, "caddy.storage."+name)
	if err != nil {
		return err
	}
	conv, ok := mod.(caddy.StorageConverter)
	if !ok {
		return disp.Errf("heartbeat_limit: distributed: storage module %q is not a storage", name)
	}
	d.StorageRaw = caddyconfig.JSONModuleObject(conv, "module", name, nil)
	return nil
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*HeartbeatLimit)(nil)

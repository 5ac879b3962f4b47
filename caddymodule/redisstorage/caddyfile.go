package redisstorage

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

// options are the subdirectives, for "did you mean" hints.
var options = []string{
	"address", "host", "port", "username", "password", "db", "timeout", "key_prefix",
	"client_name", "tls", "tls_enabled", "tls_insecure", "tls_server_certs_pem", "tls_server_certs_path", "lock_ttl",
}

// unsupported are the community module's options this storage does not
// have: refused rather than ignored, since an operator relying on one
// (encryption at rest, a cluster) must know it is not there.
var unsupported = map[string]string{
	"encryption_key":    "values are not encrypted (protect Redis with ACLs and TLS)",
	"aes_key":           "values are not encrypted (protect Redis with ACLs and TLS)",
	"compression":       "values are not compressed",
	"master_name":       "Sentinel is not supported",
	"sentinel_password": "Sentinel is not supported",
	"route_by_latency":  "Redis Cluster is not supported",
	"route_randomly":    "Redis Cluster is not supported",
}

// UnmarshalCaddyfile reads the community module's syntax:
//
//	storage redis {
//	    address               <host:port>        # or host and port
//	    host                  <host>             # default 127.0.0.1
//	    port                  <port>             # default 6379
//	    username              <user>
//	    password              <password>
//	    db                    <n>                # default 0
//	    timeout               <seconds|duration> # default 5
//	    key_prefix            <prefix>           # default caddy
//	    client_name           <name>
//	    tls_enabled           [true|false]       # or: tls
//	    tls_insecure          [true|false]
//	    tls_server_certs_pem  <PEM certificates>
//	    tls_server_certs_path <file>
//	    lock_ttl              <duration>         # default 10s
//	}
//
// address, host and port also take their value as a block of one line,
// as the community module allows. Its cluster and failover modes,
// encryption and compression are refused with the reason, unless given
// their defaults ("" or false).
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.Errf("storage redis %s: only one Redis server is supported (no cluster or failover mode)", d.Val())
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if why, ok := unsupported[opt]; ok {
			// The community module's defaults ("", false) ask for nothing
			// this storage lacks: a copied Caddyfile that spells them out
			// still loads.
			args := d.RemainingArgs()
			if len(args) == 1 && (args[0] == "" || args[0] == "false") {
				continue
			}
			return d.Errf("storage redis: %s is not supported by legacygate's caddy.storage.redis: %s", opt, why)
		}
		var err error
		switch opt {
		case "address":
			s.Address, err = values(d)
		case "host":
			s.Host, err = values(d)
		case "port":
			s.Port, err = values(d)
		case "username":
			s.Username, err = caddyarg.One(d)
		case "password":
			s.Password, err = caddyarg.One(d)
		case "db":
			s.DB, err = caddyarg.Int(d, 0)
		case "timeout":
			s.Timeout, err = caddyarg.One(d)
		case "key_prefix":
			s.Prefix, err = caddyarg.One(d)
		case "client_name":
			s.ClientName, err = caddyarg.One(d)
		case "tls", "tls_enabled":
			s.TLSEnabled, err = flag(d)
		case "tls_insecure":
			s.TLSInsecure, err = flag(d)
		case "tls_server_certs_pem":
			s.TLSServerCertsPEM, err = caddyarg.One(d)
		case "tls_server_certs_path":
			s.TLSServerCertsPath, err = caddyarg.One(d)
		case "lock_ttl":
			err = caddyarg.Duration(d, &s.LockTTL)
		default:
			if near := caddyarg.Nearest(opt, options); near != "" {
				return d.Errf("storage redis: unknown option %q (did you mean %q?)", opt, near)
			}
			return d.Errf("storage redis: unknown option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// values reads the arguments on the line, or a block of them.
func values(d *caddyfile.Dispenser) ([]string, error) {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			args = append(args, d.Val())
			args = append(args, d.RemainingArgs()...)
		}
	}
	if len(args) == 0 {
		return nil, d.Errf("storage redis: %s: a value is needed", opt)
	}
	return args, nil
}

// flag reads an optional boolean: absent means true.
func flag(d *caddyfile.Dispenser) (bool, error) {
	opt := d.Val()
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
		return true, nil
	case 1:
		v, err := strconv.ParseBool(args[0])
		if err != nil {
			return false, d.Errf("storage redis: %s: %q is not true or false", opt, args[0])
		}
		return v, nil
	}
	return false, d.Errf("storage redis: %s: one value (true or false) at most", opt)
}

var _ caddyfile.Unmarshaler = (*Storage)(nil)

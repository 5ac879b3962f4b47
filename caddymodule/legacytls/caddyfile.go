package legacytls

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
)

// ownSubdirectives are legacy_tls's own; httpSubdirectives those of Caddy
// v2.11.9's http transport it hands on (less the deprecated ones). Together they are what an unknown
// subdirective's "did you mean" is chosen from; the http transport's parser
// still decides what it accepts.
var (
	ownSubdirectives  = []string{"pin", "min_version", "max_version", "cipher_suites", "max_conns", "max_conn_wait"}
	httpSubdirectives = []string{
		"read_buffer", "write_buffer", "read_timeout", "write_timeout", "max_response_header",
		"proxy_protocol", "network_proxy", "dial_timeout", "dial_fallback_delay",
		"response_header_timeout", "expect_continue_timeout", "resolvers", "tls", "tls_client_auth",
		"tls_insecure_skip_verify", "tls_curves", "tls_timeout", "tls_server_name",
		"tls_renegotiation", "tls_except_ports", "keepalive", "keepalive_interval", "keepalive_idle_conns",
		"keepalive_idle_conns_per_host", "versions", "compression", "max_conns_per_host", "tls_trust_pool",
		"local_address",
	}
)

// UnmarshalCaddyfile sets up the transport from Caddyfile tokens. Syntax:
//
//	transport legacy_tls {
//	    pin sha256/<base64> [sha256/<base64>…]
//	    min_version tls1.0|tls1.1|tls1.2|tls1.3
//	    max_version tls1.0|tls1.1|tls1.2|tls1.3
//	    cipher_suites <Go suite names…>
//	    max_conns <n>
//	    max_conn_wait <duration>
//	    <any subdirective of the http transport>
//	}
//
// `pin` may be repeated. Every other subdirective (dial_timeout, keepalive,
// tls_server_name, tls_trust_pool, read_buffer, …) is handed to the http
// transport's parser. Every error names legacy_tls, since reverse_proxy
// reports it as its own; an unknown subdirective gets the nearest known one.
func (l *LegacyTLS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := l.unmarshal(d); err != nil {
		return fmt.Errorf("legacy_tls: %w", err)
	}
	return nil
}

func (l *LegacyTLS) unmarshal(d *caddyfile.Dispenser) error {
	d.Next() // the transport name
	name := d.Token()
	for d.NextBlock(0) {
		switch d.Val() {
		case "pin":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, p := range args {
				if _, err := ParsePin(p); err != nil {
					return d.Errf("pin: %v", err)
				}
			}
			l.Pins = append(l.Pins, args...)
		case "min_version", "max_version":
			if err := l.unmarshalVersion(d); err != nil {
				return err
			}
		case "cipher_suites":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			l.CipherSuites = append(l.CipherSuites, args...)
		case "max_conns":
			if err := l.unmarshalMaxConns(d); err != nil {
				return err
			}
		case "max_conn_wait":
			if err := l.unmarshalMaxConnWait(d); err != nil {
				return err
			}
		default:
			field := d.Val()
			if err := l.unmarshalHTTPOption(name, d.NextSegment()); err != nil {
				// The http transport's parser is the judge of what it knows;
				// its "unrecognized" error gets a suggestion.
				if strings.Contains(err.Error(), "unrecognized subdirective") {
					return d.Errf("unknown subdirective %q (did you mean %q?)", field,
						caddyarg.Nearest(field, slices.Concat(ownSubdirectives, httpSubdirectives)))
				}
				return err
			}
		}
	}
	if l.TLS == nil {
		// Tells reverse_proxy the upstream speaks TLS whatever its address says.
		l.TLS = new(reverseproxy.TLSConfig)
	}
	return nil
}

func (l *LegacyTLS) unmarshalVersion(d *caddyfile.Dispenser) error {
	field := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	v := d.Val()
	if _, ok := tlsVersions[v]; !ok {
		return d.Errf("%s: unknown TLS version %q, want tls1.0, tls1.1, tls1.2 or tls1.3", field, v)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if field == "min_version" {
		l.MinVersion = v
	} else {
		l.MaxVersion = v
	}
	return nil
}

func (l *LegacyTLS) unmarshalMaxConns(d *caddyfile.Dispenser) error {
	var v string
	if !d.Args(&v) || d.NextArg() {
		return d.ArgErr()
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return d.Errf("max_conns: %q is not a whole number of at least 1", v)
	}
	l.MaxConns = n
	return nil
}

func (l *LegacyTLS) unmarshalMaxConnWait(d *caddyfile.Dispenser) error {
	var v string
	if !d.Args(&v) || d.NextArg() {
		return d.ArgErr()
	}
	wait, err := caddy.ParseDuration(v)
	if err != nil || wait <= 0 {
		return d.Errf("max_conn_wait: %q is not a positive duration (e.g. 5s)", v)
	}
	l.MaxConnWait = caddy.Duration(wait)
	return nil
}

// unmarshalHTTPOption feeds one subdirective, wrapped in its own
// `legacy_tls { … }` block, to the http transport's Caddyfile parser.
func (l *LegacyTLS) unmarshalHTTPOption(name caddyfile.Token, seg caddyfile.Segment) error {
	open := name
	open.Text = "{"
	closing := seg[len(seg)-1]
	closing.Line++
	closing.Text = "}"
	tokens := slices.Concat([]caddyfile.Token{name, open}, seg, []caddyfile.Token{closing})
	return l.HTTPTransport.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*LegacyTLS)(nil)

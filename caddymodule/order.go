package caddymodule

import "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

// Directive order, registered here so a Caddyfile needs no `order` lines.
// Caddy only lets plugins anchor on standard directives, so each directive
// gets its own anchor, chosen so that a request meets them in this order:
//
//	plaintext_bridge → heartbeat_limit → xml_guard → (encode …) → policy_guard → handle/route → reverse_proxy
//
// policy_guard sits after encode so that it sees the manager's identity bytes,
// and before handle so that a top-level policy_guard wraps handle blocks too.
func init() {
	httpcaddyfile.RegisterDirectiveOrder("plaintext_bridge", httpcaddyfile.Before, "redir")
	httpcaddyfile.RegisterDirectiveOrder("policy_guard", httpcaddyfile.Before, "invoke")
}

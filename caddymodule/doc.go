// Package caddymodule holds legacygate's Caddy glue, one package per
// module: managerrequest, heartbeatlimit, legacytls, packageguard,
// policyguard (the handler; the pure library is the top-level
// policyguard), contentcache, rotation (the legacygate app,
// plaintext_bridge, the admin API and its command), dashboard, xmlguard,
// redisstorage (caddy.storage.redis), handover (the listener wrapper) and
// initcmd (`legacygate init`). Package standard registers them all; internal holds what
// several of them share. The pure packages policyguard, rewrite and
// internal/… do the real work.
//
// Directive order: each module registers its own, so a Caddyfile needs no
// `order` lines. Caddy only lets plugins anchor on standard directives, so
// each directive gets its own anchor, chosen so that a request meets them
// in this order:
//
//	manager_request → plaintext_bridge → heartbeat_limit → xml_guard → (encode …) → content_cache → package_guard/policy_guard → handle/route → reverse_proxy
//
// legacygate_dashboard sits after basic_auth and forward_auth, so a page put
// behind them is never served before they decide.
//
// policy_guard sits after encode so that it sees the manager's identity bytes,
// and before handle so that a top-level policy_guard wraps handle blocks too.
// content_cache comes before the guards so that its fetches pass through
// them and only what they let through is cached.
package caddymodule

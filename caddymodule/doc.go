// Package caddymodule holds all of legacygate's Caddy glue: module
// registration, Caddyfile parsing, the HTTP handlers, the legacy_tls upstream
// transport, the legacygate app, its admin API, metrics and the CLI
// subcommands. The pure packages policyguard and rewrite do the real work.
package caddymodule

package initcmd

import (
	"bytes"
	"fmt"
	"strings"
	"text/template"
)

// config is everything the written Caddyfile says, every value concrete.
type config struct {
	Flavor    string
	Written   string // RFC 3339 time of the init run
	Manager   string // host:port
	Probe     []string
	SiteHost  string
	SitePort  int
	AdminAddr string

	Pin          string
	ServerName   string // SNI; empty for an IP address
	MinVersion   string // legacy_tls min_version
	MaxVersion   string // legacy_tls max_version; empty: the default
	CipherSuites []string
	AllowSHA1    bool
	AllowSHA1Why string
	IgnoreExpiry bool

	ManagerCert string // file: the manager's signing certificate(s)
	GatewayKey  string // files: the gateway's signing pair
	GatewayCert string
	ErrorLog    string // file: the error-level log

	// Day-0 (with --manager-key): the manager's pair is current, the
	// gateway's next, and a window moves clients from one to the other.
	DayZero     bool
	ManagerKey  string
	WindowStart string
	WindowEnd   string
}

// renderCaddyfile writes the configuration of cfg.Flavor.
func renderCaddyfile(cfg *config) ([]byte, error) {
	t, ok := templates[cfg.Flavor]
	if !ok {
		return nil, fmt.Errorf("--flavor: unknown flavor %q, want sepm, checkpoint or policyserver", cfg.Flavor)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, cfg); err != nil {
		return nil, fmt.Errorf("writing the Caddyfile: %w", err)
	}
	return b.Bytes(), nil
}

var funcs = template.FuncMap{"join": strings.Join, "q": quote}

// quote makes s one Caddyfile token: a path with spaces (C:\Program Files\…)
// is written in double quotes.
func quote(s string) string {
	if !strings.ContainsAny(s, " \t\"{}#'`") {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

var templates = map[string]*template.Template{
	"sepm":         template.Must(template.New("sepm").Funcs(funcs).Parse(header + globals + sepmBody)),
	"checkpoint":   template.Must(template.New("checkpoint").Funcs(funcs).Parse(header + globals + checkpointBody)),
	"policyserver": template.Must(template.New("policyserver").Funcs(funcs).Parse(header + globals + policyServerBody)),
}

const header = `# legacygate in front of the {{.Flavor}} manager at {{.Manager}}.
# Written by ` + "`legacygate init`" + ` at {{.Written}}; every value below is
# concrete and the file starts as written:
#   legacygate run --config Caddyfile
# A few values can be overridden from the environment without editing the
# file ({$NAME:value} is NAME when set, else value): LEGACYGATE_BIND (the
# addresses to listen on), LEGACYGATE_SITE_HOST and LEGACYGATE_HTTPS_PORT
# (the name and port clients reach), LEGACYGATE_ADMIN (the admin endpoint
# ` + "`legacygate rotation status`" + ` and ` + "`legacygate reload`" + ` talk to),
# LEGACYGATE_ALLOW_SHA1 (on/off), LEGACYGATE_HEARTBEAT_RATE, _BURST and
# _GLOBAL_RATE (heartbeat_limit), LEGACYGATE_ERROR_LOG (the error log file),
# LEGACYGATE_WINDOW_START and _END (the day-0 window).
#
# What the probe of the manager found:
{{- range .Probe}}
#   {{.}}
{{- end}}
`

const globals = `
# Global options: they apply to every site below.
{
	# The admin endpoint, on loopback only.
	admin {$LEGACYGATE_ADMIN:{{.AdminAddr}}}
	# Listen on these addresses only (all when LEGACYGATE_BIND is empty).
	default_bind {$LEGACYGATE_BIND}
	# No port-80 listener: clients come to the HTTPS site below.
	auto_https disable_redirects
	# Never install Caddy's root certificate into this machine's trust store.
	skip_install_trust
	# reverse_proxy's own logger is off: it costs about 10% of a
	# heartbeat's CPU; legacy_tls logs every failure towards the manager
	# (docs/modules/legacy_tls.md#logging).
	log default {
		exclude http.handlers.reverse_proxy
	}
	# Errors (refused signatures, an unreachable manager, pin mismatches)
	# also go to a file of their own.
	log errors {
		output file {$LEGACYGATE_ERROR_LOG:{{q .ErrorLog}}}
		format json
		level ERROR
		exclude http.handlers.reverse_proxy
	}
	# HTTP/1.1 and HTTP/2 only (no agent speaks HTTP/3); bounded headers
	# and time limits, so stalled clients cannot hold connections open.
	servers {
		protocols h1 h2
		max_header_size 16KB
		timeouts {
			read_header 10s
			read_body 60s
			write 120s
			idle 2m
		}
	}
{{- if .DayZero}}
	# Day 0: clients trust the manager's certificate today, so the
	# manager's own key stays current (clients accept what the gateway
	# signs with it), and the window moves each client to the gateway's
	# key; a client switches only after it has the new certificate and
	# sent 3 more heartbeats.
	legacygate {
		signing_key current {{q .ManagerKey}} {{q .ManagerCert}}
		signing_key next {{q .GatewayKey}} {{q .GatewayCert}}
		# What names a client (its host id).
		client_id {query.hostid}
		rotation {
			# Open from init's run for 30 days; watch ` + "`legacygate rotation status`" + `.
			window {$LEGACYGATE_WINDOW_START:{{.WindowStart}}} {$LEGACYGATE_WINDOW_END:{{.WindowEnd}}}
			confirm_heartbeats 3
			# Clients that never confirmed keep the manager's key this long after the window.
			grace 90d
		}
	}
{{- end}}
}
`

const transport = `			transport legacy_tls {
				# The manager's key, as the probe saw it (` + "`legacygate pin {{.Manager}}`" + ` prints it).
				pin {{.Pin}}
				# The oldest TLS the manager needs; nothing older is offered.
				min_version {{.MinVersion}}
{{- if .MaxVersion}}
				# The manager's TLS 1.2 signs its handshake with SHA-1, which Go refuses.
				max_version {{.MaxVersion}}
{{- end}}
{{- if .CipherSuites}}
				# The manager accepts none of Go's default suites: these are the ones it takes.
				cipher_suites {{join .CipherSuites " "}}
{{- end}}
{{- if .ServerName}}
				tls_server_name {{.ServerName}}
{{- end}}
				dial_timeout 5s
				response_header_timeout 60s
			}
`

const sepmBody = `
# The client protocol: the only paths and methods that reach the manager.
(client_protocol) {
	manager_request {
		allow GET POST /secars/secars.dll
		allow POST /secreg/secreg.dll
		allow GET /content/*
		decision_keys action hostid
	}
}

# The HTTPS site clients connect to (TLS 1.2+ only). Its certificate comes
# from Caddy's internal CA (SEP clients do not verify the chain unless
# HttpsVerifyCA is set); put your own with ` + "`tls <cert> <key>`" + `.
{$LEGACYGATE_SITE_HOST:{{.SiteHost}}}:{$LEGACYGATE_HTTPS_PORT:{{.SitePort}}} {
	tls internal {
		protocols tls1.2 tls1.3
	}
	import client_protocol
	header {
		-Server
		-X-Powered-By
	}
	handle_errors {
		header -Server
		respond "{err.status_code} {err.status_text}" {err.status_code}
	}
	@length_unknown {
		method POST
		not header Content-Length *
	}
	handle @length_unknown {
		respond 411
	}

	# Definitions downloads: streamed from the manager as they arrive, not
	# buffered (policy_guard does not see them; clients check their hashes).
	handle /content/* {
		reverse_proxy {{.Manager}} {
			header_up -Via
			flush_interval -1
{{template "transport" .}}		}
	}

	handle {
		request_body {
			max_size 1MB
		}
		@heartbeat {
			path /secars/secars.dll
			query action=index
		}
		heartbeat_limit @heartbeat {
			key {query.hostid} {client_ip}
			# One heartbeat a minute per client on average, up to 3 back to back.
			rate {$LEGACYGATE_HEARTBEAT_RATE:1/60s}
			burst {$LEGACYGATE_HEARTBEAT_BURST:3}
			# At most this many heartbeats a second reach the manager in total.
			global_rate {$LEGACYGATE_HEARTBEAT_GLOBAL_RATE:200/1s}
			max_wait 2s
			status 503
			jitter 0.5
		}
		# Policies and settings must carry the manager's valid signature;
		# nothing unverified is forwarded.
		policy_guard /secars/secars.dll {
			# The manager's signing certificate (the same key as its TLS certificate on SEPM).
			upstream_cert {{q .ManagerCert}}
{{- if not .DayZero}}
			# The gateway's signing key; clients must trust its certificate
			# ({{q .GatewayCert}}). A fleet that trusts the manager's certificate
			# needs the day-0 configuration instead: ` + "`legacygate init --manager-key`" + `.
			signing_key {{q .GatewayKey}} {{q .GatewayCert}}
{{- end}}
			roots Profile ServerSettings
			allow_non_xml text/plain
			# {{.AllowSHA1Why}}
			allow_sha1 {$LEGACYGATE_ALLOW_SHA1:{{if .AllowSHA1}}on{{else}}off{{end}}}
{{- if .IgnoreExpiry}}
			# The manager's certificate has expired; its key is still pinned.
			ignore_expiry
{{- end}}
			# Settings documents name only this gateway, on HTTPS.
			rewrite {
				roots ServerSettings
				addresses {$LEGACYGATE_SITE_HOST:{{.SiteHost}}}
				https_port {$LEGACYGATE_HTTPS_PORT:{{.SitePort}}}
				drop_http_only
			}
		}
		reverse_proxy {{.Manager}} {
			request_buffers 1MB
			header_up -Via
{{template "transport" .}}		}
	}
}
{{define "transport"}}` + transport + `{{end}}`

const checkpointBody = `
(endpoint_protocol) {
	manager_request {
		allow POST /epm/heartbeat
		allow GET /epm/policy/*
		allow GET /epm/packages/*
	}
}

# The HTTPS site endpoints connect to (TLS 1.2+ only), with a certificate
# from Caddy's internal CA; put your own with ` + "`tls <cert> <key>`" + `.
{$LEGACYGATE_SITE_HOST:{{.SiteHost}}}:{$LEGACYGATE_HTTPS_PORT:{{.SitePort}}} {
	tls internal {
		protocols tls1.2 tls1.3
	}
	import endpoint_protocol
	header -Server
	handle {
		heartbeat_limit /epm/heartbeat {
			key {header.X-Endpoint-Id}
			rate 1/30s
			burst 3
			global_rate 500/1s
			max_wait 2s
			status 503
			jitter 0.5
		}
		# Packages must carry the manager's valid signature.
		package_guard /epm/packages/* {
			upstream_cert {{q .ManagerCert}}
			allow_sha1
			ignore_expiry
			max_size 256MiB
		}
		reverse_proxy {{.Manager}} {
			header_up -Via
{{template "transport" .}}			header_down -Server
			header_down -X-Powered-By
		}
	}
}
{{define "transport"}}` + transport + `{{end}}`

const policyServerBody = `
(agent_protocol) {
	manager_request {
		allow POST /MAWebService2/MAWebService2.asmx
		fixed_error_body off
	}
}

# The HTTPS site agents connect to (TLS 1.2+ only), with a certificate
# from Caddy's internal CA; put your own with ` + "`tls <cert> <key>`" + `.
{$LEGACYGATE_SITE_HOST:{{.SiteHost}}}:{$LEGACYGATE_HTTPS_PORT:{{.SitePort}}} {
	tls internal {
		protocols tls1.2 tls1.3
	}
	import agent_protocol
	header -Server
	handle {
		xml_guard {
			max_size 1MiB
			max_depth 64
			max_elements 10000
			roots Envelope
		}
		heartbeat_limit {
			key xml_body DeviceID
			rate 1/30s
			burst 5
			global_rate 200/1s
			max_wait 2s
			status 503
		}
		reverse_proxy {{.Manager}} {
			header_up -Via
			lb_retries 0
{{template "transport" .}}			header_down -Server
			header_down -X-Powered-By
			header_down -X-AspNet-Version
		}
	}
}
{{define "transport"}}` + transport + `{{end}}`

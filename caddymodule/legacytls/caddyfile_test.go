package legacytls

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestLegacyTLSUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  map[string]any // top-level JSON fields that must have these values
	}{
		{
			name:  "pins, versions and suites",
			input: "legacy_tls {\n pin " + testPin + "\n pin sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n min_version tls1.0\n max_version tls1.2\n cipher_suites TLS_RSA_WITH_AES_128_CBC_SHA TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\n}",
			want: map[string]any{
				"pins":          []any{testPin, "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
				"min_version":   "tls1.0",
				"max_version":   "tls1.2",
				"cipher_suites": []any{"TLS_RSA_WITH_AES_128_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"},
				"tls":           map[string]any{},
			},
		},
		{
			name:  "http transport options are delegated",
			input: "legacy_tls {\n pin " + testPin + "\n dial_timeout 2s\n response_header_timeout 5s\n tls_server_name manager.example\n keepalive off\n read_buffer 8KiB\n}",
			want: map[string]any{
				"pins":                    []any{testPin},
				"dial_timeout":            float64(2 * time.Second),
				"response_header_timeout": float64(5 * time.Second),
				"tls":                     map[string]any{"server_name": "manager.example"},
				"keep_alive":              map[string]any{"enabled": false},
				"read_buffer_size":        float64(8192),
			},
		},
		{
			name:  "pool size and wait, with keepalive options beside them",
			input: "legacy_tls {\n pin " + testPin + "\n max_conns 16\n max_conn_wait 1500ms\n keepalive_idle_conns_per_host 8\n keepalive 4s\n}",
			want: map[string]any{
				"max_conns":     float64(16),
				"max_conn_wait": float64(1500 * time.Millisecond),
				"keep_alive":    map[string]any{"max_idle_conns_per_host": float64(8), "idle_timeout": float64(4 * time.Second)},
			},
		},
		{
			name:  "nested block of an http option",
			input: "legacy_tls {\n tls_trust_pool file {\n  pem_file /etc/manager-ca.pem\n }\n}",
			want: map[string]any{
				"tls": map[string]any{"ca": map[string]any{"provider": "file", "pem_files": []any{"/etc/manager-ca.pem"}}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var l LegacyTLS
			if err := l.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatalf("UnmarshalCaddyfile: %v", err)
			}
			raw, err := json.Marshal(&l)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				gotJSON, _ := json.Marshal(got[k])
				wantJSON, _ := json.Marshal(v)
				if string(gotJSON) != string(wantJSON) {
					t.Errorf("%s = %s, want %s (all: %s)", k, gotJSON, wantJSON, raw)
				}
			}
		})
	}
}

func TestLegacyTLSUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"pin without argument", "legacy_tls {\n pin\n}", "pin"},
		{"bad pin", "legacy_tls {\n pin sha1/abc\n}", "pin"},
		{"unknown version", "legacy_tls {\n min_version sslv3\n}", "min_version"},
		{"two versions", "legacy_tls {\n max_version tls1.2 tls1.3\n}", "argument"},
		{"no suites", "legacy_tls {\n cipher_suites\n}", "argument"},
		{"unknown subdirective", "legacy_tls {\n frobnicate\n}", `legacy_tls: unknown subdirective "frobnicate"`},
		{"misspelt pin", "legacy_tls {\n pinn sha256/AAAA\n}", `legacy_tls: unknown subdirective "pinn" (did you mean "pin"?), at Testfile:2`},
		{"misspelt own subdirective", "legacy_tls {\n max_conn_wiat 5s\n}", `(did you mean "max_conn_wait"?)`},
		{"misspelt http transport subdirective", "legacy_tls {\n dial_timout 5s\n}", `legacy_tls: unknown subdirective "dial_timout" (did you mean "dial_timeout"?)`},
		{"upper-case pin", "legacy_tls {\n PIN sha256/AAAA\n}", `(did you mean "pin"?)`},
		{"http transport error names legacy_tls", "legacy_tls {\n dial_timeout soon\n}", "legacy_tls: "},
		{"own error names legacy_tls", "legacy_tls {\n max_conns 0\n}", "legacy_tls: max_conns"},
		{"max_conns without argument", "legacy_tls {\n max_conns\n}", "argument"},
		{"max_conns zero", "legacy_tls {\n max_conns 0\n}", "max_conns"},
		{"max_conns negative", "legacy_tls {\n max_conns -3\n}", "max_conns"},
		{"max_conns not a number", "legacy_tls {\n max_conns many\n}", "max_conns"},
		{"max_conns twice on a line", "legacy_tls {\n max_conns 8 16\n}", "argument"},
		{"max_conn_wait without argument", "legacy_tls {\n max_conn_wait\n}", "argument"},
		{"max_conn_wait not a duration", "legacy_tls {\n max_conn_wait soon\n}", "max_conn_wait"},
		{"max_conn_wait zero", "legacy_tls {\n max_conn_wait 0s\n}", "max_conn_wait"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var l LegacyTLS
			err := l.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestLegacyTLSSuggestsOnlySubdirectivesTheHTTPTransportKnows(t *testing.T) {
	for _, field := range httpSubdirectives {
		var l LegacyTLS
		err := l.UnmarshalCaddyfile(caddyfile.NewTestDispenser("legacy_tls {\n " + field + "\n}"))
		if err != nil && strings.Contains(err.Error(), "unknown subdirective") {
			t.Errorf("%s: %v; the http transport does not know it, so it must not be suggested", field, err)
		}
	}
}

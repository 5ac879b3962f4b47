package caddymodule

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/legacygate/legacygate/integration/certs"
)

const testPin = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="

func provisionLegacyTLS(t *testing.T, l *LegacyTLS) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(func() { cancel(); _ = l.Cleanup() })
	return l.Provision(ctx)
}

func TestLegacyTLSProvisionErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		l    LegacyTLS
		want string
	}{
		{"pin without sha256 prefix", LegacyTLS{Pins: []string{"md5/abc"}}, "pins[0]"},
		{"pin with bad base64", LegacyTLS{Pins: []string{testPin, "sha256/!!!"}}, "pins[1]"},
		{"pin of wrong length", LegacyTLS{Pins: []string{"sha256/AAAA"}}, "pins[0]"},
		{"unknown min_version", LegacyTLS{Pins: []string{testPin}, MinVersion: "ssl3"}, "min_version"},
		{"unknown max_version", LegacyTLS{Pins: []string{testPin}, MaxVersion: "tls1.4"}, "max_version"},
		{"min above max", LegacyTLS{Pins: []string{testPin}, MinVersion: "tls1.2", MaxVersion: "tls1.0"}, "min_version TLS 1.2 is above max_version TLS 1.0"},
		{"max below the default min", LegacyTLS{Pins: []string{testPin}, MaxVersion: "tls1.1"}, "min_version TLS 1.2 is above max_version TLS 1.1"},
		{"no pin and no trust pool", LegacyTLS{}, "no pin and no trust pool"},
		{"insecure skip verify", LegacyTLS{Pins: []string{testPin}, HTTPTransport: reverseproxy.HTTPTransport{TLS: &reverseproxy.TLSConfig{InsecureSkipVerify: true}}}, "tls_insecure_skip_verify"},
		{"except ports", LegacyTLS{Pins: []string{testPin}, HTTPTransport: reverseproxy.HTTPTransport{TLS: &reverseproxy.TLSConfig{ExceptPorts: []string{"8014"}}}}, "tls_except_ports"},
		{"unknown cipher suite", LegacyTLS{Pins: []string{testPin}, CipherSuites: []string{"TLS_RSA_WITH_IDEA_CBC_SHA"}}, "cipher_suites"},
		{"TLS 1.3 cipher suite", LegacyTLS{Pins: []string{testPin}, CipherSuites: []string{"TLS_AES_128_GCM_SHA256"}}, "cipher_suites"},
		{"HTTP/3", LegacyTLS{Pins: []string{testPin}, HTTPTransport: reverseproxy.HTTPTransport{Versions: []string{"3"}}}, "versions"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := provisionLegacyTLS(t, &tc.l)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Provision error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestLegacyTLSProvisionAcceptsPinOrTrustPool(t *testing.T) {
	tests := []struct {
		name string
		l    LegacyTLS
	}{
		{"pin", LegacyTLS{Pins: []string{testPin}}},
		{"pin with TLS 1.0 and RSA key exchange", LegacyTLS{Pins: []string{testPin}, MinVersion: "tls1.0", MaxVersion: "tls1.2", CipherSuites: []string{"TLS_RSA_WITH_AES_128_CBC_SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA"}}},
		{"trust pool", LegacyTLS{HTTPTransport: reverseproxy.HTTPTransport{TLS: &reverseproxy.TLSConfig{RootCAPEMFiles: []string{writeTestCAFile(t)}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := provisionLegacyTLS(t, &tc.l); err != nil {
				t.Fatalf("Provision: %v", err)
			}
			if tc.l.Transport == nil || tc.l.Transport.TLSClientConfig == nil {
				t.Fatal("no TLS client config after Provision")
			}
		})
	}
}

func writeTestCAFile(t *testing.T) string {
	t.Helper()
	pair, err := certs.New(certs.Modern, "manager.test", 1024)
	if err != nil {
		t.Fatal(err)
	}
	file, _, err := pair.WriteFiles(t.TempDir(), "ca")
	if err != nil {
		t.Fatal(err)
	}
	return file
}

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
		{"unknown subdirective", "legacy_tls {\n frobnicate\n}", "frobnicate"},
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

func TestParsePinRoundTrip(t *testing.T) {
	pair, err := certs.New(certs.SHA1, "manager.test", 1024)
	if err != nil {
		t.Fatal(err)
	}
	pin := PinOf(pair.Cert)
	if pin != pair.Pin() {
		t.Fatalf("PinOf = %s, certs.Pin = %s", pin, pair.Pin())
	}
	sum, err := ParsePin(pin)
	if err != nil {
		t.Fatal(err)
	}
	if FormatPin(sum) != pin {
		t.Fatalf("FormatPin(ParsePin(%s)) = %s", pin, FormatPin(sum))
	}
}

// legacyTLSTestServer is a TLS 1.0-only server with a SHA-1-signed certificate.
func legacyTLSTestServer(t *testing.T) (addr string, pair *certs.Pair) {
	t.Helper()
	pair, err := certs.New(certs.SHA1, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()},
		MinVersion:   tls.VersionTLS10,
		MaxVersion:   tls.VersionTLS10,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, tls.VersionName(r.TLS.Version))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), pair
}

func TestLegacyTLSRoundTripChecksPin(t *testing.T) {
	addr, pair := legacyTLSTestServer(t)
	tests := []struct {
		name    string
		pins    []string
		wantErr string
	}{
		{"matching pin among several", []string{testPin, pair.Pin()}, ""},
		{"wrong pin", []string{testPin}, "(CN=manager.test,O=legacygate emulated manager) matches none of the pins " + testPin},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := &LegacyTLS{Pins: tc.pins, MinVersion: "tls1.0"}
			if err := provisionLegacyTLS(t, l); err != nil {
				t.Fatal(err)
			}
			// No scheme, as reverse_proxy hands it over: the transport must pick TLS.
			req := (&http.Request{Method: http.MethodGet, URL: &url.URL{Host: addr, Path: "/"}, Header: http.Header{}}).WithContext(context.Background())
			req.Host = addr
			resp, err := l.RoundTrip(req)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("RoundTrip error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("RoundTrip: %v", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if string(body) != "TLS 1.0" {
				t.Fatalf("manager saw %q, want TLS 1.0", body)
			}
		})
	}
}

func TestLegacyTLSVerifyPinNeedsACertificate(t *testing.T) {
	l := &LegacyTLS{Pins: []string{testPin}}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	if err := l.verifyPin(tls.ConnectionState{}); err == nil {
		t.Fatal("verifyPin accepted a handshake without certificates")
	}
}

// BenchmarkLegacyTLSVsStockHTTPTransport compares legacy_tls (pin check)
// with Caddy's http transport (chain verification against the same
// certificate as a trusted root) on one TLS 1.2 upstream, with kept-alive
// connections and with a new handshake per request.
func BenchmarkLegacyTLSVsStockHTTPTransport(b *testing.B) {
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		b.Fatal(err)
	}
	certFile, _, err := pair.WriteFiles(b.TempDir(), "manager")
	if err != nil {
		b.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()}, MaxVersion: tls.VersionTLS12,
	})
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()

	for _, keepAlive := range []bool{true, false} {
		transports := map[string]http.RoundTripper{
			"stock_http": benchTransport(b, &reverseproxy.HTTPTransport{
				TLS: &reverseproxy.TLSConfig{
					CARaw:      json.RawMessage(fmt.Sprintf(`{"provider":"file","pem_files":[%q]}`, certFile)),
					ServerName: "localhost",
				},
				KeepAlive: &reverseproxy.KeepAlive{Enabled: &keepAlive},
			}),
			"legacy_tls": benchTransport(b, &LegacyTLS{
				Pins:          []string{pair.Pin()},
				HTTPTransport: reverseproxy.HTTPTransport{KeepAlive: &reverseproxy.KeepAlive{Enabled: &keepAlive}},
			}),
		}
		for _, name := range []string{"stock_http", "legacy_tls"} {
			b.Run(fmt.Sprintf("keepalive=%v/%s", keepAlive, name), func(b *testing.B) {
				rt := transports[name]
				for b.Loop() {
					req := &http.Request{Method: http.MethodGet, URL: &url.URL{Host: addr, Path: "/"}, Header: http.Header{}, Host: addr}
					resp, err := rt.RoundTrip(req.WithContext(context.Background()))
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
	}
}

func benchTransport(b *testing.B, rt interface {
	http.RoundTripper
	caddy.Provisioner
	caddy.CleanerUpper
}) http.RoundTripper {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(func() { cancel(); _ = rt.Cleanup() })
	if err := rt.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	return rt
}

func FuzzParsePin(f *testing.F) {
	for _, seed := range []string{testPin, "sha256/", "sha256/AAAA", "md5/" + testPin[7:], "sha256/!!!", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sum, err := ParsePin(s)
		if err != nil {
			if !strings.Contains(err.Error(), "pin") {
				t.Fatalf("error %q does not say it is about the pin", err)
			}
			return
		}
		again, err := ParsePin(FormatPin(sum))
		if err != nil || again != sum {
			t.Fatalf("FormatPin(ParsePin(%q)) does not parse back: %v", s, err)
		}
	})
}

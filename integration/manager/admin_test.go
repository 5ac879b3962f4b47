package manager

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestIsLoopback(t *testing.T) {
	tests := []struct {
		remote string
		want   bool
	}{
		{"127.0.0.1:5000", true},
		{"127.8.9.10:5000", true},
		{"[::1]:5000", true},
		{"10.0.0.5:5000", false},
		{"192.168.1.10:443", false},
		{"[2001:db8::1]:5000", false},
		{"[::ffff:10.0.0.5]:5000", false},
		{"localhost:5000", false}, // RemoteAddr is always an IP; a name is not trusted
		{"127.0.0.1", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := isLoopback(tt.remote); got != tt.want {
			t.Errorf("isLoopback(%q) = %v, want %v", tt.remote, got, tt.want)
		}
	}
}

func TestAdminRefusesNonLoopbackClients(t *testing.T) {
	m := startManager(t, Config{})
	changed := false
	h := m.admin(func() error { changed = true; return nil })
	req := httptest.NewRequest(http.MethodPost, "/admin/regenerate", nil)
	req.RemoteAddr = "10.0.0.5:40000"
	rec := httptest.NewRecorder()
	h(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("status %d, want 403", rec.Code)
	}
	if changed {
		t.Error("the key change ran for a non-loopback client")
	}
}

func TestAdminEndpointsOnPlainListenerOnly(t *testing.T) {
	m := startManager(t, Config{NextDir: t.TempDir()})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	tests := []struct {
		name       string
		url        string
		method     string
		wantStatus int
		wantChange bool
	}{
		{"regenerate on HTTPS is not there", "https://" + m.Addrs().HTTPS + "/admin/regenerate", http.MethodPost, 404, false},
		{"import on HTTPS is not there", "https://" + m.Addrs().HTTPS + "/admin/import", http.MethodPost, 404, false},
		{"GET regenerate", "http://" + m.Addrs().HTTP + "/admin/regenerate", http.MethodGet, 405, false},
		{"regenerate", "http://" + m.Addrs().HTTP + "/admin/regenerate", http.MethodPost, 200, true},
		{"import", "http://" + m.Addrs().HTTP + "/admin/import", http.MethodPost, 200, true},
		{"import again", "http://" + m.Addrs().HTTP + "/admin/import", http.MethodPost, 409, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := m.Pin()
			r := do(t, c, tt.method, tt.url, nil, "")
			if r.status != tt.wantStatus {
				t.Fatalf("status %d, want %d (body %q)", r.status, tt.wantStatus, r.body)
			}
			if changed := m.Pin() != before; changed != tt.wantChange {
				t.Fatalf("pin changed: %v, want %v", changed, tt.wantChange)
			}
			if !tt.wantChange {
				return
			}
			var status map[string]string
			if err := json.Unmarshal(r.body, &status); err != nil {
				t.Fatalf("body %q: %v", r.body, err)
			}
			if status["pin"] != m.Pin() || status["sylink_serial"] == "" || status["profile_serial"] == "" {
				t.Errorf("status %v does not report the new pin %s and serials", status, m.Pin())
			}
		})
	}
	if got := m.Requests(CountAdmin); got != 4 {
		t.Errorf("admin requests counted %d, want 4 (the HTTPS ones are not admin requests)", got)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	tests := []struct {
		cfg   Config
		field string
	}{
		{Config{HTTPAddr: "127.0.0.1:0", Flavor: "mcafee"}, "Flavor"},
		{Config{}, "HTTPSAddr"},
		{Config{HTTPAddr: "127.0.0.1:0", TLSMin: tls.VersionTLS12, TLSMax: tls.VersionTLS10}, "TLSMin"},
		{Config{HTTPAddr: "127.0.0.1:0", TLSMax: 0x0305}, "TLSMax"},
		{Config{HTTPAddr: "127.0.0.1:0", TLSMin: tls.VersionSSL30}, "TLSMin"},
		{Config{HTTPAddr: "127.0.0.1:0", Cert: "ecdsa"}, "Cert"},
		{Config{HTTPAddr: "127.0.0.1:0", Sign: "rsa-md5"}, "Sign"},
		{Config{HTTPAddr: "127.0.0.1:0", ProfileSize: 100}, "ProfileSize"},
		{Config{HTTPAddr: "127.0.0.1:0", MaxLogBytes: -1}, "MaxLogBytes"},
		{Config{HTTPAddr: "127.0.0.1:0", MaxHosts: -1}, "MaxHosts"},
		{Config{HTTPAddr: "127.0.0.1:0", HeartbeatSeconds: -5}, "HeartbeatSeconds"},
	}
	for _, tt := range tests {
		_, err := New(tt.cfg)
		if err == nil || !strings.HasPrefix(err.Error(), tt.field) {
			t.Errorf("New(%+v) error %v, want one naming %s", tt.cfg, err, tt.field)
		}
	}
}

func TestStartFailsOnBusyPort(t *testing.T) {
	m := startManager(t, Config{})
	m2, err := New(Config{HTTPAddr: m.Addrs().HTTP, Initial: m.Pair()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Start(); err == nil || !strings.Contains(err.Error(), "HTTP listener") {
		m2.Close()
		t.Errorf("Start on a busy port: %v, want an HTTP listener error", err)
	}
}

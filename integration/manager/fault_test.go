package manager

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"
)

func TestFaults(t *testing.T) {
	m := startManager(t, Config{})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	c.Timeout = 300 * time.Millisecond
	// A fresh connection per request: Go's client retries an idempotent
	// request once when a reused connection dies, which would double counts.
	c.Transport.(*http.Transport).DisableKeepAlives = true
	base := "https://" + m.Addrs().HTTPS
	host := register(t, c, base)
	index := base + SecarsPath + "?action=index&hostid=" + host
	tests := []struct {
		name       string
		fault      Fault
		wantStatus int // 0: the request must fail
	}{
		{"slow manager", Fault{Delay: 2 * time.Second}, 0},
		{"overloaded manager", Fault{Status: http.StatusServiceUnavailable}, http.StatusServiceUnavailable},
		{"manager dies mid-request", Fault{Abort: true}, 0},
		{"healthy again", Fault{}, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m.SetFault(tt.fault)
			before := m.Requests(CountIndex)
			resp, err := c.Get(index)
			if tt.wantStatus == 0 {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("request succeeded with %d, want a failure", resp.StatusCode)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tt.wantStatus {
					t.Fatalf("status %d, want %d", resp.StatusCode, tt.wantStatus)
				}
			}
			wantCounted := int64(1)
			if tt.fault.Delay > 0 {
				wantCounted = 0 // the client gave up before the manager handled it
			}
			if got := m.Requests(CountIndex) - before; got != wantCounted {
				t.Errorf("index requests counted %d, want %d", got, wantCounted)
			}
		})
	}
	m.SetFault(Fault{Status: http.StatusInternalServerError})
	r := do(t, testClient(tls.VersionTLS12, tls.VersionTLS12), http.MethodPost, "http://"+m.Addrs().HTTP+"/admin/regenerate", nil, "")
	if r.status != http.StatusOK {
		t.Errorf("admin regenerate under a fault: status %d, want 200 (admin is never faulted)", r.status)
	}
}

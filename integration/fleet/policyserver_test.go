package fleet

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/manager"
)

func TestPolicyServerFleetAgainstEmulator(t *testing.T) {
	m := startEmulator(t, manager.Config{Flavor: "policyserver"})
	const n = 20
	s := emulatorSettings(t, m)
	s.Blocks[0].Servers[0].HTTPSPort = 0 // IIS serves the web service over plain HTTP
	cfg := fastConfig(t, s, n)
	cfg.Flavor = FlavorPolicyServer
	f := newFleet(t, cfg)
	got := runUntil(t, f, 30*time.Second, func(s Summary) bool { return s.Online == n && s.Heartbeats >= 3*n })
	checkPartition(t, got)
	if got.Online != n || got.Orphaned != 0 || got.ProfileUpdates < n {
		t.Fatalf("%+v, want all %d online with a policy", got, n)
	}
	if answered, replays := m.Requests(manager.CountPSAnswered), m.Requests(manager.CountPSReplay); answered < 3*n || replays != 0 {
		t.Fatalf("manager answered %d and refused %d replays; want every message fresh", answered, replays)
	}
}

// fakePolicyServer answers every request with status and body.
func fakePolicyServer(t *testing.T, status int, body string) *Settings {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return &Settings{Blocks: []PriorityBlock{{Name: "Priority1", Servers: []Server{{
		Address: "127.0.0.1", HTTPPort: portOf(t, srv.Listener.Addr()),
	}}}}}
}

func TestPolicyServerInvalidAnswersOrphan(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
	}{
		{"200 that is not SOAP", http.StatusOK, "<html>maintenance</html>"},
		{"SOAP fault", http.StatusOK, `<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultstring>x</faultstring></soap:Fault></soap:Body></soap:Envelope>`},
		{"502 from a proxy", http.StatusBadGateway, "bad gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const n, k = 10, 3
			cfg := fastConfig(t, fakePolicyServer(t, tt.status, tt.body), n)
			cfg.Flavor, cfg.OrphanAfter = FlavorPolicyServer, k
			f := newFleet(t, cfg)
			s := runUntil(t, f, 30*time.Second, func(s Summary) bool { return s.Orphaned == n })
			checkPartition(t, s)
			if s.Orphaned != n || s.Online != 0 {
				t.Fatalf("%+v, want all %d orphaned", s, n)
			}
		})
	}
}

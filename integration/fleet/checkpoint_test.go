package fleet

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

func TestCheckpointFleetAgainstEmulator(t *testing.T) {
	tests := []struct {
		name      string
		kind      certs.Kind
		sign      string
		serverMax uint16
		clientMax string
	}{
		{"modern certificate, SHA-256 CMS", certs.Modern, manager.SignRSASHA256, tls.VersionTLS12, TLS12},
		{"SHA-1 certificate, SHA-1 CMS, TLS 1.0 manager and clients", certs.SHA1, manager.SignRSASHA1, tls.VersionTLS10, TLS10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startEmulator(t, manager.Config{Flavor: "checkpoint", Initial: pairOfKind(t, tt.kind), Cert: tt.kind, Sign: tt.sign, TLSMax: tt.serverMax, ProfileSize: 8 << 10})
			const n, k = 20, 3
			cfg := fastConfig(t, emulatorSettings(t, m), n)
			cfg.Flavor, cfg.TLSMax, cfg.OrphanAfter = FlavorCheckpoint, tt.clientMax, k
			f := newFleet(t, cfg)
			run := startPhases(t, f)
			s := run.until(func(s Summary) bool { return s.Online == n && s.ProfileUpdates >= n && s.Heartbeats >= 3*n })
			if s.Online != n || s.Orphaned != 0 || s.ProfileUpdates < n || m.Requests(manager.CountCPSignature) < n {
				t.Fatalf("healthy manager: %+v, signatures fetched %d; want all %d online with a verified package", s, m.Requests(manager.CountCPSignature), n)
			}
			// A regenerated key signs packages the clients do not trust:
			// direct clients are orphaned, as docs/protocol.md says.
			if err := m.Regenerate(); err != nil {
				t.Fatal(err)
			}
			run.until(func(s Summary) bool { return s.Orphaned == n })
			s = run.stop()
			checkPartition(t, s)
			if s.Orphaned != n || s.SignatureFailures < k*n {
				t.Fatalf("after regenerate: %+v, want all %d orphaned by package signature failures", s, n)
			}
		})
	}
}

// fakeCheckpoint answers heartbeats and policies, and packages with status
// pkgStatus: the heartbeat answers while a download fails.
func fakeCheckpoint(t *testing.T, pkgStatus int) *Settings {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc(manager.CPHeartbeatPath, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(manager.CPHeartbeat{Interval: 60, PolicyVersion: "v1"})
	})
	mux.HandleFunc(manager.CPPolicyPrefix, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("blob")) })
	mux.HandleFunc(manager.CPPackagePrefix, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(pkgStatus) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	a, _, _ := testPairs(t)
	return &Settings{Blocks: []PriorityBlock{{Name: "Priority1", Servers: []Server{{
		Address: "127.0.0.1", HTTPPort: portOf(t, srv.Listener.Addr()), VerifySignatures: true, Cert: a.Cert,
	}}}}}
}

func TestCheckpointPackageDownloadFailureDegrades(t *testing.T) {
	tests := []struct {
		name   string
		status int
	}{
		{"gateway refuses the package (502)", http.StatusBadGateway},
		{"manager busy (503)", http.StatusServiceUnavailable},
		{"package missing (404)", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const n = 10
			cfg := fastConfig(t, fakeCheckpoint(t, tt.status), n)
			cfg.Flavor = FlavorCheckpoint
			f := newFleet(t, cfg)
			s := runUntil(t, f, 30*time.Second, func(s Summary) bool { return s.Heartbeats >= 5*n })
			checkPartition(t, s)
			if s.Degraded != n || s.Orphaned != 0 || s.EverOrphaned != 0 || s.ProfileUpdates != 0 {
				t.Fatalf("%+v, want all %d degraded, none orphaned, no package installed", s, n)
			}
		})
	}
}

func FuzzVerifyPackage(f *testing.F) {
	a, _, _ := testPairs(f)
	f.Add([]byte("package"), []byte{0x30, 0x80})
	f.Fuzz(func(t *testing.T, content, p7s []byte) {
		if verifyPackage(content, p7s, a.Cert) == nil {
			t.Fatal("a package verified with a signature the trusted key never made")
		}
	})
}

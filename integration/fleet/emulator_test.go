package fleet

import (
	"crypto/tls"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

// startEmulator starts the project's SEPM emulator on loopback, with its
// default 100 KiB profile: thousands of elements, as a real policy.
func startEmulator(t testing.TB, cfg manager.Config) *manager.Manager {
	t.Helper()
	cfg.HTTPSAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	m, err := manager.New(cfg)
	if err != nil {
		t.Fatalf("manager.New: %v", err)
	}
	if err := m.Start(); err != nil {
		t.Fatalf("manager.Start: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// emulatorSettings is the server list a client of m starts with: HTTPS
// and HTTP ports, trusting the manager's signing certificate.
func emulatorSettings(t testing.TB, m *manager.Manager) *Settings {
	t.Helper()
	a := m.Addrs()
	port := func(addr string) int {
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(p)
		return n
	}
	return &Settings{Blocks: []PriorityBlock{{Name: "Priority1", Servers: []Server{{
		Address: "127.0.0.1", HTTPSPort: port(a.HTTPS), HTTPPort: port(a.HTTP),
		VerifySignatures: true, Cert: m.SigningCert(),
	}}}}}
}

func pairOfKind(t testing.TB, kind certs.Kind) *certs.Pair {
	t.Helper()
	a, _, _ := testPairs(t)
	p, err := certs.NewWithKey(kind, "sepm.legacygate.test", a.Key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHealthyFleetAgainstEmulatorHasNoOrphans(t *testing.T) {
	tests := []struct {
		name      string
		kind      certs.Kind
		sign      string
		serverMax uint16
		clientMax string
	}{
		{"modern certificate, rsa-sha256", certs.Modern, manager.SignRSASHA256, tls.VersionTLS12, TLS12},
		{"SHA-1 certificate, rsa-sha1, TLS 1.0-only manager and clients", certs.SHA1, manager.SignRSASHA1, tls.VersionTLS10, TLS10},
		{"expired certificate still trusted, as SEPM clients do", certs.Expired, manager.SignRSASHA256, tls.VersionTLS12, TLS12},
		{"CN-only certificate", certs.CNOnly, manager.SignRSASHA256, tls.VersionTLS12, TLS12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startEmulator(t, manager.Config{Initial: pairOfKind(t, tt.kind), Cert: tt.kind, Sign: tt.sign, TLSMax: tt.serverMax})
			const n = 30
			cfg := fastConfig(t, emulatorSettings(t, m), n)
			cfg.TLSMax = tt.clientMax
			cfg.PlaintextShare = 0.2
			f := newFleet(t, cfg)
			s := runUntil(t, f, 30*time.Second, func(s Summary) bool { return s.Online == n && s.SyLinkUpdates >= n && s.Heartbeats >= 3*n })
			checkPartition(t, s)
			if s.Online != n || s.Orphaned != 0 || s.EverOrphaned != 0 || s.EverDegraded != 0 || s.SignatureFailures != 0 {
				t.Errorf("%+v: want all %d online, never orphaned or degraded", s, n)
			}
			if s.SyLinkUpdates < n || s.OnNewAnchor != 0 {
				t.Errorf("sylink_updates %d, on_new_anchor %d: want every client to adopt the manager's SyLink, same anchor", s.SyLinkUpdates, s.OnNewAnchor)
			}
			if got := m.Requests(manager.CountIndex); got < int64(s.Heartbeats)-int64(n) {
				t.Errorf("manager counted %d index requests for %d heartbeats", got, s.Heartbeats)
			}
		})
	}
}

// A manager that changes its key on its own orphans every client that
// talks to it directly: the fleet can fail, which is what makes its zeros
// through the gateway worth something.
func TestEmulatorKeyChangeOrphansDirectClients(t *testing.T) {
	tests := []struct {
		name   string
		change func(*manager.Manager) error
	}{
		{"regenerate", (*manager.Manager).Regenerate},
		{"import", (*manager.Manager).Import},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b, _ := testPairs(t)
			m := startEmulator(t, manager.Config{Initial: a, Next: b})
			const n, k = 30, 3
			cfg := fastConfig(t, emulatorSettings(t, m), n)
			cfg.OrphanAfter = k
			f := newFleet(t, cfg)
			run := startPhases(t, f)
			if s := run.until(func(s Summary) bool { return s.Online == n && s.SyLinkUpdates >= n }); s.Online != n {
				t.Fatalf("before the key change: %+v, want all online", s)
			}
			if err := tt.change(m); err != nil {
				t.Fatal(err)
			}
			run.until(func(s Summary) bool { return s.Orphaned == n })
			s := run.stop()
			checkPartition(t, s)
			if s.Orphaned != n || s.SignatureFailures < k*n || s.OnNewAnchor != 0 {
				t.Errorf("after %s: %+v, want all %d orphaned by signature failures, none on a new anchor", tt.name, s, n)
			}
		})
	}
}

package fleet

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/manager"
)

// realSettings is emulatorSettings with the KCS the real wire needs.
func realSettings(t testing.TB, m *manager.Manager) *Settings {
	t.Helper()
	s := emulatorSettings(t, m)
	s.KCS = m.KCS()
	return s
}

func TestRealWireFleetHeartbeatsDownloadsDefinitionsAndHasNoOrphans(t *testing.T) {
	m := startEmulator(t, manager.Config{Wire: manager.WireReal, ContentSize: 32 << 10, ProfileSize: 8 << 10})
	const n = 20
	cfg := fastConfig(t, realSettings(t, m), n)
	cfg.Wire, cfg.NAT = WireReal, 5
	cfg.PlaintextShare = 0.5
	f := newFleet(t, cfg)
	s := runUntil(t, f, 30*time.Second, func(s Summary) bool {
		return s.Online == n && s.ContentDownloads >= n && s.Heartbeats >= 3*n
	})
	checkPartition(t, s)
	if s.Orphaned != 0 || s.ContentBytes != s.ContentDownloads*(32<<10) || s.RequestsPerClientPerMinute <= 0 {
		t.Errorf("summary %+v", s)
	}
	if got := m.IndexedHosts(); got != n {
		t.Errorf("the manager saw %d hosts' index, want %d", got, n)
	}
	if m.Requests(manager.CountBad) != 0 {
		t.Errorf("the manager refused %d real-wire requests", m.Requests(manager.CountBad))
	}
}

// recorder is a plain-HTTP server that answers 503 to everything and
// remembers what the clients sent.
type recorder struct {
	mu      sync.Mutex
	lines   []string
	remotes map[string]int
	uas     map[string]int
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc.mu.Lock()
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	rc.remotes[host]++
	rc.uas[r.UserAgent()]++
	rc.lines = append(rc.lines, fmt.Sprintf("%s %s %s %.2s cl=%s q=%d", r.Method, r.Proto, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Length"), len(r.URL.RawQuery)))
	rc.mu.Unlock()
	w.WriteHeader(http.StatusServiceUnavailable)
}

func TestRealWireRequestsLookLikeSEPClientsAndLeaveFromTheirSiteAddress(t *testing.T) {
	rc := &recorder{remotes: map[string]int{}, uas: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rc}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	a, _, _ := testPairs(t)
	s := &Settings{KCS: "00112233445566778899AABBCCDDEEFF", Blocks: []PriorityBlock{{Name: "P1", Servers: []Server{{
		Address: "127.0.0.1", HTTPPort: ln.Addr().(*net.TCPAddr).Port, VerifySignatures: true, Cert: a.Cert,
	}}}}}
	cfg := fastConfig(t, s, 6)
	cfg.Wire, cfg.NAT = WireReal, 3
	f := newFleet(t, cfg)
	st := runUntil(t, f, 20*time.Second, func(s Summary) bool { return s.Heartbeats >= 60 })
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.remotes) != 2 || rc.remotes["127.0.0.2"] == 0 || rc.remotes["127.0.0.3"] == 0 {
		t.Errorf("source addresses %v, want 127.0.0.2 and 127.0.0.3 (3 clients each)", rc.remotes)
	}
	if len(rc.uas) != 1 || rc.uas["Smc"] == 0 {
		t.Errorf("user agents %v, want Smc only", rc.uas)
	}
	for _, l := range rc.lines {
		if !strings.HasPrefix(l, "POST HTTP/1.0 /secreg/secreg.dll h= cl=") {
			t.Fatalf("request %q, want a POST HTTP/1.0 of ?h= with Content-Length", l)
		}
		q, _ := strconv.Atoi(l[strings.Index(l, " q=")+3:])
		if q < 900 || q > 1300 {
			t.Fatalf("query of %d characters, want about 1,000: %q", q, l)
		}
	}
	// Every answer is a 503: each client comes back within the accelerated
	// window (0-40 ms at this 200 ms interval), not after its interval,
	// so it sends several times the requests of a healthy client.
	if healthy := 60 / 0.225; st.RequestsPerClientPerMinute < 2*healthy {
		t.Errorf("%.0f requests per client per minute after only errors, want above %.0f", st.RequestsPerClientPerMinute, 2*healthy)
	}
}

func TestNATNeedsTheRealWire(t *testing.T) {
	a, _, _ := testPairs(t)
	cfg := fastConfig(t, &Settings{Blocks: []PriorityBlock{{Name: "P1", Servers: []Server{{Address: "127.0.0.1", HTTPPort: 1, VerifySignatures: true, Cert: a.Cert}}}}}, 2)
	cfg.NAT = 2
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "nat") {
		t.Errorf("New with nat on the readable wire: %v", err)
	}
}

// FuzzParseContent feeds index documents to the definitions reference a
// real-wire client builds a download path from: what it accepts must be
// safe in a path.
func FuzzParseContent(f *testing.F) {
	for _, seed := range []string{
		`<Index><Profile SerialNumber="A"/><Content Guid="{0A1B2C3D-0000-1111-2222-333344445555}" Revision="20261203002" Size="4194304"/></Index>`,
		`<Index><Content Guid="../x" Revision="1"/></Index>`,
		`<Index/>`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ref, ok := parseContent(data)
		if !ok {
			return
		}
		for _, s := range []string{ref.guid, ref.revision} {
			if s == "" || len(s) > 64 || strings.ContainsAny(s, "/\\?#%.") {
				t.Fatalf("accepted %q for a download path", s)
			}
		}
	})
}

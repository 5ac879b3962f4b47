package fleet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// fastConfig is a fleet heartbeating every ~200 ms.
func fastConfig(t testing.TB, s *Settings, count int) Config {
	t.Helper()
	doc, err := BuildSyLink(s)
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Count:     count,
		SyLink:    doc,
		Interval:  200 * time.Millisecond,
		Randomize: 50 * time.Millisecond,
		Timeout:   5 * time.Second,
		Seed:      1,
	}
}

// running is a fleet running in the background while a test changes the
// server under it.
type running struct {
	t      testing.TB
	f      *Fleet
	cancel context.CancelFunc
	out    chan Summary
	final  *Summary
}

func startPhases(t testing.TB, f *Fleet) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, f: f, cancel: cancel, out: make(chan Summary, 1)}
	go func() { r.out <- f.Run(ctx) }()
	t.Cleanup(func() { r.stop() })
	return r
}

// until polls the summary until done says so or 30 s pass (a bound for a
// loaded CI machine under -race, not a figure), and returns the last
// snapshot; callers assert on it.
func (r *running) until(done func(Summary) bool) Summary {
	return r.within(30*time.Second, done)
}

func (r *running) within(limit time.Duration, done func(Summary) bool) Summary {
	deadline := time.Now().Add(limit)
	s := r.f.Summary()
	for time.Now().Before(deadline) && !done(s) {
		time.Sleep(20 * time.Millisecond)
		s = r.f.Summary()
	}
	return s
}

// stop ends the run and returns the final summary.
func (r *running) stop() Summary {
	r.t.Helper()
	if r.final != nil {
		return *r.final
	}
	r.cancel()
	select {
	case s := <-r.out:
		r.final = &s
		return s
	case <-time.After(15 * time.Second):
		r.t.Fatal("fleet did not stop within 15 s of its context ending")
	}
	return Summary{}
}

// runUntil runs f until done says so or limit passes, then stops it and
// returns the final summary.
func runUntil(t testing.TB, f *Fleet, limit time.Duration, done func(Summary) bool) Summary {
	t.Helper()
	r := startPhases(t, f)
	r.within(limit, done)
	return r.stop()
}

func newFleet(t testing.TB, cfg Config) *Fleet {
	t.Helper()
	f, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return f
}

func checkPartition(t testing.TB, s Summary) {
	t.Helper()
	if got := s.Pending + s.Online + s.Degraded + s.Failing + s.Orphaned; got != s.Clients {
		t.Errorf("pending+online+degraded+failing+orphaned = %d, want clients = %d (%+v)", got, s.Clients, s)
	}
}

func TestHealthyFleetHasNoOrphans(t *testing.T) {
	a, _, _ := testPairs(t)
	m := newFakeSEPM(t)
	m.publishProfile(a)
	const n = 40
	cfg := fastConfig(t, m.settings(a), n)
	cfg.LogBytes = 2048
	f := newFleet(t, cfg)
	s := runUntil(t, f, 30*time.Second, func(s Summary) bool { return s.Online == n && s.Heartbeats >= 4*n })
	checkPartition(t, s)
	if s.Online != n || s.Orphaned != 0 || s.EverOrphaned != 0 || s.Degraded != 0 || s.SignatureFailures != 0 {
		t.Errorf("healthy fleet: %+v, want all %d online, none orphaned or degraded", s, n)
	}
	if s.Registered != n || s.ProfileUpdates != n {
		t.Errorf("registered %d, profile updates %d, want %d each", s.Registered, s.ProfileUpdates, n)
	}
	if up := m.logUploads.Load(); up != s.Heartbeats || m.logBytes.Load() != 2048*up {
		t.Errorf("%d log uploads of %d bytes in all for %d heartbeats, want one of 2048 bytes per successful heartbeat", up, m.logBytes.Load(), s.Heartbeats)
	}
}

func TestServerSigningWithAnotherKeyOrphansClientsAfterK(t *testing.T) {
	a, b, _ := testPairs(t)
	m := newFakeSEPM(t)
	m.publishProfile(b) // clients trust a
	const n, k = 20, 3
	cfg := fastConfig(t, m.settings(a), n)
	cfg.OrphanAfter = k
	f := newFleet(t, cfg)
	s := runUntil(t, f, 30*time.Second, func(s Summary) bool { return s.Orphaned == n })
	checkPartition(t, s)
	if s.Orphaned != n || s.Online != 0 {
		t.Errorf("orphaned %d, online %d, want %d and 0: %+v", s.Orphaned, s.Online, n, s)
	}
	if s.SignatureFailures < k*n {
		t.Errorf("signature_failures %d, want at least K×clients = %d", s.SignatureFailures, k*n)
	}
	if s.Errors["signature"] != s.SignatureFailures {
		t.Errorf("errors.signature %d != signature_failures %d", s.Errors["signature"], s.SignatureFailures)
	}
}

func TestOrphanedExactlyAfterKUnusableHeartbeats(t *testing.T) {
	tests := []struct {
		name     string
		outcomes []outcome
		want     clientState
	}{
		{"one failure is failing", []outcome{outcomeUnusable}, stateFailing},
		{"K-1 failures is failing", []outcome{outcomeUnusable, outcomeUnusable}, stateFailing},
		{"K failures is orphaned", []outcome{outcomeUnusable, outcomeUnusable, outcomeUnusable}, stateOrphaned},
		{"a degraded heartbeat breaks the streak", []outcome{outcomeUnusable, outcomeUnusable, outcomeDegraded, outcomeUnusable}, stateFailing},
		{"an OK heartbeat recovers an orphan", []outcome{outcomeUnusable, outcomeUnusable, outcomeUnusable, outcomeOK}, stateOnline},
		{"rate limited counts as online", []outcome{outcomeLimited}, stateOnline},
		{"download failure is degraded", []outcome{outcomeDegraded}, stateDegraded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &Fleet{cfg: Config{OrphanAfter: 3}}
			f.count.states[statePending].Store(1)
			var c client
			for _, o := range tt.outcomes {
				f.settle(&c, o)
			}
			if c.state != tt.want {
				t.Errorf("state %d, want %d", c.state, tt.want)
			}
			if f.count.states[tt.want].Load() != 1 {
				t.Errorf("state counter for %d is %d, want 1", tt.want, f.count.states[tt.want].Load())
			}
		})
	}
}

func TestDownloadFailuresDegradeButDoNotOrphan(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		retryAfter    string
		wantLimited   bool
		wantErrorKind string
	}{
		{"503 without Retry-After", http.StatusServiceUnavailable, "", false, "http_5xx"},
		{"502 from a gateway refusing the manager's signature", http.StatusBadGateway, "", false, "http_5xx"},
		{"429 with Retry-After", http.StatusTooManyRequests, "1", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _, _ := testPairs(t)
			m := newFakeSEPM(t)
			m.publishProfile(a)
			m.set(func(m *fakeSEPM) { m.downloadStatus, m.retryAfter = tt.status, tt.retryAfter })
			const n = 20
			f := newFleet(t, fastConfig(t, m.settings(a), n))
			s := runUntil(t, f, 30*time.Second, func(s Summary) bool { return s.Heartbeats >= 4*n && s.Degraded == n })
			checkPartition(t, s)
			if s.Degraded != n || s.Orphaned != 0 || s.EverOrphaned != 0 || s.SignatureFailures != 0 {
				t.Errorf("%+v: want all %d degraded, none orphaned", s, n)
			}
			if tt.wantLimited && s.RateLimited == 0 {
				t.Error("rate_limited is 0, want the 429s counted")
			}
			if tt.wantErrorKind != "" && s.Errors[tt.wantErrorKind] == 0 {
				t.Errorf("errors.%s is 0: %v", tt.wantErrorKind, s.Errors)
			}
		})
	}
}

func TestRetryAfterOnIndexIsHonoured(t *testing.T) {
	a, _, _ := testPairs(t)
	m := newFakeSEPM(t)
	m.publishProfile(a)
	m.set(func(m *fakeSEPM) { m.indexStatus, m.retryAfter = http.StatusServiceUnavailable, "2" })
	const n = 20
	f := newFleet(t, fastConfig(t, m.settings(a), n))
	began := time.Now()
	s := runUntil(t, f, 1500*time.Millisecond, func(Summary) bool { return false })
	checkPartition(t, s)
	// Every client's first heartbeat is within 250 ms; Retry-After: 2 holds
	// the next one past the end. Without it, 200 ms heartbeats would run ~6 each.
	if s.Heartbeats != n || s.RateLimited != n {
		t.Errorf("after %v: heartbeats %d, rate_limited %d, want %d each (one per client)", time.Since(began), s.Heartbeats, s.RateLimited, n)
	}
	if s.Online != n || s.Orphaned != 0 {
		t.Errorf("online %d, orphaned %d: a client told to come back later is not lost", s.Online, s.Orphaned)
	}
}

func TestSyLinkChange(t *testing.T) {
	tests := []struct {
		name         string
		signedByNew  bool // the new SyLink is signed by the new key: what a manager that changed key does alone
		wantAnchor   int64
		wantOrphaned int64
	}{
		{"new certificate signed by the old key is adopted", false, 20, 0},
		{"new certificate signed by the new key orphans", true, 0, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b, _ := testPairs(t)
			m := newFakeSEPM(t)
			m.publishProfile(a)
			const n = 20
			f := newFleet(t, fastConfig(t, m.settings(a), n))
			signer := a
			if tt.signedByNew {
				signer = b
			}
			m.publishSyLink(m.settings(b), signer)
			run := startPhases(t, f)
			// Once every client has fetched the new settings (or failed to),
			// the manager signs with the new key.
			run.until(func(s Summary) bool { return s.SyLinkUpdates+s.SignatureFailures >= n })
			m.publishProfile(b)
			run.until(func(s Summary) bool {
				return s.OnNewAnchor == tt.wantAnchor && s.Orphaned == tt.wantOrphaned && s.Heartbeats >= 6*n
			})
			s := run.stop()
			checkPartition(t, s)
			if s.OnNewAnchor != tt.wantAnchor || s.Orphaned != tt.wantOrphaned {
				t.Errorf("on_new_anchor %d, orphaned %d; want %d, %d: %+v", s.OnNewAnchor, s.Orphaned, tt.wantAnchor, tt.wantOrphaned, s)
			}
		})
	}
}

func TestPlaintextShareAndMigrationToHTTPS(t *testing.T) {
	a, _, _ := testPairs(t)
	m := newFakeSEPM(t)
	m.publishProfile(a)
	const n = 40
	cfg := fastConfig(t, m.settings(a), n)
	cfg.PlaintextShare = 0.5
	f := newFleet(t, cfg)
	start := f.Summary()
	if start.OnPlaintext == 0 || start.OnPlaintext == n {
		t.Fatalf("on_plaintext at start = %d of %d, want a share", start.OnPlaintext, n)
	}
	phase := startPhases(t, f)
	phase.until(func(s Summary) bool { return s.Online == n })
	if m.plainHits.Load() == 0 {
		t.Fatal("no request reached the plain HTTP listener")
	}
	if got := f.Summary().OnPlaintext; got != start.OnPlaintext {
		t.Errorf("on_plaintext %d after heartbeats, want %d", got, start.OnPlaintext)
	}
	// The migration document: the same server, HTTPS only.
	m.publishSyLink(m.settings(a), a)
	phase.until(func(s Summary) bool { return s.OnPlaintext == 0 && s.SyLinkUpdates >= n })
	s := phase.stop()
	checkPartition(t, s)
	if s.OnPlaintext != 0 || s.Orphaned != 0 || s.OnNewAnchor != 0 {
		t.Errorf("after migration: %+v, want on_plaintext 0, orphaned 0, on_new_anchor 0", s)
	}
}

func TestTLSCeilings(t *testing.T) {
	tests := []struct {
		name       string
		tlsMax     string
		tls10Share float64
		want10     bool
		want12     bool
	}{
		{"XP-era clients speak TLS 1.0 with CBC suites", TLS10, 0, true, false},
		{"modern clients speak TLS 1.2", TLS12, 0, false, true},
		{"a TLS 1.0 share mixes both", TLS12, 0.5, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _, _ := testPairs(t)
			m := newFakeSEPM(t)
			m.publishProfile(a)
			const n = 20
			cfg := fastConfig(t, m.settings(a), n)
			cfg.TLSMax, cfg.TLS10Share = tt.tlsMax, tt.tls10Share
			s := runUntil(t, newFleet(t, cfg), 10*time.Second, func(s Summary) bool { return s.Online == n })
			if s.Online != n {
				t.Fatalf("%+v: want all online", s)
			}
			got10, got12 := m.count(&m.tlsVersions, tls.VersionTLS10) > 0, m.count(&m.tlsVersions, tls.VersionTLS12) > 0
			if got10 != tt.want10 || got12 != tt.want12 {
				t.Errorf("negotiated TLS 1.0: %v, TLS 1.2: %v; want %v, %v", got10, got12, tt.want10, tt.want12)
			}
			if tt.want10 && !tt.want12 && m.count(&m.suites, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) > 0 {
				t.Error("TLS 1.0-ceiling clients negotiated an AEAD suite")
			}
		})
	}
}

// A manager restricted to RSA key exchange (as some old Apache setups are)
// still gets its XP-era clients.
func TestTLS10ClientsOfferRSAKeyExchange(t *testing.T) {
	a, _, _ := testPairs(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{a.TLS()},
		MinVersion:   tls.VersionTLS10, MaxVersion: tls.VersionTLS10,
		CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), clientTLS(transportKey{tls10: true}, nil))
	if err != nil {
		t.Fatalf("TLS 1.0 client against an RSA-kex-only TLS 1.0 server: %v", err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	if st.Version != tls.VersionTLS10 || st.CipherSuite != tls.TLS_RSA_WITH_AES_128_CBC_SHA {
		t.Errorf("negotiated %s %s, want TLS 1.0 TLS_RSA_WITH_AES_128_CBC_SHA", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	}
}

func TestServerListFailoverAndUnreachableServers(t *testing.T) {
	a, _, _ := testPairs(t)
	m := newFakeSEPM(t)
	m.publishProfile(a)
	dead := closedPort(t)
	deadServer := Server{Address: "127.0.0.1", HTTPSPort: dead, VerifySignatures: true, Cert: a.Cert}
	live := m.settings(a).Blocks[0]
	tests := []struct {
		name         string
		blocks       []PriorityBlock
		wantOnline   int64
		wantOrphaned int64
	}{
		{"first priority down, second answers", []PriorityBlock{{Name: "P1", Servers: []Server{deadServer}}, live}, 20, 0},
		{"every server down", []PriorityBlock{{Name: "P1", Servers: []Server{deadServer}}}, 0, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const n = 20
			f := newFleet(t, fastConfig(t, &Settings{Blocks: tt.blocks}, n))
			s := runUntil(t, f, 30*time.Second, func(s Summary) bool {
				return s.Online == tt.wantOnline && s.Orphaned == tt.wantOrphaned && s.Pending == 0
			})
			checkPartition(t, s)
			if s.Online != tt.wantOnline || s.Orphaned != tt.wantOrphaned {
				t.Errorf("%+v: want online %d, orphaned %d", s, tt.wantOnline, tt.wantOrphaned)
			}
			if s.Errors["refused"] == 0 {
				t.Errorf("errors.refused is 0 with a dead server in the list: %v", s.Errors)
			}
		})
	}
}

// closedPort is a loopback port with nothing listening.
func closedPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := portOf(t, ln.Addr())
	ln.Close()
	return p
}

func TestSummaryHasProtocolKeys(t *testing.T) {
	a, _, _ := testPairs(t)
	m := newFakeSEPM(t)
	m.publishProfile(a)
	f := newFleet(t, fastConfig(t, m.settings(a), 5))
	raw, err := json.Marshal(f.Summary())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	protocol := []string{"clients", "online", "orphaned", "degraded", "on_new_anchor", "on_plaintext", "heartbeats", "rate_limited", "signature_failures"}
	extras := []string{"pending", "failing", "ever_orphaned", "ever_degraded", "registered", "profile_updates", "sylink_updates",
		"requests", "index_p50_ms", "index_p99_ms", "lag_p99_ms", "elapsed_seconds", "errors",
		"requests_per_client_per_minute", "starved", "ever_starved", "content_downloads", "content_bytes"}
	want := append(slices.Clone(protocol), extras...)
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Errorf("summary keys %v, want %v", keys, want)
	}
	if got["clients"] != float64(5) || got["pending"] != float64(5) {
		t.Errorf("before running: %s", raw)
	}
}

func TestConfigMistakesAreRejected(t *testing.T) {
	a, _, _ := testPairs(t)
	good := Settings{Blocks: []PriorityBlock{{Name: "P1", Servers: []Server{{Address: "127.0.0.1", HTTPSPort: 443, VerifySignatures: true, Cert: a.Cert}}}}}
	doc, err := BuildSyLink(&good)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no clients", Config{SyLink: doc}, "count 0"},
		{"no SyLink", Config{Count: 1}, "SyLink document is required"},
		{"bad SyLink", Config{Count: 1, SyLink: []byte("<x")}, "starting SyLink"},
		{"unknown flavor", Config{Count: 1, SyLink: doc, Flavor: "nosuch"}, `flavor "nosuch"`},
		{"bad TLS ceiling", Config{Count: 1, SyLink: doc, TLSMax: "1.3"}, `tls-max "1.3"`},
		{"share above 1", Config{Count: 1, SyLink: doc, PlaintextShare: 1.5}, "plaintext-share"},
		{"negative interval", Config{Count: 1, SyLink: doc, Interval: -time.Second}, "must not be negative"},
		{"plaintext share without HttpPort", Config{Count: 1, SyLink: doc, PlaintextShare: 0.5}, "no HttpPort"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/manager"
	"github.com/legacygate/legacygate/policyguard"
)

// The fleet tests run 1,000 clients heartbeating every 400-600 ms. Under
// the race detector the fleet and the emulator (both in the test process)
// are about ten times slower (the clients' signature checks dominate), so
// they run 100 clients: the same scenarios, within the CI's time budget.
const (
	fleetInterval  = 400 * time.Millisecond
	fleetRandomize = 200 * time.Millisecond
	fleetCycle     = fleetInterval + fleetRandomize // the longest normal heartbeat gap
)

// fleetClients is the number of simulated clients per run.
func fleetClients() int {
	if raceEnabled {
		return 100
	}
	return 1000
}

// keyChangeLab is an emulated SEPM-style manager (TLS 1.0 only, SHA-1
// certificate, RSA-SHA1 signatures, writing its files to mgrDir and holding
// the administrator's next pair in nextDir) behind a gateway that
// terminates TLS 1.2+, pins the manager's key in legacy_tls, verifies its
// signatures with policy_guard and re-signs them with the gateway's key,
// rewriting the settings' server list to the gateway.
type keyChangeLab struct {
	gateway         *certs.Pair // the gateway's signing key
	gwKey, gwCert   string      // its files
	mgr             *manager.Manager
	mgrDir, nextDir string
	gw              *harness.Gateway
	port            int
}

// keyChangePairs are the manager's first and next pairs (SHA-1
// certificates) and the gateway's signing pair, made once per test process:
// RSA key generation is slow under the race detector, and every lab may
// share them (each lab has its own manager and gateway).
var keyChangePairs = sync.OnceValues(func() ([3]*certs.Pair, error) {
	var pairs [3]*certs.Pair
	for i, p := range []struct {
		kind certs.Kind
		cn   string
	}{{certs.SHA1, "sepm.legacygate.test"}, {certs.SHA1, "sepm.legacygate.test"}, {certs.Modern, "gateway.legacygate.test"}} {
		pair, err := certs.New(p.kind, p.cn, 2048)
		if err != nil {
			return pairs, err
		}
		pairs[i] = pair
	}
	return pairs, nil
})

// startKeyChangeManager starts the manager with a next pair prepared in
// nextDir, as an administrator does before an import.
func startKeyChangeManager(t *testing.T) *keyChangeLab {
	t.Helper()
	pairs, err := keyChangePairs()
	if err != nil {
		t.Fatal(err)
	}
	l := &keyChangeLab{gateway: pairs[2], mgrDir: t.TempDir(), nextDir: t.TempDir()}
	if _, _, err := pairs[1].WriteFiles(l.nextDir, "next"); err != nil {
		t.Fatal(err)
	}
	mgr, err := manager.New(manager.Config{
		Initial:   pairs[0],
		HTTPSAddr: "127.0.0.1:0",
		TLSMin:    tls.VersionTLS10, TLSMax: tls.VersionTLS10,
		Cert: certs.SHA1, Sign: manager.SignRSASHA1,
		ProfileSize: 8 << 10,
		Dir:         l.mgrDir, NextDir: l.nextDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	l.mgr = mgr
	return l
}

// managerCertFile copies the manager's current signing certificate (from
// its Dir, as an administrator would) to a file of its own named name.
func (l *keyChangeLab) managerCertFile(t *testing.T, name string) string {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(l.mgrDir, manager.SigningCertFile))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), name+".crt")
	if err := os.WriteFile(file, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// keyChangeCaddyfile pins pins in legacy_tls and trusts the certificates in
// upstreamCerts in policy_guard.
func (l *keyChangeLab) keyChangeCaddyfile(pins, upstreamCerts []string) string {
	return fmt.Sprintf(`{
	grace_period 1s
}

localhost:%d {
	tls internal
	policy_guard /secars/secars.dll {
		upstream_cert %s
		signing_key %s %s
		roots Profile ServerSettings
		allow_sha1
		allow_non_xml text/plain
		rewrite {
			addresses localhost
			https_port %d
		}
	}
	reverse_proxy %s {
		transport legacy_tls {
			pin %s
			min_version tls1.0
		}
	}
}
`, l.port, strings.Join(upstreamCerts, " "), l.gwKey, l.gwCert, l.port,
		l.mgr.Addrs().HTTPS, strings.Join(pins, " "))
}

// startKeyChangeGateway starts the gateway in front of the lab's manager.
func (l *keyChangeLab) startKeyChangeGateway(t *testing.T, pins, upstreamCerts []string) {
	t.Helper()
	var err error
	if l.gwCert, l.gwKey, err = l.gateway.WriteFiles(t.TempDir(), "gateway"); err != nil {
		t.Fatal(err)
	}
	l.port = harness.FreePort(t)
	l.gw = harness.StartGateway(t, l.keyChangeCaddyfile(pins, upstreamCerts))
	l.gw.WaitCertificate(t, "localhost")
}

// gatewayFleet is a fleet whose settings list only the gateway and trust
// only the gateway's signing certificate. Its serial is empty, so every
// client fetches the gateway's rewritten settings at its first heartbeat.
func (l *keyChangeLab) gatewayFleet(t *testing.T, orphanAfter int) *fleet.Fleet {
	t.Helper()
	doc, err := fleet.BuildSyLink(&fleet.Settings{Blocks: []fleet.PriorityBlock{{Name: "Priority1", Servers: []fleet.Server{{
		Address: "localhost", HTTPSPort: l.port, VerifySignatures: true, Cert: l.gateway.Cert,
	}}}}})
	if err != nil {
		t.Fatal(err)
	}
	return newKeyChangeFleet(t, doc, orphanAfter)
}

// directFleet is the same fleet straight at the manager: it starts from the
// SyLink.xml the manager wrote to its Dir, trusting the manager's key.
func (l *keyChangeLab) directFleet(t *testing.T, orphanAfter int) *fleet.Fleet {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(l.mgrDir, manager.SyLinkFile))
	if err != nil {
		t.Fatal(err)
	}
	return newKeyChangeFleet(t, doc, orphanAfter)
}

func newKeyChangeFleet(t *testing.T, sylink []byte, orphanAfter int) *fleet.Fleet {
	t.Helper()
	f, err := fleet.New(fleet.Config{
		Count: fleetClients(), SyLink: sylink, TLSMax: fleet.TLS12,
		Interval: fleetInterval, Randomize: fleetRandomize,
		OrphanAfter: orphanAfter, Timeout: 5 * time.Second, Seed: 5,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// fleetRun is a fleet running in the background.
type fleetRun struct {
	f      *fleet.Fleet
	cancel context.CancelFunc
	done   chan fleet.Summary
}

func runFleet(t *testing.T, f *fleet.Fleet) *fleetRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &fleetRun{f: f, cancel: cancel, done: make(chan fleet.Summary, 1)}
	go func() { r.done <- f.Run(ctx) }()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop ends the run and returns its final summary.
func (r *fleetRun) stop() fleet.Summary {
	r.cancel()
	s := <-r.done
	r.done <- s
	return s
}

// waitFor polls the summary until ok holds (true) or timeout passes (false).
func (r *fleetRun) waitFor(timeout time.Duration, ok func(fleet.Summary) bool) (fleet.Summary, bool) {
	deadline := time.Now().Add(timeout)
	for {
		s := r.f.Summary()
		if ok(s) {
			return s, true
		}
		if time.Now().After(deadline) {
			return s, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitAllOnline waits until every client has had a complete heartbeat.
func (r *fleetRun) waitAllOnline(t *testing.T, what string) fleet.Summary {
	t.Helper()
	s, ok := r.waitFor(30*time.Second, func(s fleet.Summary) bool { return s.Online == s.Clients })
	if !ok {
		t.Fatalf("%s: not every client came online within 30 s: %s", what, summaryLine(s))
	}
	return s
}

// waitSettled waits until every client is online again, has adopted the
// documents published after the change (updates beyond base) and at least
// minimum has passed since since, so that a failure would have had time to
// orphan clients.
func (r *fleetRun) waitSettled(t *testing.T, what string, base fleet.Summary, since time.Time, minimum time.Duration) fleet.Summary {
	t.Helper()
	n := base.Clients
	s, ok := r.waitFor(minimum+30*time.Second, func(s fleet.Summary) bool {
		return time.Since(since) >= minimum && s.Online == n &&
			s.ProfileUpdates >= base.ProfileUpdates+n && s.SyLinkUpdates >= base.SyLinkUpdates+n
	})
	if !ok {
		t.Fatalf("%s: the fleet did not settle on the new documents: %s", what, summaryLine(s))
	}
	return s
}

// waitAllOrphaned waits until every client of a run straight at the
// manager is orphaned, and fails the test if that does not happen. Each
// failed heartbeat verifies signatures (CPU-bound), so on a loaded 2-core
// machine 1,000 clients need far more than orphanAfter cycles: the bound
// is generous, and the wait ends as soon as the last client is orphaned.
func (r *fleetRun) waitAllOrphaned(t *testing.T, what string, orphanAfter int) fleet.Summary {
	t.Helper()
	s, ok := r.waitFor(time.Duration(orphanAfter+2)*fleetCycle+60*time.Second, func(s fleet.Summary) bool { return s.Orphaned == s.Clients })
	if !ok {
		t.Fatalf("%s: the run straight at the manager did not orphan every client: %s", what, summaryLine(s))
	}
	return s
}

// summaryLine is the fields of a summary the tests talk about.
func summaryLine(s fleet.Summary) string {
	return fmt.Sprintf("clients %d online %d orphaned %d degraded %d failing %d pending %d ever_orphaned %d ever_degraded %d "+
		"on_new_anchor %d on_plaintext %d heartbeats %d signature_failures %d profile_updates %d sylink_updates %d elapsed %.1fs errors %v",
		s.Clients, s.Online, s.Orphaned, s.Degraded, s.Failing, s.Pending, s.EverOrphaned, s.EverDegraded,
		s.OnNewAnchor, s.OnPlaintext, s.Heartbeats, s.SignatureFailures, s.ProfileUpdates, s.SyLinkUpdates, s.ElapsedSeconds, nonZero(s.Errors))
}

func nonZero(m map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// waitGatewayRefuses waits (at most 5 s) until the reachability probe
// through the gateway gets 502: the gateway no longer reaches the manager
// (connections opened before the key change serve one more answer).
func (l *keyChangeLab) waitGatewayRefuses(t *testing.T) {
	t.Helper()
	c := l.gw.Client(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := guardGet(t, c, http.MethodGet, "https://localhost:"+strconv.Itoa(l.port)+manager.SecarsPath+"?hello,secars")
		if r.status == http.StatusBadGateway {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway still answers %d for the regenerated manager, want 502", r.status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFleetManagerImportThroughGatewayOrphansNoOne: the planned key change.
// The administrator pins the manager's next key in the gateway before the
// manager imports it mid-run; through the gateway no client is orphaned or
// even degraded, while the same fleet straight at the manager is orphaned.
func TestFleetManagerImportThroughGatewayOrphansNoOne(t *testing.T) {
	const orphanAfter = 3
	t.Run("gateway", func(t *testing.T) {
		l := startKeyChangeManager(t)
		nextCert := filepath.Join(l.nextDir, manager.NextCertFile)
		l.startKeyChangeGateway(t,
			[]string{l.mgr.Pin(), certs.Pin(l.mgr.NextCert())},
			[]string{l.managerCertFile(t, "manager-current"), nextCert})
		run := runFleet(t, l.gatewayFleet(t, orphanAfter))
		before := run.waitAllOnline(t, "gateway")
		profilesBefore, oldCert := l.mgr.Requests(manager.CountProfile), l.mgr.SigningCert()
		if err := l.mgr.Import(); err != nil {
			t.Fatal(err)
		}
		changed := time.Now()
		run.waitSettled(t, "gateway", before, changed, time.Duration(orphanAfter+1)*fleetCycle)
		s := run.stop()
		t.Logf("import through the gateway: %s", summaryLine(s))
		if s.Orphaned != 0 || s.EverOrphaned != 0 || s.Degraded != 0 || s.EverDegraded != 0 || s.SignatureFailures != 0 {
			t.Fatalf("through the gateway an import orphaned or degraded clients: %s", summaryLine(s))
		}
		// Every client downloaded a profile the manager signed with the
		// imported key, which the gateway verified against the pinned next
		// certificate and re-signed: the fleet verified each one.
		if got := l.mgr.Requests(manager.CountProfile) - profilesBefore; got < s.Clients {
			t.Fatalf("the manager served %d profiles after the import, want at least one per client (%d)", got, s.Clients)
		}
		c := l.gw.Client(t)
		host := registerThrough(t, c, "https://localhost:"+strconv.Itoa(l.port))
		mgrProfile := guardGet(t, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: managerTLSConfig()}},
			http.MethodGet, "https://"+l.mgr.Addrs().HTTPS+manager.SecarsPath+"?action=profile&hostid="+host)
		if !verifiesSHA1(t, l.mgr.NextCert(), mgrProfile.body) || verifiesSHA1(t, oldCert, mgrProfile.body) {
			t.Fatalf("the manager's profile after the import (status %d) is not signed with the imported key alone", mgrProfile.status)
		}
		gwProfile := guardGet(t, c, http.MethodGet, "https://localhost:"+strconv.Itoa(l.port)+manager.SecarsPath+"?action=profile&hostid="+host)
		if gwProfile.status != http.StatusOK || !verifies(t, l.gateway.Cert, gwProfile.body) {
			t.Fatalf("the gateway's profile after the import: status %d, not signed with the gateway's key", gwProfile.status)
		}
	})

	t.Run("direct", func(t *testing.T) {
		l := startKeyChangeManager(t)
		run := runFleet(t, l.directFleet(t, orphanAfter))
		run.waitAllOnline(t, "direct")
		if err := l.mgr.Import(); err != nil {
			t.Fatal(err)
		}
		run.waitAllOrphaned(t, "direct", orphanAfter)
		s := run.stop()
		t.Logf("import straight at the manager: %s", summaryLine(s))
		if s.SignatureFailures == 0 {
			t.Fatalf("the direct clients were orphaned without refusing a signature: %s", summaryLine(s))
		}
	})
}

// TestFleetManagerRegenerationThroughGatewayOrphansNoOne: the accident. The
// manager regenerates its key mid-run; the gateway refuses it (502) until
// the administrator pins the new certificate and reloads, faster than
// orphanAfter heartbeats; no client is orphaned, every client is online
// again after the reload, and the same fleet straight at the manager is
// orphaned.
func TestFleetManagerRegenerationThroughGatewayOrphansNoOne(t *testing.T) {
	// A failed index accelerates the next heartbeat (0 to interval/5), so
	// the clients heartbeat several times a second while the gateway
	// refuses the manager: orphanAfter leaves the administrator a few
	// seconds to reload.
	const orphanAfter = 10
	t.Run("gateway", func(t *testing.T) {
		l := startKeyChangeManager(t)
		l.startKeyChangeGateway(t, []string{l.mgr.Pin()}, []string{l.managerCertFile(t, "manager-current")})
		run := runFleet(t, l.gatewayFleet(t, orphanAfter))
		before := run.waitAllOnline(t, "gateway")
		if before.EverDegraded != 0 || before.Failing != 0 {
			t.Fatalf("clients degraded or failing before the regeneration: %s", summaryLine(before))
		}
		if err := l.mgr.Regenerate(); err != nil {
			t.Fatal(err)
		}
		changed := time.Now()
		l.waitGatewayRefuses(t)
		// The administrator pins the new certificate and reloads.
		regenerated := l.managerCertFile(t, "manager-regenerated")
		l.gw.Reload(t, l.keyChangeCaddyfile([]string{l.mgr.Pin()}, []string{regenerated}))
		reloaded := time.Now()
		atReload := run.f.Summary()
		t.Logf("reload %v after the regeneration; at the reload: %s", reloaded.Sub(changed).Round(time.Millisecond), summaryLine(atReload))
		settled := run.waitSettled(t, "gateway", before, reloaded, time.Duration(orphanAfter+1)*fleetCycle)
		s := run.stop()
		t.Logf("regeneration through the gateway: %s", summaryLine(s))
		if s.Orphaned != 0 || s.EverOrphaned != 0 {
			t.Fatalf("through the gateway a regeneration orphaned clients: %s", summaryLine(s))
		}
		if s.Online != s.Clients || s.EverDegraded != settled.EverDegraded || s.SignatureFailures != 0 {
			t.Fatalf("clients degraded or failing after the reload: settled %s; end %s", summaryLine(settled), summaryLine(s))
		}
	})

	t.Run("direct", func(t *testing.T) {
		l := startKeyChangeManager(t)
		run := runFleet(t, l.directFleet(t, orphanAfter))
		run.waitAllOnline(t, "direct")
		if err := l.mgr.Regenerate(); err != nil {
			t.Fatal(err)
		}
		run.waitAllOrphaned(t, "direct", orphanAfter)
		s := run.stop()
		t.Logf("regeneration straight at the manager: %s", summaryLine(s))
		if s.SignatureFailures == 0 {
			t.Fatalf("the direct clients were orphaned without refusing a signature: %s", summaryLine(s))
		}
	})
}

// managerTLSConfig reaches the TLS 1.0 emulated manager; its key is
// checked by the signatures, not the handshake.
func managerTLSConfig() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}
}

// registerThrough registers a client at base and returns its HostId.
func registerThrough(t *testing.T, c *http.Client, base string) string {
	t.Helper()
	resp, err := c.Post(base+manager.SecregPath+"?action=register", "application/x-www-form-urlencoded", strings.NewReader("hostname=probe"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var reg struct {
		HostID string `xml:"HostId,attr"`
	}
	if err := xml.NewDecoder(resp.Body).Decode(&reg); err != nil || reg.HostID == "" {
		t.Fatalf("registration through %s: status %d: %v", base, resp.StatusCode, err)
	}
	return reg.HostID
}

// verifiesSHA1 reports whether doc, signed by the emulated legacy manager
// (RSA-SHA1), verifies with cert alone.
func verifiesSHA1(t *testing.T, cert *x509.Certificate, doc []byte) bool {
	t.Helper()
	v, err := policyguard.NewVerifier([]*x509.Certificate{cert}, policyguard.VerifyOptions{AllowSHA1: true, IgnoreExpiry: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(doc)
	return err == nil
}

// windowLab is the lab's manager behind a gateway whose legacygate app
// rotates its signing key from current to next in a window, with an HTTPS
// site and an 8014-style plaintext site bridged by plaintext_bridge. Both
// sites share one policy_guard (one rewrite, drop_http_only), so a client
// moved off plaintext finds the same settings serial on HTTPS.
type windowLab struct {
	*keyChangeLab
	current, next  *certs.Pair
	curKey, curCrt string
	nextKey, nxCrt string
	storage        string // the app's storage, shared by the lab's gateways
	plainPort      int
	start, end     time.Time
	persist        string
	// registration lets plaintext clients register outside the window
	// (a migration request), so one without a HostId can be moved too.
	registration bool
}

// windowPairs are the gateway's current and next keys, made once.
var windowPairs = sync.OnceValues(func() ([2]*certs.Pair, error) {
	var pairs [2]*certs.Pair
	for i, cn := range []string{"gateway-2019.legacygate.test", "gateway-2026.legacygate.test"} {
		pair, err := certs.New(certs.Modern, cn, 2048)
		if err != nil {
			return pairs, err
		}
		pairs[i] = pair
	}
	return pairs, nil
})

func newWindowLab(t *testing.T, start, end time.Time, persist string) *windowLab {
	t.Helper()
	pairs, err := windowPairs()
	if err != nil {
		t.Fatal(err)
	}
	l := &windowLab{keyChangeLab: startKeyChangeManager(t), current: pairs[0], next: pairs[1],
		storage: t.TempDir(), start: start, end: end, persist: persist}
	dir := t.TempDir()
	if l.curCrt, l.curKey, err = l.current.WriteFiles(dir, "current"); err != nil {
		t.Fatal(err)
	}
	if l.nxCrt, l.nextKey, err = l.next.WriteFiles(dir, "next"); err != nil {
		t.Fatal(err)
	}
	l.port, l.plainPort = harness.FreePort(t), harness.FreePort(t)
	return l
}

// windowCaddyfile is the gateway configuration, for gateways listening on
// https and plain.
func (l *windowLab) windowCaddyfile(https, plain int) string {
	return fmt.Sprintf(`{
	grace_period 1s
	legacygate {
		signing_key current %s %s
		signing_key next %s %s
		client_id {query.hostid}
		storage file_system %s
		rotation {
			window %s %s
			confirm_heartbeats 3
			grace 1h
			persist_interval %s
		}
	}
}

(manager) {
	policy_guard /secars/secars.dll {
		upstream_cert %s
		roots Profile ServerSettings
		allow_sha1
		allow_non_xml text/plain
		rewrite {
			addresses localhost
			https_port %d
			drop_http_only
		}
	}
	reverse_proxy %s {
		transport legacy_tls {
			pin %s
			min_version tls1.0
		}
	}
}

localhost:%d {
	tls internal
	import manager
}

http://localhost:%d {
	plaintext_bridge {
		allow /secars/secars.dll /secreg/secreg.dll
		migration /secars/secars.dll action=index
		migration /secars/secars.dll action=sylink
		%s
		outside_window migrate
	}
	import manager
}
`, l.curKey, l.curCrt, l.nextKey, l.nxCrt, l.storage, l.start.UTC().Format(time.RFC3339), l.end.UTC().Format(time.RFC3339), l.persist,
		filepath.Join(l.mgrDir, manager.SigningCertFile), https, l.mgr.Addrs().HTTPS, l.mgr.Pin(), https, plain, l.registrationLine())
}

func (l *windowLab) registrationLine() string {
	if l.registration {
		return "migration /secreg/secreg.dll action=register"
	}
	return ""
}

// startWindowGateway starts a gateway of the lab on its own ports.
func (l *windowLab) startWindowGateway(t *testing.T, https, plain int) *harness.Gateway {
	t.Helper()
	gw := harness.StartGateway(t, l.windowCaddyfile(https, plain))
	gw.WaitCertificate(t, "localhost")
	return gw
}

// windowFleet is the fleet of the window tests: its clients trust the
// gateway's current certificate, list the gateway's HTTPS and plaintext
// ports, and a fifth of them start on plaintext.
func (l *windowLab) windowFleet(t *testing.T, plaintextShare float64, logBytes int) *fleet.Fleet {
	t.Helper()
	doc, err := fleet.BuildSyLink(&fleet.Settings{Blocks: []fleet.PriorityBlock{{Name: "Priority1", Servers: []fleet.Server{{
		Address: "localhost", HTTPSPort: l.port, HTTPPort: l.plainPort, VerifySignatures: true, Cert: l.current.Cert,
	}}}}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.New(fleet.Config{
		Count: fleetClients(), SyLink: doc, TLSMax: fleet.TLS12, PlaintextShare: plaintextShare,
		Interval: fleetInterval, Randomize: fleetRandomize, LogBytes: logBytes, Timeout: 5 * time.Second, Seed: 9,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// rotationCounts is the admin API's /legacygate/rotation "counts".
type rotationCounts struct {
	Phase                                      string
	Tracked, Pending, AnchorFetched, Confirmed int64
	Plaintext                                  int64
}

func windowCounts(t *testing.T, gw *harness.Gateway) rotationCounts {
	t.Helper()
	r := guardGet(t, &http.Client{Timeout: 5 * time.Second}, http.MethodGet, "http://"+gw.AdminAddr+"/legacygate/rotation")
	if r.status != http.StatusOK {
		t.Fatalf("admin /legacygate/rotation: %d %s", r.status, r.body)
	}
	var st struct {
		Counts struct {
			Phase         string `json:"phase"`
			Tracked       int64  `json:"tracked"`
			Pending       int64  `json:"pending"`
			AnchorFetched int64  `json:"anchor_fetched"`
			Confirmed     int64  `json:"confirmed"`
			Plaintext     int64  `json:"plaintext"`
		} `json:"counts"`
	}
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatalf("admin /legacygate/rotation: %v\n%s", err, r.body)
	}
	c := st.Counts
	return rotationCounts{c.Phase, c.Tracked, c.Pending, c.AnchorFetched, c.Confirmed, c.Plaintext}
}

// waitConfirmedCount polls gw's counts until want clients are confirmed.
func waitConfirmedCount(t *testing.T, gw *harness.Gateway, want int64, timeout time.Duration) (rotationCounts, bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := windowCounts(t, gw)
		if c.Confirmed >= want || time.Now().After(deadline) {
			return c, c.Confirmed >= want
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFleetGatewayRotationWindowConfirmsEveryClient runs a gateway key
// rotation with a window open now: every client, a fifth of them on the
// plaintext listener, fetches the settings carrying the next certificate,
// is confirmed within confirm_heartbeats + 2 cycles, ends on the next
// anchor and on HTTPS, and none is orphaned. Then the gateway restarts
// (same storage and instance) and loses no progress, and a second gateway
// sharing the storage signs a client confirmed through the first with next.
func TestFleetGatewayRotationWindowConfirmsEveryClient(t *testing.T) {
	const confirmHeartbeats = 3
	now := time.Now()
	// Progress reaches storage only when the configuration is unloaded, so
	// the restart and the second gateway see what the shutdown saved.
	l := newWindowLab(t, now.Add(-time.Hour), now.Add(time.Hour), "1h")
	l.gw = l.startWindowGateway(t, l.port, l.plainPort)

	f := l.windowFleet(t, 0.2, 512)
	startedOnPlaintext := f.Summary().OnPlaintext
	run := runFleet(t, f)
	n := int64(fleetClients())
	fetched, ok := run.waitFor(30*time.Second, func(s fleet.Summary) bool { return s.SyLinkUpdates >= s.Clients })
	if !ok {
		t.Fatalf("not every client fetched the rewritten settings within 30 s: %s", summaryLine(fetched))
	}
	// Cycles are counted in heartbeats the fleet actually ran: on a loaded
	// machine a heartbeat takes longer than its nominal interval.
	counts, ok := waitConfirmedCount(t, l.gw, n, time.Duration(confirmHeartbeats+2)*fleetCycle+20*time.Second)
	confirmed := run.f.Summary()
	cycles := float64(confirmed.Heartbeats-fetched.Heartbeats) / float64(n)
	t.Logf("%d of %d confirmed %.1f heartbeat cycles (%.1fs) after the last client fetched the settings: %+v",
		counts.Confirmed, n, cycles, confirmed.ElapsedSeconds-fetched.ElapsedSeconds, counts)
	if !ok || cycles > confirmHeartbeats+2 {
		t.Fatalf("%d of %d clients confirmed %.1f cycles after the last settings fetch, want all within %d", counts.Confirmed, n, cycles, confirmHeartbeats+2)
	}
	run.waitFor(2*fleetCycle, func(fleet.Summary) bool { return false })
	s := run.stop()
	t.Logf("rotation window through the gateway: %s", summaryLine(s))
	if s.Orphaned != 0 || s.EverOrphaned != 0 || s.SignatureFailures != 0 {
		t.Fatalf("the rotation orphaned clients or failed signatures: %s", summaryLine(s))
	}
	if startedOnPlaintext == 0 || s.Online != n || s.OnNewAnchor != n || s.OnPlaintext != 0 {
		t.Fatalf("want every client online, on the next anchor and off plaintext (%d started on it): %s", startedOnPlaintext, summaryLine(s))
	}
	if c := windowCounts(t, l.gw); c.Plaintext != 0 || c.Confirmed != n {
		t.Fatalf("the gateway counts %+v, want %d confirmed and none on plaintext", c, n)
	}
	// Inside the window the bridge passed the listed paths and refused the
	// plaintext clients' log uploads (they upload after a good heartbeat).
	passed := guardMetric(t, l.gw, `legacygate_plaintext_bridge_requests_total{reason="window_open",result="passed"}`)
	uploads := guardMetric(t, l.gw, `legacygate_plaintext_bridge_requests_total{reason="log_upload",result="refused"}`)
	t.Logf("bridge inside the window: passed %q, log uploads refused %q", passed, uploads)
	if passed == "" || uploads == "" {
		t.Fatalf("bridge inside the window: passed %q, log uploads refused %q; want both", passed, uploads)
	}

	// A client confirmed through this gateway, before the restart.
	host := registerThrough(t, l.gw.Client(t), "https://localhost:"+strconv.Itoa(l.port))
	l.confirmClient(t, l.gw, l.port, host)
	before := windowCounts(t, l.gw)

	t.Run("restart loses no progress", func(t *testing.T) {
		l.gw.Restart(t)
		after := windowCounts(t, l.gw)
		if after.Confirmed < before.Confirmed || after.Confirmed+after.AnchorFetched < before.Confirmed+before.AnchorFetched {
			t.Fatalf("after the restart %+v, before %+v: progress lost", after, before)
		}
		if p := l.profile(t, l.gw, l.port, host); !verifies(t, l.next.Cert, p) {
			t.Fatal("after the restart, a confirmed client's profile is not signed with the next key")
		}
	})

	t.Run("second gateway sharing storage agrees", func(t *testing.T) {
		port := harness.FreePort(t)
		b := l.startWindowGateway(t, port, harness.FreePort(t))
		if c := windowCounts(t, b); c.Confirmed < before.Confirmed {
			t.Fatalf("gateway B counts %+v, gateway A had %d confirmed", c, before.Confirmed)
		}
		if p := l.profile(t, b, port, host); !verifies(t, l.next.Cert, p) {
			t.Fatal("through B, the profile of a client confirmed through A is not signed with the next key")
		}
		other := registerThrough(t, b.Client(t), "https://localhost:"+strconv.Itoa(port))
		if p := l.profile(t, b, port, other); !verifies(t, l.current.Cert, p) {
			t.Fatal("through B, an unconfirmed client's profile is not signed with the current key")
		}
	})
}

// confirmClient fetches the settings and sends confirm heartbeats for host
// through the gateway gw listening on port.
func (l *windowLab) confirmClient(t *testing.T, gw *harness.Gateway, port int, host string) {
	t.Helper()
	c := gw.Client(t)
	base := "https://localhost:" + strconv.Itoa(port) + manager.SecarsPath + "?hostid=" + host + "&action="
	if r := guardGet(t, c, http.MethodGet, base+"sylink"); r.status != http.StatusOK || !verifies(t, l.current.Cert, r.body) {
		t.Fatalf("settings: %d, not signed with the current key", r.status)
	}
	for i := range 3 {
		if r := guardGet(t, c, http.MethodGet, base+"index"); r.status != http.StatusOK {
			t.Fatalf("heartbeat %d: %d %s", i, r.status, r.body)
		}
	}
}

// profile downloads host's profile through gw listening on port.
func (l *windowLab) profile(t *testing.T, gw *harness.Gateway, port int, host string) []byte {
	t.Helper()
	r := guardGet(t, gw.Client(t), http.MethodGet, "https://localhost:"+strconv.Itoa(port)+manager.SecarsPath+"?action=profile&hostid="+host)
	if r.status != http.StatusOK {
		t.Fatalf("profile of %s: %d %s", host, r.status, r.body)
	}
	return r.body
}

// TestFleetPlaintextOutsideTheWindowGetsOnlyTheMigration runs a fleet that
// starts entirely on the plaintext listener before the window opens: the
// bridge passes only the migration requests (heartbeat, settings and
// registration: a client without a HostId, or one the manager forgot, must
// register before it can be moved), refuses every profile and anything
// else, and every client ends on HTTPS with the current anchor, none
// orphaned (each is degraded once: its first profile download is refused).
func TestFleetPlaintextOutsideTheWindowGetsOnlyTheMigration(t *testing.T) {
	const orphanAfter = 3
	now := time.Now()
	l := newWindowLab(t, now.Add(time.Hour), now.Add(2*time.Hour), "200ms")
	l.registration = true
	l.gw = l.startWindowGateway(t, l.port, l.plainPort)
	run := runFleet(t, l.windowFleet(t, 1, 512))
	n := int64(fleetClients())
	started := time.Now()
	_, settled := run.waitFor(40*time.Second, func(s fleet.Summary) bool {
		return time.Since(started) >= time.Duration(orphanAfter+2)*fleetCycle && s.Online == n && s.OnPlaintext == 0
	})
	s := run.stop()
	t.Logf("plaintext fleet outside the window: %s", summaryLine(s))
	if !settled || s.Orphaned != 0 || s.EverOrphaned != 0 || s.SignatureFailures != 0 || s.OnPlaintext != 0 || s.OnNewAnchor != 0 {
		t.Fatalf("want every client moved to HTTPS on the current anchor, none orphaned: %s", summaryLine(s))
	}
	metric := func(result, reason string) string {
		return guardMetric(t, l.gw, fmt.Sprintf(`legacygate_plaintext_bridge_requests_total{reason=%q,result=%q}`, reason, result))
	}
	t.Logf("bridge: passed as migration %q, refused outside the window %q, passed as in a window %q",
		metric("passed", "migration"), metric("refused", "outside_window"), metric("passed", "window_open"))
	if got := metric("passed", "window_open"); got != "" {
		t.Fatalf("outside the window the bridge passed %s requests as if it were open", got)
	}
	if refused, _ := strconv.ParseInt(metric("refused", "outside_window"), 10, 64); refused < n {
		t.Fatalf("the bridge refused %d requests outside the window, want at least each client's profile (%d)", refused, n)
	}
}

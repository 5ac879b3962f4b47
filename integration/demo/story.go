package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/manager"
	"github.com/legacygate/legacygate/policyguard"
)

// The story's timing: heartbeats of about a second; each phase ends on what
// it measures (fleets online, direct clients orphaned, every client
// confirmed), bounded by these caps.
const (
	storyRandomize    = 500 * time.Millisecond
	storyImportAfter  = 20 * time.Second
	storyImportSettle = 25 * time.Second
	storyRotationMax  = 40 * time.Second
	storySteady       = 3 * time.Second
	storyPlaintext    = 0.2 // share of clients on the plain listener
	storyTLS10        = 0.2 // share of direct clients with a TLS 1.0 ceiling
	storyConfirm      = 3   // confirm_heartbeats, as examples/rotation.Caddyfile ships it
)

// storyResult is what the story measured.
type storyResult struct {
	direct    fleet.Summary // straight at the manager, end of the import phase
	gwImport  fleet.Summary // through the gateway, end of the import phase
	gwFinal   fleet.Summary // through the gateway, end of the window phase
	rotation  rotationStatus
	confirmed bool // every gateway client confirmed the next key
	elapsed   time.Duration
}

// ok says whether the story showed what it must: the direct fleet orphaned,
// none through the gateway, and the window confirming every client.
func (r *storyResult) ok() error {
	var bad []string
	if r.direct.Orphaned == 0 {
		bad = append(bad, "no client straight at the manager was orphaned (the story shows nothing)")
	}
	if r.gwImport.Orphaned != 0 || r.gwImport.EverOrphaned != 0 {
		bad = append(bad, fmt.Sprintf("clients through the gateway were orphaned (%d after the import, %d ever)",
			r.gwImport.Orphaned, r.gwImport.EverOrphaned))
	}
	if !r.rotationOK() {
		bad = append(bad, fmt.Sprintf("the window did not end with every client confirmed (%d of %d), none orphaned (%d, %d ever) and none on plaintext (%d)",
			r.rotation.Counts.Confirmed, r.gwFinal.Clients, r.gwFinal.Orphaned, r.gwFinal.EverOrphaned, r.gwFinal.OnPlaintext))
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("the story: %s", strings.Join(bad, "; "))
}

// rotationOK says whether the window phase ended with every gateway client
// confirmed, none orphaned at any point and none left on plaintext.
func (r *storyResult) rotationOK() bool {
	return r.confirmed && r.gwFinal.Orphaned == 0 && r.gwFinal.EverOrphaned == 0 && r.gwFinal.OnPlaintext == 0
}

// rotationStatus is the part of GET /legacygate/rotation the story prints.
type rotationStatus struct {
	Counts struct {
		Phase         string `json:"phase"`
		Tracked       int    `json:"tracked"`
		Pending       int    `json:"pending"`
		AnchorFetched int    `json:"anchor_fetched"`
		Confirmed     int    `json:"confirmed"`
		Plaintext     int    `json:"plaintext"`
	} `json:"counts"`
	ConfirmedPercent float64 `json:"confirmed_percent"`
	PlaintextClients int     `json:"plaintext_clients"`
}

// story is the fleet part of the demo: its own manager (with a next key
// prepared), the gateway reloaded for it, and two fleets.
type story struct {
	d          *demo
	clients    int
	mgr        *manager.Manager
	gwNext     *x509.Certificate
	plainPort  int
	adminAddr  string
	directSyL  []byte
	gatewaySyL []byte
}

// runStory runs the fleets and prints the phases and the table.
func (d *demo) runStory(ctx context.Context, clients int) (*storyResult, error) {
	begun := time.Now()
	s := &story{d: d, clients: clients}
	if err := s.start(); err != nil {
		return nil, err
	}
	d.storyMgr = s.mgr // the gateway keeps serving in front of it without --once
	d.managerURL = "https://" + s.mgr.Addrs().HTTPS
	r, err := s.run(ctx)
	if err != nil {
		return nil, err
	}
	r.elapsed = time.Since(begun)
	s.printTable(r)
	return r, nil
}

func (s *story) start() error {
	next, err := certs.New(certs.SHA1, "sepm.legacygate.test", 2048)
	if err != nil {
		return fmt.Errorf("making the manager's next key pair: %w", err)
	}
	mgr, err := manager.New(manager.Config{
		HTTPSAddr:   "127.0.0.1:0",
		HTTPAddr:    "127.0.0.1:0",
		TLSMin:      tls.VersionTLS10,
		TLSMax:      tls.VersionTLS10,
		Cert:        certs.SHA1,
		ProfileSize: 16 << 10,
		MaxHosts:    4 * s.clients,
		Next:        next,
	})
	if err != nil {
		return fmt.Errorf("creating the story's manager: %w", err)
	}
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("starting the story's manager: %w", err)
	}
	s.mgr = mgr
	if err := s.writeKeys(next); err != nil {
		mgr.Close()
		return err
	}
	if err := s.buildSyLinks(); err != nil {
		mgr.Close()
		return err
	}
	now := time.Now()
	if err := s.loadGateway(now.Add(time.Hour), now.Add(2*time.Hour)); err != nil {
		mgr.Close()
		return err
	}
	return nil
}

// writeKeys writes the manager's current and next certificates (the gateway
// pins both before the import) and the gateway's next signing key.
func (s *story) writeKeys(mgrNext *certs.Pair) error {
	dir := s.d.dir
	files := map[string][]byte{
		"story-manager.crt":      s.mgr.Pair().CertPEM(),
		"story-manager-next.crt": mgrNext.CertPEM(),
	}
	key, cert, err := policyguard.GenerateSigningKey(2048, "legacygate demo signing (next)")
	if err != nil {
		return fmt.Errorf("generating the gateway's next signing key: %w", err)
	}
	keyPEM, certPEM, err := policyguard.EncodeKeyPair(key, cert)
	if err != nil {
		return fmt.Errorf("encoding the gateway's next signing key: %w", err)
	}
	files["gateway-next.key"], files["gateway-next.crt"] = keyPEM, certPEM
	s.gwNext = cert
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}

// buildSyLinks makes the two starting lists: the manager itself, trusting
// its certificate, and the gateway, trusting the gateway's.
func (s *story) buildSyLinks() error {
	var err error
	if s.plainPort, err = freePort(); err != nil {
		return err
	}
	serial, err := s.syLinkSerial()
	if err != nil {
		return err
	}
	mgrHTTPS, mgrHTTP := portOf(s.mgr.Addrs().HTTPS), portOf(s.mgr.Addrs().HTTP)
	if s.directSyL, err = syLinkFor(serial, mgrHTTPS, mgrHTTP, s.mgr.SigningCert()); err != nil {
		return err
	}
	s.gatewaySyL, err = syLinkFor(serial, s.d.gwPort, s.plainPort, s.d.gwCert)
	return err
}

// syLinkSerial asks the manager for the serial of the settings it serves
// now, as an installed client's SyLink.xml carries it: the fleets then
// fetch settings only when the manager publishes new ones.
func (s *story) syLinkSerial() (string, error) {
	base := "http://" + s.mgr.Addrs().HTTP
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.PostForm(base+manager.SecregPath+"?action=register", url.Values{"hostname": {"demo-serial"}})
	if err != nil {
		return "", fmt.Errorf("registering with the story's manager: %w", err)
	}
	var reg struct {
		HostID string `xml:"HostId,attr"`
	}
	err = xml.NewDecoder(resp.Body).Decode(&reg)
	resp.Body.Close()
	if err != nil || reg.HostID == "" {
		return "", fmt.Errorf("registering with the story's manager: no HostId (%v)", err)
	}
	resp, err = client.Get(base + manager.SecarsPath + "?action=index&hostid=" + reg.HostID)
	if err != nil {
		return "", fmt.Errorf("the story's manager index: %w", err)
	}
	defer resp.Body.Close()
	var index struct {
		SyLink struct {
			Serial string `xml:"Serial,attr"`
		} `xml:"SyLink"`
	}
	if err := xml.NewDecoder(resp.Body).Decode(&index); err != nil || index.SyLink.Serial == "" {
		return "", fmt.Errorf("the story's manager index: no SyLink serial (%v)", err)
	}
	return index.SyLink.Serial, nil
}

func syLinkFor(serial string, httpsPort, httpPort int, cert *x509.Certificate) ([]byte, error) {
	doc, err := fleet.BuildSyLink(&fleet.Settings{Serial: serial, Blocks: []fleet.PriorityBlock{{Name: "Priority1",
		Servers: []fleet.Server{{Address: "127.0.0.1", HTTPSPort: httpsPort, HTTPPort: httpPort,
			VerifySignatures: true, Cert: cert}}}}})
	if err != nil {
		return nil, fmt.Errorf("building a starting SyLink: %w", err)
	}
	return doc, nil
}

func portOf(addr string) int {
	var port int
	fmt.Sscanf(addr[strings.LastIndex(addr, ":")+1:], "%d", &port)
	return port
}

// loadGateway reloads the gateway with examples/rotation.Caddyfile: both
// manager pins, the rotation window [windowStart, windowEnd), the
// 8014-style bridge on plainPort, and heartbeat limits for a fleet that
// heartbeats every storyInterval instead of every few minutes.
func (s *story) loadGateway(windowStart, windowEnd time.Time) error {
	s.adminAddr = s.d.gw.admin
	dir := s.d.dir
	vars := s.d.sepmVars(s.mgr.Addrs().HTTPS, s.mgr.Pin()+" "+certs.Pin(s.mgr.NextCert()),
		filepath.Join(dir, "story-manager.crt"), filepath.Join(dir, "story-manager-next.crt"))
	for name, value := range map[string]string{
		"LEGACYGATE_NEXT_SIGNING_KEY":      quote(filepath.Join(dir, "gateway-next.key")),
		"LEGACYGATE_NEXT_SIGNING_CERT":     quote(filepath.Join(dir, "gateway-next.crt")),
		"LEGACYGATE_WINDOW_START":          windowStart.UTC().Format(time.RFC3339),
		"LEGACYGATE_WINDOW_END":            windowEnd.UTC().Format(time.RFC3339),
		"LEGACYGATE_SITE_HOST":             "127.0.0.1",
		"LEGACYGATE_SITE_PORT":             strconv.Itoa(s.d.gwPort),
		"LEGACYGATE_PLAIN_PORT":            strconv.Itoa(s.plainPort),
		"LEGACYGATE_HEARTBEAT_RATE":        "10/1s",
		"LEGACYGATE_HEARTBEAT_BURST":       "20",
		"LEGACYGATE_HEARTBEAT_GLOBAL_RATE": "100000/1s",
	} {
		vars[name] = value
	}
	return s.d.gw.load(configRotation, vars, filepath.Join(dir, "Caddyfile.story"))
}

// newFleets builds the same fleet twice: straight at the manager and
// through the gateway.
func (s *story) newFleets() (direct, gateway *fleet.Fleet, err error) {
	base := fleet.Config{
		Count: s.clients, Interval: storyInterval, Randomize: storyRandomize,
		PlaintextShare: storyPlaintext, Seed: 7,
	}
	dc := base
	dc.SyLink, dc.TLS10Share = s.directSyL, storyTLS10
	if direct, err = fleet.New(dc); err != nil {
		return nil, nil, fmt.Errorf("the direct fleet: %w", err)
	}
	gc := base
	gc.SyLink = s.gatewaySyL
	if gateway, err = fleet.New(gc); err != nil {
		return nil, nil, fmt.Errorf("the gateway fleet: %w", err)
	}
	return direct, gateway, nil
}

func (s *story) run(ctx context.Context) (*storyResult, error) {
	d := s.d
	direct, gateway, err := s.newFleets()
	if err != nil {
		return nil, err
	}
	d.printf("\nThe story: %d clients twice, heartbeats every %v + up to %v, %.0f%% of them on the plain listener.\n",
		s.clients, storyInterval, storyRandomize, storyPlaintext*100)
	d.printf("  direct   straight at the manager %s (plain: %s); %.0f%% with a TLS 1.0 ceiling\n",
		s.mgr.Addrs().HTTPS, s.mgr.Addrs().HTTP, storyTLS10*100)
	d.printf("  gateway  through legacygate %s (plain: 127.0.0.1:%d, plaintext_bridge); every client offers TLS 1.2,\n",
		d.gatewayURL, s.plainPort)
	d.printf("           since the gateway's front refuses TLS 1.0 (a TLS 1.0-only client can only use the plain listener)\n")
	d.printf("  the gateway pins the manager's current and next keys (%s, %s)\n", s.mgr.Pin(), certs.Pin(s.mgr.NextCert()))
	d.printf("  and has a rotation window to its next signing key (%s) configured for later, confirm_heartbeats %d\n\n",
		policyguard.Fingerprint(s.gwNext)[:16], storyConfirm)

	directCtx, stopDirect := context.WithCancel(ctx)
	gatewayCtx, stopGateway := context.WithCancel(ctx)
	defer stopDirect()
	defer stopGateway()
	var directDone, gatewayDone sync.WaitGroup
	var directEnd, gatewayEnd fleet.Summary
	directDone.Go(func() { directEnd = direct.Run(directCtx) })
	gatewayDone.Go(func() { gatewayEnd = gateway.Run(gatewayCtx) })
	defer gatewayDone.Wait()

	d.printf("Phase 1: the manager switches to its new key (import, planned; pinned in the gateway beforehand)\n")
	if !waitOnline(ctx, direct, gateway) {
		return nil, ctx.Err()
	}
	before := gateway.Summary()
	s.progress("before the import", direct.Summary(), before)
	d.printf("           (outside a window the gateway's plain listener passes only registration, the heartbeat and the\n")
	d.printf("           migration settings: %d gateway clients were degraded at some point, %d are on plaintext now)\n",
		before.EverDegraded, before.OnPlaintext)
	if err := s.mgr.Import(); err != nil {
		return nil, fmt.Errorf("the manager's import: %w", err)
	}
	d.printf("  %5.1fs  the manager imported its next key: pin now %s\n", since(direct), s.mgr.Pin())
	if !s.waitOrphans(ctx, direct) {
		return nil, ctx.Err()
	}
	r := &storyResult{gwImport: gateway.Summary()}
	stopDirect()
	directDone.Wait()
	r.direct = directEnd
	s.progress("after the import", r.direct, r.gwImport)

	d.printf("\nPhase 2: the gateway's rotation window opens (reload: window from now) and moves every client to its next signing key\n")
	now := time.Now()
	if err := s.loadGateway(now.Add(-time.Second), now.Add(time.Hour)); err != nil {
		return nil, fmt.Errorf("opening the window: %w", err)
	}
	s.runWindow(ctx, gateway, r)
	stopGateway()
	gatewayDone.Wait()
	r.gwFinal = gatewayEnd
	return r, nil
}

// waitOnline waits until nine clients in ten of each fleet are online, or
// storyImportAfter, so the import hits running fleets.
func waitOnline(ctx context.Context, fleets ...*fleet.Fleet) bool {
	deadline := time.Now().Add(storyImportAfter)
	for time.Now().Before(deadline) {
		if !sleepCtx(ctx, time.Second) {
			return false
		}
		ready := true
		for _, f := range fleets {
			if sum := f.Summary(); sum.Online*10 < sum.Clients*9 {
				ready = false
			}
		}
		if ready {
			return true
		}
	}
	return true
}

// waitOrphans waits until most direct clients are orphaned (the fleet's
// three heartbeats in a row), or storyImportSettle after the import.
func (s *story) waitOrphans(ctx context.Context, direct *fleet.Fleet) bool {
	deadline := time.Now().Add(storyImportSettle)
	for time.Now().Before(deadline) {
		if !sleepCtx(ctx, time.Second) {
			return false
		}
		if sum := direct.Summary(); sum.Orphaned*10 >= sum.Clients*9 {
			return true
		}
	}
	return true
}

// runWindow lets the gateway fleet run until every client confirmed the next
// key (then a few more heartbeats), or storyRotationMax.
func (s *story) runWindow(ctx context.Context, gateway *fleet.Fleet, r *storyResult) {
	deadline := time.Now().Add(storyRotationMax)
	var steadyUntil time.Time
	for time.Now().Before(deadline) {
		if !sleepCtx(ctx, time.Second) {
			return
		}
		st, err := s.rotationStatus(ctx)
		if err != nil {
			s.d.printf("  asking the admin API: %v\n", err)
			continue
		}
		r.rotation = st
		sum := gateway.Summary()
		s.d.printf("  %5.1fs  window %s: %d confirmed, %d fetched the anchor, %d pending; on plaintext %d; orphaned %d\n",
			since(gateway), st.Counts.Phase, st.Counts.Confirmed, st.Counts.AnchorFetched, st.Counts.Pending,
			sum.OnPlaintext, sum.Orphaned)
		if st.Counts.Confirmed >= s.clients && sum.OnPlaintext == 0 && sum.OnNewAnchor == int64(s.clients) {
			r.confirmed = true
			if steadyUntil.IsZero() {
				steadyUntil = time.Now().Add(storySteady)
			}
		}
		if !steadyUntil.IsZero() && time.Now().After(steadyUntil) {
			return
		}
	}
}

func (s *story) progress(when string, direct, gateway fleet.Summary) {
	s.d.printf("  %5.1fs  %s:\n", gateway.ElapsedSeconds, when)
	for _, side := range []struct {
		name string
		sum  fleet.Summary
	}{{"direct", direct}, {"gateway", gateway}} {
		s.d.printf("           %-8s %4d online, %4d failing, %4d orphaned, %4d degraded (%d ever), %4d on plaintext\n",
			side.name, side.sum.Online, side.sum.Failing, side.sum.Orphaned, side.sum.Degraded, side.sum.EverDegraded, side.sum.OnPlaintext)
	}
}

func since(f *fleet.Fleet) float64 { return f.Summary().ElapsedSeconds }

// rotationStatus asks the gateway's admin API, as `legacygate rotation status` does.
func (s *story) rotationStatus(ctx context.Context) (rotationStatus, error) {
	var st rotationStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.adminAddr+"/legacygate/rotation?size=1", nil)
	if err != nil {
		return st, fmt.Errorf("building the admin request: %w", err)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return st, fmt.Errorf("GET /legacygate/rotation: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /legacygate/rotation: status %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("GET /legacygate/rotation: %w", err)
	}
	return st, nil
}

// printTable prints the measured figures side by side.
func (s *story) printTable(r *storyResult) {
	d := s.d
	rows := []struct {
		name string
		get  func(fleet.Summary) int64
	}{
		{"clients", func(x fleet.Summary) int64 { return x.Clients }},
		{"online", func(x fleet.Summary) int64 { return x.Online }},
		{"orphaned", func(x fleet.Summary) int64 { return x.Orphaned }},
		{"degraded", func(x fleet.Summary) int64 { return x.Degraded }},
		{"on_new_anchor", func(x fleet.Summary) int64 { return x.OnNewAnchor }},
		{"on_plaintext", func(x fleet.Summary) int64 { return x.OnPlaintext }},
		{"heartbeats", func(x fleet.Summary) int64 { return x.Heartbeats }},
		{"rate_limited", func(x fleet.Summary) int64 { return x.RateLimited }},
		{"signature_failures", func(x fleet.Summary) int64 { return x.SignatureFailures }},
	}
	d.printf("\nMeasured (fleet summaries):\n")
	d.printf("  %-20s %22s %22s %22s\n", "", "direct to manager", "through legacygate", "legacygate, window")
	d.printf("  %-20s %22s %22s %22s\n", "", "(after the import)", "(after the import)", "(end of phase 2)")
	for _, row := range rows {
		d.printf("  %-20s %22d %22d %22d\n", row.name, row.get(r.direct), row.get(r.gwImport), row.get(r.gwFinal))
	}
	d.printf("  %-20s %22s %22s %22s\n", "confirmed (admin API)", "-", "-",
		fmt.Sprintf("%d of %d", r.rotation.Counts.Confirmed, r.rotation.Counts.Tracked))
	verdict := "every client confirmed, none orphaned, none left on plaintext"
	if !r.rotationOK() {
		verdict = "NOT every client confirmed without orphans and off plaintext"
	}
	d.printf("\nPhase 2 measured: %s.\n", verdict)
	d.printf("\nThe story took %.1fs.\n", r.elapsed.Seconds())
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

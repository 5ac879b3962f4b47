package e2e

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beevik/etree"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/manager"
	"github.com/legacygate/legacygate/policyguard"
)

// rotationLab is a SEPM emulator behind a gateway running a rotation
// window, with an HTTPS site and a plaintext (8014-style) site.
type rotationLab struct {
	dir               string
	persist           string // the rotation's persist_interval; default 200ms
	mgr               *manager.Manager
	gw                *harness.Gateway
	https, plain      string // base URLs
	current, next     *certs.Pair
	httpsPort, plainP int
}

// startRotationLab runs the lab with the window [start, end).
func startRotationLab(t *testing.T, start, end time.Time) *rotationLab {
	t.Helper()
	l := newRotationLab(t)
	l.startGateway(t, start, end, "")
	return l
}

// newRotationLab starts the manager and makes the gateway's two keys.
func newRotationLab(t *testing.T) *rotationLab {
	t.Helper()
	l := &rotationLab{dir: t.TempDir()}
	mgr, err := manager.New(manager.Config{HTTPSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ProfileSize: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	l.mgr = mgr
	if l.current, err = certs.New(certs.Modern, "gateway-2019.legacygate.test", 2048); err != nil {
		t.Fatal(err)
	}
	if l.next, err = certs.New(certs.Modern, "gateway-2026.legacygate.test", 2048); err != nil {
		t.Fatal(err)
	}
	return l
}

// startGateway starts a gateway for the lab's manager and keys with the
// window [start, end); storage, if set, is the app's shared storage folder.
func (l *rotationLab) startGateway(t *testing.T, start, end time.Time, storage string) {
	t.Helper()
	curCert, curKey, err := l.current.WriteFiles(l.dir, "current")
	if err != nil {
		t.Fatal(err)
	}
	nextCert, nextKey, err := l.next.WriteFiles(l.dir, "next")
	if err != nil {
		t.Fatal(err)
	}
	mgrCert, _, err := l.mgr.Pair().WriteFiles(l.dir, "manager")
	if err != nil {
		t.Fatal(err)
	}
	if storage != "" {
		storage = "storage file_system " + storage
	}
	persist := l.persist
	if persist == "" {
		persist = "200ms"
	}
	l.httpsPort, l.plainP = harness.FreePort(t), harness.FreePort(t)
	guard := func(dropHTTPOnly string) string {
		return fmt.Sprintf(`policy_guard /secars/secars.dll {
		upstream_cert %s
		roots Profile ServerSettings
		rewrite {
			roots ServerSettings
			addresses localhost
			https_port %d
			%s
		}
	}`, mgrCert, l.httpsPort, dropHTTPOnly)
	}
	caddyfile := fmt.Sprintf(`{
	grace_period 1s
	legacygate {
		signing_key current %s %s
		signing_key next %s %s
		client_id {query.hostid}
		%s
		rotation {
			window %s %s
			confirm_heartbeats 3
			grace 1h
			persist_interval %s
		}
	}
}

localhost:%d {
	tls internal
	%s
	reverse_proxy http://%s
}

http://localhost:%d {
	plaintext_bridge {
		allow /secars/secars.dll /secreg/secreg.dll
		migration /secars/secars.dll action=index
		migration /secars/secars.dll action=sylink
		outside_window migrate
	}
	%s
	reverse_proxy http://%s
}
`, curKey, curCert, nextKey, nextCert, storage, start.UTC().Format(time.RFC3339), end.UTC().Format(time.RFC3339), persist,
		l.httpsPort, guard(""), l.mgr.Addrs().HTTP, l.plainP, guard("drop_http_only"), l.mgr.Addrs().HTTP)
	l.gw = harness.StartGateway(t, caddyfile)
	l.gw.WaitCertificate(t, "localhost")
	l.https = "https://localhost:" + strconv.Itoa(l.httpsPort)
	l.plain = "http://localhost:" + strconv.Itoa(l.plainP)
}

// register registers a client with the manager directly and returns its id.
func (l *rotationLab) register(t *testing.T) string {
	t.Helper()
	form := url.Values{"hostname": {"pc-0001"}}
	resp, err := http.PostForm("http://"+l.mgr.Addrs().HTTP+manager.SecregPath+"?action=register", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	doc := etree.NewDocument()
	if _, err := doc.ReadFrom(resp.Body); err != nil || doc.Root() == nil {
		t.Fatalf("registration answer: %v", err)
	}
	return doc.Root().SelectAttrValue("HostId", "")
}

func (l *rotationLab) get(t *testing.T, c *http.Client, base, action, host string) guardResponse {
	t.Helper()
	return guardGet(t, c, "GET", base+manager.SecarsPath+"?action="+action+"&hostid="+host)
}

// verifies reports whether doc verifies with cert alone.
func verifies(t *testing.T, cert *x509.Certificate, doc []byte) bool {
	t.Helper()
	v, err := policyguard.NewVerifier([]*x509.Certificate{cert}, policyguard.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(doc)
	return err == nil
}

func (l *rotationLab) status(t *testing.T) map[string]any {
	t.Helper()
	r := guardGet(t, &http.Client{Timeout: 5 * time.Second}, "GET", "http://"+l.gw.AdminAddr+"/legacygate/rotation")
	if r.status != http.StatusOK {
		t.Fatalf("admin /legacygate/rotation: %d %s", r.status, r.body)
	}
	var st map[string]any
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatalf("admin /legacygate/rotation: %v\n%s", err, r.body)
	}
	return st
}

func TestRotationThroughCaddyMovesAClientToTheNextKeyAfterItConfirms(t *testing.T) {
	now := time.Now()
	l := startRotationLab(t, now.Add(-time.Hour), now.Add(time.Hour))
	c := l.gw.Client(t)
	host := l.register(t)

	// The settings document: rewritten, signed with the key the client
	// trusts now, carrying the next certificate.
	settings := l.get(t, c, l.https, "sylink", host)
	if settings.status != http.StatusOK {
		t.Fatalf("settings: %d %s", settings.status, settings.body)
	}
	if !verifies(t, l.current.Cert, settings.body) {
		t.Fatal("the settings document does not verify with the current gateway certificate")
	}
	if verifies(t, l.next.Cert, settings.body) || verifies(t, l.mgr.SigningCert(), settings.body) {
		t.Fatal("the settings document verifies with a key other than the current one")
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(settings.body); err != nil {
		t.Fatal(err)
	}
	servers := doc.FindElements("//Server")
	if len(servers) == 0 {
		t.Fatalf("no Server in the settings:\n%s", settings.body)
	}
	wantCert := base64.StdEncoding.EncodeToString(l.next.Cert.Raw)
	for _, s := range servers {
		if a, p := s.SelectAttrValue("Address", ""), s.SelectAttrValue("HttpsPort", ""); a != "localhost" || p != strconv.Itoa(l.httpsPort) {
			t.Errorf("server %s:%s, want localhost:%d", a, p, l.httpsPort)
		}
		if got := strings.Join(strings.Fields(s.SelectElement("ServerCertificate").Text()), ""); got != wantCert {
			t.Error("the embedded certificate is not the next gateway certificate")
		}
	}

	// Between the anchor fetch and its confirmation the client may trust
	// either key: its profile is held (503, Retry-After), never signed.
	for i := range 3 {
		if p := l.get(t, c, l.https, "profile", host); p.status != http.StatusServiceUnavailable || p.header.Get("Retry-After") == "" {
			t.Fatalf("profile after %d heartbeats: status %d (Retry-After %q), want 503 with Retry-After", i, p.status, p.header.Get("Retry-After"))
		}
		if r := l.get(t, c, l.https, "index", host); r.status != http.StatusOK {
			t.Fatalf("heartbeat %d: %d %s", i, r.status, r.body)
		}
	}
	profile := l.get(t, c, l.https, "profile", host)
	if profile.status != http.StatusOK || !verifies(t, l.next.Cert, profile.body) {
		t.Fatalf("profile after the anchor fetch and 3 heartbeats: status %d, not signed with the next key", profile.status)
	}
	other := l.register(t)
	l.get(t, c, l.https, "index", other)
	if p := l.get(t, c, l.https, "profile", other); !verifies(t, l.current.Cert, p.body) {
		t.Fatal("an unconfirmed client's profile is not signed with the current key")
	}

	st := l.status(t)
	counts := st["counts"].(map[string]any)
	if counts["confirmed"].(float64) != 1 || counts["phase"] != "open" {
		t.Fatalf("admin counts %v, want 1 confirmed in phase open", counts)
	}

	out, errOut, err := harness.Run(t, "rotation", "status", "--address", l.gw.AdminAddr)
	if err != nil {
		t.Fatalf("rotation status: %v\n%s", err, errOut)
	}
	for _, want := range []string{"phase open", "50.0% confirmed (1 of 2)", "Stragglers", other} {
		if !strings.Contains(out, want) {
			t.Errorf("rotation status output lacks %q:\n%s", want, out)
		}
	}
	jsonOut, _, err := harness.Run(t, "rotation", "status", "--address", l.gw.AdminAddr, "--json")
	if err != nil || !json.Valid([]byte(jsonOut)) {
		t.Fatalf("rotation status --json: %v\n%s", err, jsonOut)
	}
}

func TestRotationThroughCaddyPlaintextPassesOnlyListedPathsInTheWindow(t *testing.T) {
	now := time.Now()
	l := startRotationLab(t, now.Add(-time.Hour), now.Add(time.Hour))
	c := &http.Client{Timeout: 10 * time.Second}
	host := l.register(t)
	tests := []struct {
		name   string
		method string
		target string
		status int
	}{
		{"heartbeat", "GET", manager.SecarsPath + "?action=index&hostid=" + host, http.StatusOK},
		{"profile", "GET", manager.SecarsPath + "?action=profile&hostid=" + host, http.StatusOK},
		{"log upload", "POST", manager.SecarsPath + "?action=log&hostid=" + host, http.StatusForbidden},
		{"unlisted path", "GET", "/reporting/index.php", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := guardGet(t, c, tt.method, l.plain+tt.target)
			if r.status != tt.status {
				t.Fatalf("%s %s: %d, want %d", tt.method, tt.target, r.status, tt.status)
			}
		})
	}
	if got := l.mgr.Requests(manager.CountLog); got != 0 {
		t.Fatalf("the manager received %d log uploads over plaintext", got)
	}
	if st := l.status(t); st["plaintext_clients"].(float64) != 1 {
		t.Fatalf("plaintext_clients %v, want 1", st["plaintext_clients"])
	}
	if got := guardMetric(t, l.gw, `legacygate_plaintext_bridge_requests_total{reason="log_upload",result="refused"}`); got != "1" {
		t.Errorf("log upload refusals counted %q, want 1", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for guardMetric(t, l.gw, "legacygate_rotation_plaintext_clients") != "1" {
		if time.Now().After(deadline) {
			t.Fatal("the legacygate_rotation_plaintext_clients gauge never reached 1")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRotationThroughCaddyPlaintextOutsideTheWindowServesOnlyTheMigration(t *testing.T) {
	now := time.Now()
	l := startRotationLab(t, now.Add(24*time.Hour), now.Add(48*time.Hour))
	c := &http.Client{Timeout: 10 * time.Second}
	host := l.register(t)

	settings := l.get(t, c, l.plain, "sylink", host)
	if settings.status != http.StatusOK || !verifies(t, l.current.Cert, settings.body) {
		t.Fatalf("migration document: status %d, not signed with the current key:\n%s", settings.status, settings.body)
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(settings.body); err != nil {
		t.Fatal(err)
	}
	for _, s := range doc.FindElements("//Server") {
		if p := s.SelectAttrValue("HttpsPort", ""); p != strconv.Itoa(l.httpsPort) {
			t.Errorf("the migration document keeps a server without the gateway's HTTPS port: %q", p)
		}
	}
	profile := l.get(t, c, l.plain, "profile", host)
	if profile.status != http.StatusUpgradeRequired || profile.header.Get("Upgrade") != "TLS/1.2" {
		t.Fatalf("profile over plaintext outside the window: %d (Upgrade %q), want 426 with Upgrade TLS/1.2",
			profile.status, profile.header.Get("Upgrade"))
	}
	if got := l.mgr.Requests(manager.CountProfile); got != 0 {
		t.Fatalf("the manager served %d profiles over plaintext outside the window", got)
	}
}

// confirmThrough fetches the settings and sends three heartbeats through
// the lab's current gateway.
func (l *rotationLab) confirmThrough(t *testing.T, host string) {
	t.Helper()
	c := l.gw.Client(t)
	if r := l.get(t, c, l.https, "sylink", host); r.status != http.StatusOK {
		t.Fatalf("settings: %d %s", r.status, r.body)
	}
	for i := range 3 {
		if r := l.get(t, c, l.https, "index", host); r.status != http.StatusOK {
			t.Fatalf("heartbeat %d: %d %s", i, r.status, r.body)
		}
	}
}

func TestRotationThroughCaddyTwoGatewaysSharingStorageAgree(t *testing.T) {
	now := time.Now()
	shared := t.TempDir()
	a := newRotationLab(t)
	a.startGateway(t, now.Add(-time.Hour), now.Add(time.Hour), shared)
	b := &rotationLab{dir: a.dir, mgr: a.mgr, current: a.current, next: a.next}
	b.startGateway(t, now.Add(-time.Hour), now.Add(time.Hour), shared)

	host := a.register(t)
	a.confirmThrough(t, host)
	if p := a.get(t, a.gw.Client(t), a.https, "profile", host); !verifies(t, a.next.Cert, p.body) {
		t.Fatal("through A: the confirmed client's profile is not signed with the next key")
	}
	c := b.gw.Client(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		p := b.get(t, c, b.https, "profile", host)
		if verifies(t, b.next.Cert, p.body) {
			break
		}
		// Until B has read all of A's progress it may see the client
		// between fetching the next certificate and confirming it: a hold
		// (503, Retry-After) is then the safe answer. Anything else must
		// still verify with the current key.
		held := p.status == http.StatusServiceUnavailable && p.header.Get("Retry-After") != ""
		if (!held && !verifies(t, b.current.Cert, p.body)) || time.Now().After(deadline) {
			t.Fatalf("through B: status %d, the profile of a client confirmed through A is not signed with the next key", p.status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRotationThroughCaddyRestartLosesNoProgress(t *testing.T) {
	now := time.Now()
	shared := t.TempDir()
	l := newRotationLab(t)
	l.persist = "1h" // only the save at shutdown can carry the progress over
	l.startGateway(t, now.Add(-time.Hour), now.Add(time.Hour), shared)
	host := l.register(t)
	l.confirmThrough(t, host)
	// Caddy's stop unloads the configuration (the app saves) before it exits;
	// the answer may be cut by the exit.
	_, _, _ = harness.Run(t, "stop", "--address", l.gw.AdminAddr)
	waitAdminGone(t, l.gw.AdminAddr)

	l.startGateway(t, now.Add(-time.Hour), now.Add(time.Hour), shared)
	if p := l.get(t, l.gw.Client(t), l.https, "profile", host); !verifies(t, l.next.Cert, p.body) {
		t.Fatalf("after the restart: status %d, the confirmed client's profile is not signed with the next key", p.status)
	}
}

// waitAdminGone waits (at most 10 s) until nothing answers on addr.
func waitAdminGone(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatalf("the gateway at %s did not stop", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/manager"
)

// reloadCaddyfile is the full chain with two limiters: the fleet's (generous:
// its clients must never be limited) and the probe's (one request per hour,
// so a limited probe stays limited). status and extra are what the reload
// changes; neither is part of a limiter's identity.
func reloadCaddyfile(port int, k *guardKeys, m *manager.Manager, managerCert, status, extra string) string {
	return fmt.Sprintf(`{
	grace_period 2s
}

localhost:%d {
	tls internal
	%s
	@probe query hostid=probe
	@fleet {
		path /secars/secars.dll
		not query hostid=probe
	}
	heartbeat_limit @probe {
		key {query.hostid}
		rate 1/1h
		burst 1
		status %s
	}
	heartbeat_limit @fleet {
		key {query.hostid} {client_ip}
		rate 50/1s
		burst 50
	}
	policy_guard /secars/secars.dll {
		upstream_cert %s
		signing_key %s %s
		roots Profile ServerSettings
		allow_sha1
	}
	reverse_proxy %s {
		transport legacy_tls {
			pin %s
			min_version tls1.0
			tls_server_name sepm.legacygate.test
		}
	}
}
`, port, extra, status, managerCert, k.gatewayKeyFile, k.gatewayCertFile, m.Addrs().HTTPS, m.Pin())
}

// reloadFleet is a fleet whose settings list only the gateway, at the
// manager's current settings serial, so the clients keep heartbeating
// through the gateway instead of adopting the manager's own list. The
// address is a name, so the clients send the SNI the internal certificate
// is issued for.
func reloadFleet(t *testing.T, m *manager.Manager, port int, trust *certs.Pair) *fleet.Fleet {
	t.Helper()
	resp, err := http.PostForm("http://"+m.Addrs().HTTP+"/secreg/secreg.dll?action=register", url.Values{"hostname": {"serial-probe"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	host := regexp.MustCompile(`HostId="([0-9A-Fa-f]+)"`).FindSubmatch(body)
	if host == nil {
		t.Fatalf("registration answered %q", body)
	}
	resp, err = http.Get("http://" + m.Addrs().HTTP + "/secars/secars.dll?action=index&hostid=" + string(host[1]))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	serial := regexp.MustCompile(`<SyLink Serial="([^"]+)"`).FindSubmatch(body)
	if serial == nil {
		t.Fatalf("index without a SyLink serial: %q", body)
	}
	sylink, err := fleet.BuildSyLink(&fleet.Settings{Serial: string(serial[1]), Blocks: []fleet.PriorityBlock{{
		Name:    "Priority1",
		Servers: []fleet.Server{{Address: "localhost", HTTPSPort: port, VerifySignatures: true, Cert: trust.Cert}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.New(fleet.Config{Count: 200, SyLink: sylink, Interval: 200 * time.Millisecond,
		Randomize: 300 * time.Millisecond, Concurrency: 64, Seed: 7, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestReloadUnderLoadLosesNoRequestAndKeepsLimiterState(t *testing.T) {
	k := newGuardKeys(t)
	m, err := manager.New(manager.Config{
		HTTPSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		TLSMin: tls.VersionTLS10, TLSMax: tls.VersionTLS10, Cert: certs.SHA1, Sign: manager.SignRSASHA1,
		CommonName: "sepm.legacygate.test", ProfileSize: 16 << 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	managerCert, _, err := m.Pair().WriteFiles(t.TempDir(), "manager")
	if err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	g := harness.StartGateway(t, reloadCaddyfile(port, k, m, managerCert, "429", ""))
	g.WaitCertificate(t, "localhost")
	c := g.Client(t)
	probe := fmt.Sprintf("https://localhost:%d/secars/secars.dll?action=index&hostid=probe", port)

	// The probe spends its one token (the manager answers 400: unknown
	// host) and is limited from then on.
	if r := guardGet(t, c, "GET", probe); r.status != http.StatusBadRequest {
		t.Fatalf("first probe: status %d, want the manager's 400", r.status)
	}
	if r := guardGet(t, c, "GET", probe); r.status != http.StatusTooManyRequests {
		t.Fatalf("second probe: status %d, want 429", r.status)
	}

	f := reloadFleet(t, m, port, k.gateway)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	var summary fleet.Summary
	var wg sync.WaitGroup
	wg.Go(func() { summary = f.Run(ctx) })

	time.Sleep(3 * time.Second) // the fleet is heartbeating
	before := f.Summary().Heartbeats
	g.Reload(t, reloadCaddyfile(port, k, m, managerCert, "503", "header X-Gateway-Config reloaded"))

	// Right after the reload the new configuration answers (its header, its
	// status), and the probe is still limited: its bucket survived.
	r := guardGet(t, c, "GET", probe)
	if r.status != http.StatusServiceUnavailable {
		t.Errorf("probe right after the reload: status %d, want 503 (still limited, under the new status)", r.status)
	}
	if r.header.Get("X-Gateway-Config") != "reloaded" {
		t.Errorf("probe right after the reload: headers %v lack the new configuration's header", r.header)
	}
	wg.Wait()

	if summary.Heartbeats-before < 200 {
		t.Errorf("only %d heartbeats after the reload: the fleet stalled", summary.Heartbeats-before)
	}
	if summary.Online != 200 || summary.Orphaned != 0 || summary.EverOrphaned != 0 || summary.Degraded != 0 || summary.EverDegraded != 0 || summary.RateLimited != 0 {
		t.Errorf("fleet across the reload: %+v", summary)
	}
	var errs []string
	for kind, n := range summary.Errors {
		if n != 0 {
			errs = append(errs, fmt.Sprintf("%s=%d", kind, n))
		}
	}
	if len(errs) > 0 {
		t.Errorf("requests failed across the reload: %s", strings.Join(errs, " "))
	}
}

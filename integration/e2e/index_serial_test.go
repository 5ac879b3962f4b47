package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/manager"
)

// indexSerialLab is a SEPM emulator behind a gateway whose rotation
// window is open, with an HTTPS site and a plaintext (8014-style) site;
// httpsRewrite and plainRewrite are extra lines of each site's rewrite block.
type indexSerialLab struct {
	mgr                  *manager.Manager
	gw                   *harness.Gateway
	current, next        *certs.Pair
	httpsPort, plainPort int
}

func startIndexSerialLab(t *testing.T, httpsRewrite, plainRewrite string) *indexSerialLab {
	t.Helper()
	dir := t.TempDir()
	mgr, err := manager.New(manager.Config{HTTPSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ProfileSize: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	l := &indexSerialLab{mgr: mgr, httpsPort: harness.FreePort(t), plainPort: harness.FreePort(t)}
	if l.current, err = certs.New(certs.Modern, "gateway-current.legacygate.test", 2048); err != nil {
		t.Fatal(err)
	}
	if l.next, err = certs.New(certs.Modern, "gateway-next.legacygate.test", 2048); err != nil {
		t.Fatal(err)
	}
	curCert, curKey, err := l.current.WriteFiles(dir, "current")
	if err != nil {
		t.Fatal(err)
	}
	nextCert, nextKey, err := l.next.WriteFiles(dir, "next")
	if err != nil {
		t.Fatal(err)
	}
	mgrCert, _, err := mgr.Pair().WriteFiles(dir, "manager")
	if err != nil {
		t.Fatal(err)
	}
	guard := func(lines string) string {
		return fmt.Sprintf(`policy_guard /secars/secars.dll {
		upstream_cert %s
		roots Profile ServerSettings
		rewrite {
			roots ServerSettings
			addresses localhost
			https_port %d
			%s
		}
	}`, mgrCert, l.httpsPort, lines)
	}
	now := time.Now().UTC()
	l.gw = harness.StartGateway(t, fmt.Sprintf(`{
	grace_period 1s
	legacygate {
		signing_key current %s %s
		signing_key next %s %s
		client_id {query.hostid}
		rotation {
			window %s %s
			confirm_heartbeats 3
			grace 1h
			persist_interval 200ms
			hold_retry_after 1s
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
`, curKey, curCert, nextKey, nextCert, now.Add(-time.Hour).Format(time.RFC3339), now.Add(time.Hour).Format(time.RFC3339),
		l.httpsPort, guard(httpsRewrite), mgr.Addrs().HTTP, l.plainPort, guard(plainRewrite), mgr.Addrs().HTTP))
	l.gw.WaitCertificate(t, "localhost")
	return l
}

// managerSyLinkSerial is the settings serial the manager itself announces.
func (l *indexSerialLab) managerSyLinkSerial(t *testing.T) string {
	t.Helper()
	body := readBody(t)(http.PostForm("http://"+l.mgr.Addrs().HTTP+manager.SecregPath+"?action=register", url.Values{"hostname": {"serial-probe"}}))
	host := regexp.MustCompile(`HostId="([0-9A-Fa-f]+)"`).FindSubmatch(body)
	if host == nil {
		t.Fatalf("registration answered %q", body)
	}
	body = readBody(t)(http.Get("http://" + l.mgr.Addrs().HTTP + manager.SecarsPath + "?action=index&hostid=" + string(host[1])))
	serial := regexp.MustCompile(`<SyLink Serial="([^"]+)"`).FindSubmatch(body)
	if serial == nil {
		t.Fatalf("the manager's index has no SyLink serial: %q", body)
	}
	return string(serial[1])
}

// readBody returns a function that reads a whole response or fails t.
func readBody(t *testing.T) func(*http.Response, error) []byte {
	t.Helper()
	return func(resp *http.Response, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
}

// runIndexSerialFleet runs 50 clients that hold the manager's settings
// serial and trust the gateway's current certificate, a fifth of them on
// the plaintext listener, for d.
func (l *indexSerialLab) runIndexSerialFleet(t *testing.T, d time.Duration) fleet.Summary {
	t.Helper()
	sylink, err := fleet.BuildSyLink(&fleet.Settings{Serial: l.managerSyLinkSerial(t), Blocks: []fleet.PriorityBlock{{
		Name: "Priority1",
		Servers: []fleet.Server{{Address: "localhost", HTTPPort: l.plainPort, HTTPSPort: l.httpsPort,
			VerifySignatures: true, Cert: l.current.Cert}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.New(fleet.Config{Count: 50, SyLink: sylink, Interval: 300 * time.Millisecond,
		Randomize: 100 * time.Millisecond, PlaintextShare: 0.2, Concurrency: 16, Seed: 11, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return f.Run(ctx)
}

func TestIndexSerialMakesTheFleetFetchTheNextCertificateInTheWindow(t *testing.T) {
	tests := []struct {
		name                       string
		httpsRewrite, plainRewrite string
		wantHeld                   bool
	}{
		// The recommended setup: one rewrite for both listeners, so a
		// client moved off 8014 finds the same serial on HTTPS.
		{"same rewrite on both listeners", "drop_http_only", "drop_http_only", false},
		// drop_http_only on 8014 only: a client moved off 8014 sees the
		// HTTPS listener's serial and fetches its settings again while it
		// has fetched the next certificate but not confirmed it. Neither
		// key is safe then, so the gateway holds the settings (503 with
		// Retry-After: the client is degraded for that heartbeat) until it
		// confirms, and signs them with next from then on: no signature
		// failure, no orphan.
		{"drop_http_only on 8014 only", "", "drop_http_only", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := startIndexSerialLab(t, tt.httpsRewrite, tt.plainRewrite)
			s := l.runIndexSerialFleet(t, 6*time.Second)
			t.Logf("summary: %+v", s)
			if s.Clients != 50 || s.OnNewAnchor != s.Clients {
				t.Errorf("%d of %d clients on the next certificate, want all", s.OnNewAnchor, s.Clients)
			}
			if s.Orphaned != 0 || s.EverOrphaned != 0 {
				t.Errorf("orphaned %d (ever %d), want 0", s.Orphaned, s.EverOrphaned)
			}
			if s.SignatureFailures != 0 {
				t.Errorf("%d signature failures, want 0", s.SignatureFailures)
			}
			if tt.wantHeld && (s.RateLimited == 0 || s.EverDegraded == 0) {
				t.Errorf("%d held requests, %d clients ever degraded: the settings refetch of unconfirmed clients was not held", s.RateLimited, s.EverDegraded)
			}
			if s.OnPlaintext != 0 {
				t.Errorf("%d clients still on plaintext after the migration document", s.OnPlaintext)
			}
			if s.SyLinkUpdates < s.Clients {
				t.Errorf("%d settings adopted for %d clients", s.SyLinkUpdates, s.Clients)
			}
			l.waitConfirmed(t, s.Clients)
		})
	}
}

// waitConfirmed waits until the gateway counts n confirmed clients: each
// fetched the next certificate, then kept heartbeating.
func (l *indexSerialLab) waitConfirmed(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		counts, _ := indexSerialStatus(t, l)["counts"].(map[string]any)
		if confirmed, _ := counts["confirmed"].(float64); int64(confirmed) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation counts %v: want %d confirmed", counts, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The control: with index_serial off the same fleet never learns of the
// rewritten settings, which proves the test above can fail.
func TestIndexSerialOffLeavesTheFleetOnTheCurrentCertificate(t *testing.T) {
	l := startIndexSerialLab(t, "index_serial off", "drop_http_only\n\t\t\tindex_serial off")
	s := l.runIndexSerialFleet(t, 3*time.Second)
	t.Logf("summary: %+v", s)
	if s.OnNewAnchor != 0 || s.SyLinkUpdates != 0 {
		t.Fatalf("%d clients on the next certificate, %d settings adopted; want none without index_serial", s.OnNewAnchor, s.SyLinkUpdates)
	}
	if s.OnPlaintext == 0 {
		t.Fatal("no client left on plaintext without index_serial: the fleet's plaintext share did not run")
	}
}

func indexSerialStatus(t *testing.T, l *indexSerialLab) map[string]any {
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

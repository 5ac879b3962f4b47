package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/manager"
)

// flavorExample returns the path of examples/<name>.Caddyfile.
func flavorExample(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "examples", name+".Caddyfile")
}

// flavorEnv lists every variable the examples read.
var flavorEnv = []string{
	"LEGACYGATE_SITE", "LEGACYGATE_FRONT_CERT", "LEGACYGATE_FRONT_KEY",
	"CHECKPOINT_MANAGER", "CHECKPOINT_PIN", "CHECKPOINT_MANAGER_CERT", "POLICYSERVER_MANAGER",
}

func TestFlavorExamplesAdaptOnACleanMachine(t *testing.T) {
	for _, name := range flavorEnv {
		t.Setenv(name, "") // restores the variable after the test
		os.Unsetenv(name)
	}
	tests := []struct {
		name string
		want []string
	}{
		{"checkpoint", []string{
			`"handler":"package_guard"`, `"upstream_certs":["/etc/legacygate/checkpoint-manager.crt"]`,
			`"protocol":"legacy_tls"`, `"min_version":"tls1.0"`, `"pins":["sha256/`,
			`"handler":"heartbeat_limit"`, `{http.request.header.X-Endpoint-Id}`, `"protocol_min":"tls1.2"`,
		}},
		{"policyserver", []string{
			`"handler":"xml_guard"`, `"handler":"heartbeat_limit"`, `"DeviceID"`,
			`"dial":"10.0.0.8:80"`, `"protocol_min":"tls1.2"`,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, err := harness.Run(t, "adapt", "--config", flavorExample(t, tc.name))
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			if strings.Contains(stderr, "WARN") {
				t.Errorf("adapt warned:\n%s", stderr)
			}
			for _, want := range tc.want {
				if !strings.Contains(stdout, want) {
					t.Errorf("adapted JSON lacks %s:\n%s", want, stdout)
				}
			}
			if tc.name == "policyserver" && (strings.Contains(stdout, `"try_duration"`) || strings.Contains(stdout, `"retries":`) && !strings.Contains(stdout, `"retries":0`)) {
				t.Errorf("the PolicyServer example lets reverse_proxy retry:\n%s", stdout)
			}
		})
	}
}

// flavorFront sets the example's front variables: 127.0.0.1 on a free port
// with a certificate the returned client trusts (TLS 1.2+).
func flavorFront(t *testing.T) (base string, client *http.Client) {
	t.Helper()
	pair, err := certs.New(certs.Modern, "gateway.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := pair.WriteFiles(t.TempDir(), "front")
	if err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	t.Setenv("LEGACYGATE_SITE", fmt.Sprintf("127.0.0.1:%d", port))
	t.Setenv("LEGACYGATE_FRONT_CERT", certFile)
	t.Setenv("LEGACYGATE_FRONT_KEY", keyFile)
	roots := x509.NewCertPool()
	roots.AddCert(pair.Cert)
	client = &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
	}
	return fmt.Sprintf("https://127.0.0.1:%d", port), client
}

// checkOldTLSRefused requires TLS 1.0 and 1.1 handshakes with the front to fail.
func checkOldTLSRefused(t *testing.T, base string) {
	t.Helper()
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v, CipherSuites: tls12Suites()}
		conn, err := tls.Dial("tcp", strings.TrimPrefix(base, "https://"), cfg)
		if err == nil {
			conn.Close()
			t.Fatalf("the front accepted a %s handshake", tls.VersionName(v))
		}
		if !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("%s refused for another reason than the version: %v", tls.VersionName(v), err)
		}
	}
}

// runFlavorFleet runs 20 clients of flavor against the gateway at base for
// about 3 s and requires all of them online, none orphaned or degraded.
func runFlavorFleet(t *testing.T, flavor, base string, trust *x509.Certificate) fleet.Summary {
	t.Helper()
	_, port, err := net.SplitHostPort(strings.TrimPrefix(base, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	httpsPort, _ := strconv.Atoi(port)
	doc, err := fleet.BuildSyLink(&fleet.Settings{Blocks: []fleet.PriorityBlock{{Name: "Priority1", Servers: []fleet.Server{{
		Address: "127.0.0.1", HTTPSPort: httpsPort, VerifySignatures: trust != nil, Cert: trust,
	}}}}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	f, err := fleet.New(fleet.Config{Flavor: flavor, Count: n, SyLink: doc, Interval: 300 * time.Millisecond, Randomize: 100 * time.Millisecond, Timeout: 5 * time.Second, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s := f.Run(ctx)
	if s.Online != n || s.Orphaned != 0 || s.Degraded != 0 || s.EverOrphaned != 0 {
		t.Fatalf("fleet through the gateway: %+v, want all %d online, none orphaned or degraded", s, n)
	}
	return s
}

type flavorResponse struct {
	status int
	header http.Header
	body   []byte
}

func flavorDo(t *testing.T, c *http.Client, method, url string, body []byte, header map[string]string) flavorResponse {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading: %v", method, url, err)
	}
	return flavorResponse{resp.StatusCode, resp.Header, b}
}

func TestCheckpointFlavorThroughTheGateway(t *testing.T) {
	m, err := manager.New(manager.Config{
		Flavor: "checkpoint", HTTPSAddr: "127.0.0.1:0",
		TLSMin: tls.VersionTLS10, TLSMax: tls.VersionTLS10, Cert: certs.SHA1, Sign: manager.SignRSASHA1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	mgrCert := filepath.Join(t.TempDir(), "manager.crt")
	if err := os.WriteFile(mgrCert, m.Pair().CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	base, client := flavorFront(t)
	t.Setenv("CHECKPOINT_MANAGER", m.Addrs().HTTPS)
	t.Setenv("CHECKPOINT_PIN", m.Pin())
	t.Setenv("CHECKPOINT_MANAGER_CERT", mgrCert)
	caddyfile, err := os.ReadFile(flavorExample(t, "checkpoint"))
	if err != nil {
		t.Fatal(err)
	}
	g := harness.StartGateway(t, string(caddyfile))
	direct := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10},
	}}
	mgrBase := "https://" + m.Addrs().HTTPS

	t.Run("TLS 1.0 and 1.1 refused at the front", func(t *testing.T) { checkOldTLSRefused(t, base) })

	t.Run("heartbeat reaches the TLS 1.0 manager", func(t *testing.T) {
		r := flavorDo(t, client, http.MethodPost, base+manager.CPHeartbeatPath, []byte("status=ok"), map[string]string{manager.CPEndpointHeader: "EP-1"})
		var hb manager.CPHeartbeat
		if r.status != 200 || json.Unmarshal(r.body, &hb) != nil || hb.Interval != 60 {
			t.Fatalf("heartbeat: status %d body %q", r.status, r.body)
		}
		if r.header.Get("Server") != "" || r.header.Get("X-Powered-By") != "" {
			t.Errorf("banners reached the client: %v", r.header)
		}
	})

	t.Run("heartbeats limited per endpoint id", func(t *testing.T) {
		codes := map[int]int{}
		for range 6 {
			codes[flavorDo(t, client, http.MethodPost, base+manager.CPHeartbeatPath, nil, map[string]string{manager.CPEndpointHeader: "EP-storm"}).status]++
		}
		if codes[200] != 3 || codes[503] != 3 {
			t.Fatalf("storm of 6 from one endpoint: %v, want 3 passed (burst) and 3 refused", codes)
		}
		if r := flavorDo(t, client, http.MethodPost, base+manager.CPHeartbeatPath, nil, map[string]string{manager.CPEndpointHeader: "EP-calm"}); r.status != 200 {
			t.Fatalf("another endpoint during the storm: status %d", r.status)
		}
	})

	t.Run("encrypted policy passes unchanged", func(t *testing.T) {
		want := flavorDo(t, direct, http.MethodGet, mgrBase+manager.CPPolicyPrefix+"firewall", nil, nil)
		got := flavorDo(t, client, http.MethodGet, base+manager.CPPolicyPrefix+"firewall", nil, nil)
		if got.status != 200 || !bytes.Equal(got.body, want.body) {
			t.Fatalf("policy through the gateway: status %d, %d bytes, want the manager's %d", got.status, len(got.body), len(want.body))
		}
	})

	pkgPath := manager.CPPackagePrefix + manager.CPPackages[0]
	t.Run("signed package passes byte for byte", func(t *testing.T) {
		want := flavorDo(t, direct, http.MethodGet, mgrBase+pkgPath, nil, nil)
		before := m.Requests(manager.CountCPSignature)
		got := flavorDo(t, client, http.MethodGet, base+pkgPath, nil, nil)
		if got.status != 200 || !bytes.Equal(got.body, want.body) {
			t.Fatalf("package through the gateway: status %d, %d bytes, want the manager's %d", got.status, len(got.body), len(want.body))
		}
		if m.Requests(manager.CountCPSignature) != before+1 {
			t.Fatal("the gateway did not fetch the package's .p7s")
		}
	})

	t.Run("fleet through the gateway: none orphaned", func(t *testing.T) {
		s := runFlavorFleet(t, fleet.FlavorCheckpoint, base, m.SigningCert())
		if s.ProfileUpdates < s.Clients || s.SignatureFailures != 0 {
			t.Fatalf("fleet %+v: want every client to install a verified package", s)
		}
	})

	t.Run("a package signed by a regenerated key is refused", func(t *testing.T) {
		if err := m.Regenerate(); err != nil {
			t.Fatal(err)
		}
		// The administrator pins the new TLS key; the package signer stays
		// the old certificate, so packages are refused, never forwarded.
		t.Setenv("CHECKPOINT_PIN", m.Pin())
		g.Reload(t, string(caddyfile))
		if r := flavorDo(t, client, http.MethodGet, base+manager.CPPolicyPrefix+"firewall", nil, nil); r.status != 200 {
			t.Fatalf("policy after the reload: status %d", r.status)
		}
		got := flavorDo(t, client, http.MethodGet, base+pkgPath, nil, nil)
		if got.status != http.StatusBadGateway || len(got.body) > 200 {
			t.Fatalf("package signed by an unpinned key: status %d, %d bytes, want a short 502", got.status, len(got.body))
		}
		g.WaitLog(t, 5*time.Second, "package refused", "untrusted_key")
	})
}

func TestPolicyServerFlavorThroughTheGateway(t *testing.T) {
	m, err := manager.New(manager.Config{Flavor: "policyserver", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	base, client := flavorFront(t)
	t.Setenv("POLICYSERVER_MANAGER", m.Addrs().HTTP)
	caddyfile, err := os.ReadFile(flavorExample(t, "policyserver"))
	if err != nil {
		t.Fatal(err)
	}
	harness.StartGateway(t, string(caddyfile))
	url := base + manager.PSPath
	soap := func(t *testing.T, device, op string, payload []byte) ([]byte, flavorResponse) {
		t.Helper()
		body, action := manager.BuildPSRequest(manager.PSRequest{Operation: op, DeviceID: device, MessageID: manager.NewMessageID(), Payload: payload})
		return body, flavorDo(t, client, http.MethodPost, url, body, map[string]string{"SOAPAction": action, "Content-Type": "text/xml; charset=utf-8"})
	}

	t.Run("TLS 1.0 and 1.1 refused at the front", func(t *testing.T) { checkOldTLSRefused(t, base) })

	t.Run("SOAP reaches the plain-HTTP manager once", func(t *testing.T) {
		before := m.Requests(manager.CountPSRequest)
		_, r := soap(t, "DEV-1", "CheckIn", []byte("ciphertext"))
		if r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		if _, err := manager.ParsePSResponse(r.body, "CheckIn"); err != nil {
			t.Fatalf("answer through the gateway: %v", err)
		}
		if got := m.Requests(manager.CountPSRequest) - before; got != 1 {
			t.Fatalf("manager saw %d requests, want 1", got)
		}
	})

	t.Run("a replayed message is refused by the manager, not hidden", func(t *testing.T) {
		body, r := soap(t, "DEV-2", "GetPolicy", nil)
		if r.status != 200 {
			t.Fatalf("first: status %d", r.status)
		}
		_, action := manager.BuildPSRequest(manager.PSRequest{Operation: "GetPolicy"})
		again := flavorDo(t, client, http.MethodPost, url, body, map[string]string{"SOAPAction": action})
		if _, err := manager.ParsePSResponse(again.body, "GetPolicy"); again.status != 500 || err == nil || !strings.Contains(err.Error(), "replay") {
			t.Fatalf("replay: status %d, %v", again.status, err)
		}
	})

	t.Run("DOCTYPE refused before the manager", func(t *testing.T) {
		before := m.Requests(manager.CountPSRequest)
		body, action := manager.BuildPSRequest(manager.PSRequest{Operation: "CheckIn", DeviceID: "DEV-3", MessageID: manager.NewMessageID()})
		evil := bytes.Replace(body, []byte("?>"), []byte(`?><!DOCTYPE soap:Envelope [<!ENTITY x "y">]>`), 1)
		r := flavorDo(t, client, http.MethodPost, url, evil, map[string]string{"SOAPAction": action})
		if r.status != http.StatusBadRequest || m.Requests(manager.CountPSRequest) != before {
			t.Fatalf("DOCTYPE request: status %d, manager requests +%d", r.status, m.Requests(manager.CountPSRequest)-before)
		}
	})

	t.Run("check-ins limited per DeviceID", func(t *testing.T) {
		codes := map[int]int{}
		for range 8 {
			_, r := soap(t, "DEV-storm", "CheckIn", nil)
			codes[r.status]++
		}
		if codes[200] != 5 || codes[503] != 3 {
			t.Fatalf("storm of 8 from one device: %v, want 5 passed (burst) and 3 refused", codes)
		}
		if _, r := soap(t, "DEV-calm", "CheckIn", nil); r.status != 200 {
			t.Fatalf("another device during the storm: status %d", r.status)
		}
	})

	t.Run("fleet through the gateway: none orphaned", func(t *testing.T) {
		before := m.Requests(manager.CountPSReplay)
		runFlavorFleet(t, fleet.FlavorPolicyServer, base, nil)
		if got := m.Requests(manager.CountPSReplay) - before; got != 0 {
			t.Fatalf("the manager saw %d replayed messages through the gateway", got)
		}
	})

	t.Run("a manager failing mid-request gets the body once", func(t *testing.T) {
		m.SetFault(manager.Fault{Abort: true})
		defer m.SetFault(manager.Fault{})
		before := m.Requests(manager.CountPSRequest)
		_, r := soap(t, "DEV-4", "UploadAudit", bytes.Repeat([]byte("a"), 4096))
		if r.status != http.StatusBadGateway {
			t.Fatalf("status %d, want 502", r.status)
		}
		time.Sleep(500 * time.Millisecond) // a retry would arrive by now
		if got := m.Requests(manager.CountPSRequest) - before; got != 1 {
			t.Fatalf("the manager received the request %d times, want once", got)
		}
	})
}

func TestPackageGuardConfigMistakesStopTheGateway(t *testing.T) {
	port := harness.FreePort(t)
	// A readable certificate, so that the header is the one mistake: Caddy
	// provisions (reading the file) before it validates.
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	certFile, _, err := pair.WriteFiles(t.TempDir(), "manager")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, block, want string
	}{
		{"no certificate", "package_guard /epm/packages/*", "package_guard: upstream_cert"},
		{"missing certificate file", "package_guard /epm/packages/* {\n\t\tupstream_cert " + filepath.Join(t.TempDir(), "absent.crt") + "\n\t}", "package_guard: upstream_cert"},
		{"bad signature header", "package_guard {\n\t\tupstream_cert " + certFile + "\n\t\tsignature_header \"X Sig\"\n\t}", "package_guard: signature_header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := harness.TryStartGateway(t, fmt.Sprintf("http://127.0.0.1:%d {\n\t%s\n\trespond \"x\"\n}\n", port, tc.block))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
}

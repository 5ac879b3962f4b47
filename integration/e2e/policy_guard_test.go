package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
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

// guardMarker is in every rule of the manager's profile: a client response
// holding it carries the manager's bytes.
const guardMarker = "MANAGER-BYTES"

// guardKeys are the manager's key, an attacker's key and the gateway's.
type guardKeys struct {
	manager, attacker, gateway *certs.Pair
	managerCertFile            string
	gatewayKeyFile             string
	gatewayCertFile            string
}

func newGuardKeys(t testing.TB) *guardKeys {
	t.Helper()
	dir := t.TempDir()
	k := &guardKeys{}
	for _, p := range []struct {
		pair **certs.Pair
		name string
	}{{&k.manager, "manager"}, {&k.attacker, "attacker"}, {&k.gateway, "gateway"}} {
		pair, err := certs.New(certs.Modern, p.name+".legacygate.test", 2048)
		if err != nil {
			t.Fatal(err)
		}
		*p.pair = pair
	}
	var err error
	if k.managerCertFile, _, err = k.manager.WriteFiles(dir, "manager"); err != nil {
		t.Fatal(err)
	}
	if k.gatewayCertFile, k.gatewayKeyFile, err = k.gateway.WriteFiles(dir, "gateway"); err != nil {
		t.Fatal(err)
	}
	return k
}

// guardProfile is a SEPM-style policy of about size bytes signed by pair.
func guardProfile(t testing.TB, pair *certs.Pair, size int) []byte {
	t.Helper()
	doc := etree.NewDocument()
	root := doc.CreateElement("Profile")
	root.CreateAttr("SerialNumber", "A3AF-01/30/2012 23:50:54 284")
	rules := root.CreateElement("Rules")
	for i := 0; i*96 < size; i++ {
		rule := rules.CreateElement("Rule")
		rule.CreateAttr("Id", strconv.Itoa(i))
		rule.CreateAttr("Name", fmt.Sprintf("%s rule %d", guardMarker, i))
		rule.CreateAttr("Action", "block")
		rule.SetText("C:\\Program Files\\Vendor\\scan.exe")
	}
	signer, err := policyguard.NewSigner(pair.Key, pair.Cert)
	if err != nil {
		t.Fatal(err)
	}
	out, err := signer.Sign(root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// guardUpstream is a manager that misbehaves on request: ?fault=cut closes
// the connection mid-body, tamper changes a signed byte, wrongkey serves a
// profile signed by another key, gzip compresses although identity was asked.
func guardUpstream(t testing.TB, k *guardKeys, profile []byte) *httptest.Server {
	t.Helper()
	forged := guardProfile(t, k.attacker, len(profile))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(profile)
	zw.Close()
	index := []byte(`<Index><Profile Checksum="1" SerialNumber="A3AF-01/30/2012 23:50:54 284"/><SyLink Serial="1"/></Index>`)

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/xml")
		h.Set("X-Manager-Secret", guardMarker)
		h.Set("Last-Modified", "Mon, 30 Jan 2012 23:50:54 GMT")
		body := profile
		switch r.URL.Query().Get("fault") {
		case "cut":
			h.Set("Content-Length", strconv.Itoa(len(profile)))
			w.Write(profile[:len(profile)/2])
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		case "tamper":
			body = bytes.Replace(profile, []byte(guardMarker+" rule 7\""), []byte(guardMarker+" rule 8\""), 1)
		case "wrongkey":
			body = forged
		case "gzip":
			h.Set("Content-Encoding", "gzip")
			body = gz.Bytes()
		}
		if r.URL.Query().Get("action") == "index" {
			body = index
		}
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// guardCaddyfile serves https://localhost:port with an internal certificate,
// proxying to upstream through policy_guard (or, withGuard false, through a
// stock reverse_proxy alone).
func guardCaddyfile(k *guardKeys, port int, upstream string, withGuard bool) string {
	guard := ""
	if withGuard {
		guard = fmt.Sprintf(`policy_guard /secars/secars.dll {
		upstream_cert %s
		signing_key %s %s
		roots Profile ServerSettings
	}`, k.managerCertFile, k.gatewayKeyFile, k.gatewayCertFile)
	}
	return fmt.Sprintf(`{
	grace_period 1s
}

localhost:%d {
	tls internal
	%s
	reverse_proxy %s
}
`, port, guard, upstream)
}

// guardGateway runs legacygate with guardCaddyfile and returns it with the
// base URL of its HTTPS site.
func guardGateway(t testing.TB, k *guardKeys, upstream string, withGuard bool) (*harness.Gateway, string) {
	t.Helper()
	port := harness.FreePort(t)
	g := harness.StartGateway(t, guardCaddyfile(k, port, upstream, withGuard))
	g.WaitCertificate(t, "localhost")
	return g, fmt.Sprintf("https://localhost:%d", port)
}

type guardResponse struct {
	status int
	header http.Header
	body   []byte
}

func guardGet(t testing.TB, c *http.Client, method, rawURL string) guardResponse {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("User-Agent", "Smc")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", rawURL, err)
	}
	return guardResponse{resp.StatusCode, resp.Header, body}
}

// guardMetric reads one sample from the gateway's admin /metrics.
func guardMetric(t testing.TB, g *harness.Gateway, sample string) string {
	t.Helper()
	r := guardGet(t, &http.Client{Timeout: 5 * time.Second}, "GET", "http://"+g.AdminAddr+"/metrics")
	for line := range strings.SplitSeq(string(r.body), "\n") {
		if value, ok := strings.CutPrefix(line, sample+" "); ok {
			return value
		}
	}
	return ""
}

// verifyWithGateway checks that doc verifies against the gateway's
// certificate and nothing else, with policyguard and with xmlsec1.
func verifyWithGateway(t *testing.T, k *guardKeys, doc []byte) {
	t.Helper()
	v, err := policyguard.NewVerifier([]*x509.Certificate{k.gateway.Cert}, policyguard.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(doc); err != nil {
		t.Errorf("the client's document does not verify with the gateway's certificate: %v", err)
	}
	xmlsec := guardTool(t, "xmlsec1")
	file := filepath.Join(t.TempDir(), "profile.xml")
	if err := os.WriteFile(file, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, xmlsec, "--verify", "--enabled-key-data", "x509", "--trusted-pem", k.gatewayCertFile, file).CombinedOutput()
	if err != nil {
		t.Errorf("xmlsec1 does not verify the client's document with gateway.crt: %v\n%s", err, out)
	}
}

// guardTool finds an external tool; it skips when the tool is absent,
// except under CI=true, where it fails.
func guardTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required under CI=true: %v", name, err)
	}
	t.Skipf("%s not installed: %v", name, err)
	return ""
}

func TestPolicyGuardThroughCaddyResignsEmulatorPolicies(t *testing.T) {
	k := newGuardKeys(t)
	m, err := manager.New(manager.Config{HTTPAddr: "127.0.0.1:0", Initial: k.manager})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	g, base := guardGateway(t, k, m.Addrs().HTTP, true)
	c := g.Client(t)

	form := url.Values{"hostname": {"pc-0001"}, "group": {`My Company\Laptops`}}
	resp, err := c.Post(base+"/secreg/secreg.dll?action=register", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	reg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	_, id, ok := strings.Cut(string(reg), `HostId="`)
	if !ok {
		t.Fatalf("register: %d %q", resp.StatusCode, reg)
	}
	id, _, _ = strings.Cut(id, `"`)

	for _, action := range []string{"profile", "sylink"} {
		t.Run(action, func(t *testing.T) {
			r := guardGet(t, c, "GET", base+"/secars/secars.dll?action="+action+"&hostid="+id)
			if r.status != 200 {
				t.Fatalf("status %d: %q", r.status, r.body)
			}
			if r.header.Get("Content-Length") != strconv.Itoa(len(r.body)) || r.header.Get("Etag") == "" {
				t.Errorf("Content-Length %q ETag %q for %d bytes", r.header.Get("Content-Length"), r.header.Get("Etag"), len(r.body))
			}
			managerOnly, err := policyguard.NewVerifier([]*x509.Certificate{k.manager.Cert}, policyguard.VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := managerOnly.Verify(r.body); err == nil {
				t.Error("the client's document still verifies with the manager's key")
			}

			head := guardGet(t, c, "HEAD", base+"/secars/secars.dll?action="+action+"&hostid="+id)
			if head.status != 200 || len(head.body) != 0 || head.header.Get("Content-Length") != strconv.Itoa(len(r.body)) || head.header.Get("Etag") != r.header.Get("Etag") {
				t.Errorf("HEAD: %d, %d body bytes, Content-Length %q ETag %q; want the GET's headers and no body",
					head.status, len(head.body), head.header.Get("Content-Length"), head.header.Get("Etag"))
			}
			// Last: without xmlsec1 (outside CI) this skips the rest of the
			// subtest, and the HEAD must have been sent by then for the
			// counts checked below.
			verifyWithGateway(t, k, r.body)
		})
	}

	index := guardGet(t, c, "GET", base+"/secars/secars.dll?action=index&hostid="+id)
	if index.status != 200 || !bytes.Contains(index.body, []byte("<Index ")) || bytes.Contains(index.body, []byte("Signature")) {
		t.Errorf("the unsigned index did not pass: %d %q", index.status, index.body)
	}
	if got := guardMetric(t, g, `legacygate_policy_guard_results_total{reason="verified",result="signed"}`); got != "4" {
		t.Errorf("signed/verified = %q, want 4 (two documents, GET and HEAD)", got)
	}
	if got := guardMetric(t, g, `legacygate_policy_guard_cache_total{result="hit"}`); got != "2" {
		t.Errorf("cache hits = %q, want 2 (the HEADs)", got)
	}
}

func TestPolicyGuardThroughCaddyNeverForwardsBadPayloads(t *testing.T) {
	k := newGuardKeys(t)
	profile := guardProfile(t, k.manager, 100<<10)
	up := guardUpstream(t, k, profile)
	g, base := guardGateway(t, k, strings.TrimPrefix(up.URL, "http://"), true)
	c := g.Client(t)

	ok := guardGet(t, c, "GET", base+"/secars/secars.dll?action=profile")
	if ok.status != 200 {
		t.Fatalf("the well-signed profile was refused: %d %q", ok.status, ok.body)
	}
	verifyWithGateway(t, k, ok.body)

	tests := []struct {
		fault, reason string
		seen          *x509.Certificate // the certificate the log line must name as seen
	}{
		{"cut", "incomplete", nil},
		{"tamper", "digest_mismatch", k.manager.Cert},
		{"wrongkey", "untrusted_key", k.attacker.Cert},
		{"gzip", "content_encoding", nil},
	}
	for _, tc := range tests {
		t.Run(tc.fault, func(t *testing.T) {
			r := guardGet(t, c, "GET", base+"/secars/secars.dll?action=profile&fault="+tc.fault)
			if r.status != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", r.status)
			}
			if bytes.Contains(r.body, []byte(guardMarker)) || bytes.Contains(r.body, []byte("<")) || r.header.Get("X-Manager-Secret") != "" {
				t.Errorf("the client received the manager's bytes: %v %q", r.header, r.body)
			}
			if r.header.Get("Content-Length") != strconv.Itoa(len(r.body)) {
				t.Errorf("Content-Length %q for %d bytes", r.header.Get("Content-Length"), len(r.body))
			}
			line := g.WaitLog(t, 5*time.Second, `"policy payload refused"`, `"reason":"`+tc.reason+`"`)
			for _, want := range []string{`"path":"/secars/secars.dll"`, policyguard.Fingerprint(k.manager.Cert)} {
				if !strings.Contains(line, want) {
					t.Errorf("log line lacks %s:\n%s", want, line)
				}
			}
			if tc.seen != nil && !strings.Contains(line, `"seen":["`+policyguard.Fingerprint(tc.seen)) {
				t.Errorf("log line does not name the certificate the document carried:\n%s", line)
			}
			sample := `legacygate_policy_guard_results_total{reason="` + tc.reason + `",result="refused"}`
			if got := guardMetric(t, g, sample); got != "1" {
				t.Errorf("%s = %q, want 1", sample, got)
			}
		})
	}
}

func TestPolicyGuardThroughCaddyMetricsSurviveReload(t *testing.T) {
	k := newGuardKeys(t)
	up := guardUpstream(t, k, guardProfile(t, k.manager, 8<<10))
	port := harness.FreePort(t)
	caddyfile := guardCaddyfile(k, port, strings.TrimPrefix(up.URL, "http://"), true)
	g := harness.StartGateway(t, caddyfile)
	g.WaitCertificate(t, "localhost")
	c := g.Client(t)
	tampered := fmt.Sprintf("https://localhost:%d/secars/secars.dll?action=profile&fault=tamper", port)
	sample := `legacygate_policy_guard_results_total{reason="digest_mismatch",result="refused"}`

	guardGet(t, c, "GET", tampered)
	g.Reload(t, caddyfile+"\n")
	if got := guardMetric(t, g, sample); got != "1" {
		t.Errorf("after a reload %s = %q, want the count carried over (1)", sample, got)
	}
	if r := guardGet(t, c, "GET", tampered); r.status != http.StatusBadGateway {
		t.Fatalf("after a reload a tampered payload got %d", r.status)
	}
	if got := guardMetric(t, g, sample); got != "2" {
		t.Errorf("after a reload and one more refusal %s = %q, want 2", sample, got)
	}
}

func TestPolicyGuardConfigMistakesStopTheGateway(t *testing.T) {
	k := newGuardKeys(t)
	missing := filepath.Join(t.TempDir(), "absent.crt")
	tests := []struct {
		name, block, want string
	}{
		{"missing upstream_cert", "signing_key " + k.gatewayKeyFile + " " + k.gatewayCertFile + "\nroots Profile", "upstream_cert"},
		{"unreadable upstream_cert", "upstream_cert " + missing + "\nsigning_key " + k.gatewayKeyFile + " " + k.gatewayCertFile + "\nroots Profile", "upstream_cert"},
		{"key that does not match its certificate", "upstream_cert " + k.managerCertFile + "\nsigning_key " + k.gatewayKeyFile + " " + k.managerCertFile + "\nroots Profile", "signing_key"},
		{"bad max_size", "max_size huge", "max_size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := harness.TryStartGateway(t, fmt.Sprintf("http://127.0.0.1:%d {\n\tpolicy_guard {\n%s\n\t}\n\treverse_proxy 127.0.0.1:9\n}\n", harness.FreePort(t), tc.block))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
}

// BenchmarkPolicyGuardCacheHit compares, in one run, the requests/s of a
// gateway whose policy_guard serves a 100 KB profile from its cache with a
// stock reverse_proxy serving the same upstream body. Both are real legacygate
// processes behind TLS on loopback, driven by keep-alive HTTPS clients in
// parallel; the rounds alternate so that both see the same machine load. The
// ratio is logged (go test -bench PolicyGuardCacheHit -run '^$' -v).
func BenchmarkPolicyGuardCacheHit(b *testing.B) {
	k := newGuardKeys(b)
	profile := guardProfile(b, k.manager, 100<<10)
	up := guardUpstream(b, k, profile)
	upstream := strings.TrimPrefix(up.URL, "http://")
	gateways := []struct {
		name  string
		guard bool
	}{{"stock_reverse_proxy", false}, {"policy_guard_cache_hit", true}}

	type target struct {
		url    string
		client *http.Client
	}
	targets := make([]target, len(gateways))
	for i, gw := range gateways {
		g, base := guardGateway(b, k, upstream, gw.guard)
		c := guardKeepAliveClient(b, g)
		targets[i] = target{base + "/secars/secars.dll?action=profile", c}
		if r := guardGet(b, c, "GET", targets[i].url); r.status != 200 || len(r.body) < 100<<10 {
			b.Fatalf("%s: %d, %d bytes", gw.name, r.status, len(r.body))
		}
	}

	// rates[name][round] is the requests/s of the final (timed) run of that
	// sub-benchmark; b.Run calls it with growing b.N until it lasts -benchtime.
	const rounds = 3
	rates := map[string][]float64{}
	for _, gw := range gateways {
		rates[gw.name] = make([]float64, rounds)
	}
	for round := range rounds {
		for i, gw := range gateways {
			b.Run(fmt.Sprintf("round%d/%s", round+1, gw.name), func(b *testing.B) {
				b.SetParallelism(8)
				b.SetBytes(int64(len(profile)))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						guardDrain(b, targets[i].client, targets[i].url)
					}
				})
				rates[gw.name][round] = float64(b.N) / b.Elapsed().Seconds()
			})
		}
	}
	stock := guardSum(rates["stock_reverse_proxy"]) / rounds
	guard := guardSum(rates["policy_guard_cache_hit"]) / rounds
	b.Logf("mean requests/s over %d alternating rounds: stock reverse_proxy %.0f, policy_guard cache hit %.0f, ratio %.3f (target >= 0.90)",
		rounds, stock, guard, guard/stock)
}

func guardSum(xs []float64) float64 {
	total := 0.0
	for _, x := range xs {
		total += x
	}
	return total
}

// guardKeepAliveClient speaks HTTP/1.1 over TLS to the gateway and keeps its
// connections, as a fleet of legacy clients would.
func guardKeepAliveClient(b testing.TB, g *harness.Gateway) *http.Client {
	b.Helper()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: g.RootCAs(b), MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
		},
	}
	b.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func guardDrain(b *testing.B, c *http.Client, rawURL string) {
	resp, err := c.Get(rawURL)
	if err != nil {
		b.Error(err)
		return
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || n < 100<<10 {
		b.Errorf("GET %s: %d, %d bytes, %v", rawURL, resp.StatusCode, n, err)
	}
}

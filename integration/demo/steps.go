package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/legacygate/legacygate/integration/manager"
	"github.com/legacygate/legacygate/policyguard"
)

// step is one scripted request or event with what it should show.
type step struct {
	name string
	run  func(ctx context.Context) (string, error)
}

// runSteps runs the script and returns how many steps misbehaved.
func (d *demo) runSteps(ctx context.Context) int {
	c := &clients{d: d}
	steps := []step{
		{"a stock TLS 1.2+ client goes straight to the manager", c.stockToManager},
		{"a TLS 1.0 client goes to the gateway", c.oldTLSToGateway(tls.VersionTLS10)},
		{"a TLS 1.1 client goes to the gateway", c.oldTLSToGateway(tls.VersionTLS11)},
		{"reachability probe through the gateway", c.hello},
		{"registration through the gateway", c.register},
		{"heartbeat (index) through the gateway", c.index},
		{"policy download through the gateway, checked against the gateway's certificate", c.profileViaGateway},
		{"a path outside the client protocol (the console)", c.console},
		{"a heartbeat storm from one client", c.storm},
		{"a client that talks to the manager directly downloads its policy", c.profileDirect},
		{"the manager regenerates its key (the accident that orphans clients)", c.regenerate},
		{"the direct client downloads its policy again", c.profileDirectAfter},
		{"the gateway's client checks in (old pin still loaded)", c.indexRefused},
		{"the administrator pins the manager's new certificate and reloads", c.repin},
		{"the gateway's client downloads its policy again", c.profileViaGateway},
	}
	for i, s := range steps {
		if ctx.Err() != nil {
			d.printf("interrupted\n")
			return d.failed + 1
		}
		what, err := s.run(ctx)
		mark := "ok  "
		if err != nil {
			mark, what = "FAIL", err.Error()
			d.failed++
		}
		d.printf("%2d. [%s] %s\n        %s\n", i+1, mark, s.name, what)
	}
	d.printf("\n%d of %d steps behaved as expected.\n", len(steps)-d.failed, len(steps))
	return d.failed
}

// clients holds the HTTP clients of the script and what they learned.
type clients struct {
	d       *demo
	gateway *http.Client
	hostID  string
	oldMgr  *x509.Certificate // the manager certificate the direct client trusts
	// lastIndex is the index the gateway's client got at its check-in.
	lastIndex []byte
}

func (c *clients) gatewayClient() (*http.Client, error) {
	if c.gateway != nil {
		return c.gateway, nil
	}
	rootFile := filepath.Join(c.d.dir, "caddy", "pki", "authorities", "local", "root.crt")
	pem, err := os.ReadFile(rootFile)
	if err != nil {
		return nil, fmt.Errorf("reading the gateway's CA root %s: %w", rootFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", rootFile)
	}
	c.gateway = &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		},
	}
	return c.gateway, nil
}

// get fetches a client-protocol URL through the gateway, retrying briefly
// while the gateway's certificate is being issued at start.
func (c *clients) get(ctx context.Context, query string) (*http.Response, []byte, error) {
	return c.do(ctx, http.MethodGet, "/secars/secars.dll?"+query, nil)
}

func (c *clients) do(ctx context.Context, method, path string, form url.Values) (*http.Response, []byte, error) {
	client, err := c.gatewayClient()
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for try := 0; try < 20; try++ {
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequestWithContext(ctx, method, c.d.gatewayURL+path, body)
		if err != nil {
			return nil, nil, fmt.Errorf("building request %s: %w", path, err)
		}
		req.Header.Set("User-Agent", "Smc")
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := client.Do(req)
		if err != nil {
			lastErr = err
			time.Sleep(250 * time.Millisecond)
			continue
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("reading %s: %w", path, err)
		}
		return resp, data, nil
	}
	return nil, nil, fmt.Errorf("gateway unreachable: %w", lastErr)
}

func (c *clients) stockToManager(ctx context.Context) (string, error) {
	dialer := &tls.Dialer{Config: &tls.Config{MinVersion: tls.VersionTLS12}}
	conn, err := dialer.DialContext(ctx, "tcp", c.d.mgr.Addrs().HTTPS)
	if err == nil {
		conn.Close()
		return "", fmt.Errorf("the manager accepted a TLS 1.2 handshake; the demo manager should be TLS 1.0 only")
	}
	return "refused, as Caddy's stock transport is: " + err.Error(), nil
}

func (c *clients) oldTLSToGateway(version uint16) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		if _, err := c.gatewayClient(); err != nil {
			return "", err
		}
		dialer := &tls.Dialer{Config: &tls.Config{
			MinVersion: version, MaxVersion: version, InsecureSkipVerify: true,
		}}
		conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(c.d.gwPort)))
		if err == nil {
			conn.Close()
			return "", fmt.Errorf("the gateway accepted %s", tls.VersionName(version))
		}
		return "refused: " + err.Error(), nil
	}
}

func (c *clients) hello(ctx context.Context) (string, error) {
	resp, body, err := c.get(ctx, "hello,secars")
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK || string(body) != "OK" {
		return "", fmt.Errorf("got %d %q, want 200 \"OK\"", resp.StatusCode, body)
	}
	return fmt.Sprintf("client⇄gateway %s %s; gateway⇄manager TLS 1.0 with the pinned SHA-1 certificate; 200 %q",
		tls.VersionName(resp.TLS.Version), tls.CipherSuiteName(resp.TLS.CipherSuite), body), nil
}

func (c *clients) register(ctx context.Context) (string, error) {
	form := url.Values{"hostname": {"demo-pc-01"}, "group": {"My Company\\Default"}}
	resp, body, err := c.do(ctx, http.MethodPost, "/secreg/secreg.dll?action=register", form)
	if err != nil {
		return "", err
	}
	var reg struct {
		HostID string `xml:"HostId,attr"`
	}
	if resp.StatusCode != http.StatusOK || xml.Unmarshal(body, &reg) != nil || reg.HostID == "" {
		return "", fmt.Errorf("got %d %q, want 200 and a <Registration HostId=…>", resp.StatusCode, body)
	}
	c.hostID = reg.HostID
	return fmt.Sprintf("200, HostId %s", reg.HostID), nil
}

func (c *clients) index(ctx context.Context) (string, error) {
	resp, body, err := c.get(ctx, "action=index&hostid="+c.hostID)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "<Profile") {
		return "", fmt.Errorf("got %d %q, want 200 and the index", resp.StatusCode, body)
	}
	c.lastIndex = body
	return fmt.Sprintf("200, %d-byte index (unsigned, passed through)", len(body)), nil
}

func (c *clients) profileViaGateway(ctx context.Context) (string, error) {
	resp, body, err := c.get(ctx, "action=profile&hostid="+c.hostID)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("got %d %q, want 200", resp.StatusCode, truncate(body))
	}
	if err := verifyWith(c.d.gwCert, body); err != nil {
		return "", fmt.Errorf("the profile does not verify with the gateway's certificate: %w", err)
	}
	return fmt.Sprintf("200, %d bytes, signature verifies with the gateway's certificate (%s)",
		len(body), policyguard.Fingerprint(c.d.gwCert)[:16]), nil
}

func (c *clients) console(ctx context.Context) (string, error) {
	resp, _, err := c.do(ctx, http.MethodGet, "/console/apps/sepm", nil)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusNotFound {
		return "", fmt.Errorf("got %d, want 404", resp.StatusCode)
	}
	return "404 from manager_request: only the client protocol's paths and methods reach the manager", nil
}

func (c *clients) storm(ctx context.Context) (string, error) {
	var ok, limited, status int
	var retryAfter string
	var first []byte
	sameIndex := true
	before := c.d.mgr.Requests(manager.CountIndex)
	for i := 0; i < 6; i++ {
		resp, body, err := c.get(ctx, "action=index&hostid="+c.hostID)
		if err != nil {
			return "", err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			ok++
			if first == nil {
				first = body
			}
			sameIndex = sameIndex && bytes.Equal(body, first)
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			limited++
			status, retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
		default:
			return "", fmt.Errorf("heartbeat %d got %d", i+1, resp.StatusCode)
		}
	}
	reached := c.d.mgr.Requests(manager.CountIndex) - before
	if limited == 0 {
		// Caddyfile.example's last_index: the limited heartbeats get the
		// client's last index ("nothing changed") instead of an error.
		if reached >= 6 || !sameIndex {
			return "", fmt.Errorf("6 heartbeats in a row: %d reached the manager, every answer 200 (same index: %v); want some held at the gateway", reached, sameIndex)
		}
		return fmt.Sprintf("6 heartbeats at once: %d reached the manager, the other %d were answered 200 with the client's last index (heartbeat_limit's last_index: \"nothing changed\", so a real client keeps its interval instead of retrying within 60 s)",
			reached, 6-reached), nil
	}
	if retryAfter == "" {
		return "", fmt.Errorf("6 heartbeats in a row: %d allowed, %d limited, Retry-After %q; want some limited with Retry-After", ok, limited, retryAfter)
	}
	return fmt.Sprintf("6 heartbeats at once: %d reached the manager, %d answered %d with Retry-After: %s s (heartbeat_limit's status: 429 by default, 503 in %s, a busy manager's answer)",
		ok, limited, status, retryAfter, configSEPM), nil
}

// managerClient speaks TLS 1.0 straight to the manager, as an XP-era client.
func (c *clients) managerClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10,
			InsecureSkipVerify: true, // SEPM clients with HttpsVerifyCA="0": trust comes from the signature
		}},
	}
}

func (c *clients) directProfile(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		c.d.managerURL+"/secars/secars.dll?action=profile&hostid="+c.hostID, nil)
	if err != nil {
		return nil, fmt.Errorf("building the direct request: %w", err)
	}
	req.Header.Set("User-Agent", "Smc")
	resp, err := c.managerClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("direct request: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("direct request: status %d, %v", resp.StatusCode, err)
	}
	return body, nil
}

func (c *clients) profileDirect(ctx context.Context) (string, error) {
	c.oldMgr = c.d.mgr.SigningCert()
	body, err := c.directProfile(ctx)
	if err != nil {
		return "", err
	}
	if err := verifyWith(c.oldMgr, body); err != nil {
		return "", fmt.Errorf("the manager's own profile does not verify with its certificate: %w", err)
	}
	return "200 over TLS 1.0, signature verifies with the manager's certificate it trusts", nil
}

func (c *clients) regenerate(context.Context) (string, error) {
	if err := c.d.mgr.Regenerate(); err != nil {
		return "", fmt.Errorf("regenerating: %w", err)
	}
	return "new key and certificate, pin now " + c.d.mgr.Pin(), nil
}

func (c *clients) profileDirectAfter(ctx context.Context) (string, error) {
	body, err := c.directProfile(ctx)
	if err != nil {
		return "", err
	}
	if err := verifyWith(c.oldMgr, body); err == nil {
		return "", fmt.Errorf("the new profile still verifies with the old certificate; the regeneration changed nothing")
	}
	return "signature fails against the certificate it trusts: without a new SyLink.xml this client is orphaned", nil
}

// indexRefused checks in: the index must come from the manager, through
// the pin, which refuses the manager's new certificate. The client gets
// either a 502 or, from heartbeat_limit's last_index, the index it already
// had ("nothing changed"); nothing the manager sent since the change.
func (c *clients) indexRefused(ctx context.Context) (string, error) {
	resp, body, err := c.get(ctx, "action=index&hostid="+c.hostID)
	if err != nil {
		return "", err
	}
	switch {
	case resp.StatusCode == http.StatusBadGateway:
		return "502: the gateway refuses the unpinned manager; the client keeps trusting the gateway's certificate and retries (degraded, not orphaned)", nil
	case resp.StatusCode == http.StatusOK && c.lastIndex != nil && bytes.Equal(body, c.lastIndex):
		return "200 with the index the client already had (heartbeat_limit's last_index): the pinned transport refused the manager's new certificate (an error line in the log), and the client stays on its interval instead of retrying (degraded, not orphaned)", nil
	}
	return "", fmt.Errorf("got %d %q, want 502 or the client's last index while the old pin is loaded", resp.StatusCode, truncate(body))
}

func (c *clients) repin(context.Context) (string, error) {
	if err := c.d.loadGateway(); err != nil {
		return "", err
	}
	return "pin " + c.d.mgr.Pin() + " and manager.crt written, config reloaded", nil
}

// verifyWith checks an enveloped signature against one trusted certificate,
// as a client that trusts exactly that certificate does.
func verifyWith(trusted *x509.Certificate, doc []byte) error {
	v, err := policyguard.NewVerifier([]*x509.Certificate{trusted}, policyguard.VerifyOptions{IgnoreExpiry: true})
	if err != nil {
		return err
	}
	_, err = v.Verify(doc)
	return err
}

func truncate(b []byte) string {
	if len(b) > 120 {
		return string(b[:120]) + "…"
	}
	return string(b)
}

package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

// Flavors `mgrsim demo --flavor` accepts; sepm is the default.
const (
	flavorSEPM         = "sepm"
	flavorCheckpoint   = "checkpoint"
	flavorPolicyServer = "policyserver"
)

// flavorDemo is the demo for the Check Point-style and PolicyServer-style
// managers: the manager, the gateway running examples/<flavor>.Caddyfile,
// and a script of requests.
type flavorDemo struct {
	out        io.Writer
	flavor     string
	dir        string
	removeDir  bool
	gw         *gateway
	mgr        *manager.Manager
	gwPort     int
	httpPort   int
	gatewayURL string
	front      *certs.Pair // the gateway's certificate (LEGACYGATE_FRONT_CERT)
	gateway    *http.Client
	oldSigner  []byte // PEM of the manager's certificate before its key changed
	failed     int
}

// setupFlavor starts the o.Flavor manager and the gateway (the legacygate
// binary o.Legacygate) with examples/<flavor>.Caddyfile from o.ConfigDir.
func setupFlavor(o Options) (*flavorDemo, error) {
	if err := CheckFlavor(o.Flavor); err != nil {
		return nil, err
	}
	d := &flavorDemo{out: o.Out, flavor: o.Flavor}
	var err error
	if d.dir, d.removeDir, err = makeDir(o.Dir); err != nil {
		return nil, err
	}
	if d.gw, err = newGateway(o.Legacygate, d.dir, o.configDir()); err != nil {
		d.close()
		return nil, err
	}
	if err := d.start(); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *flavorDemo) start() error {
	cfg := manager.Config{Flavor: d.flavor, HTTPAddr: "127.0.0.1:0"}
	if d.flavor == flavorCheckpoint {
		cfg = manager.Config{
			Flavor: d.flavor, HTTPSAddr: "127.0.0.1:0",
			TLSMin: tls.VersionTLS10, TLSMax: tls.VersionTLS10, Cert: certs.SHA1, Sign: manager.SignRSASHA1,
			ProfileSize: 64 << 10,
		}
	}
	mgr, err := manager.New(cfg)
	if err != nil {
		return fmt.Errorf("creating the emulated manager: %w", err)
	}
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("starting the emulated manager: %w", err)
	}
	d.mgr = mgr
	if err := d.makeFrontCert(); err != nil {
		return err
	}
	d.gwPort, d.httpPort = d.gw.httpsPort, d.gw.httpPort
	d.gatewayURL = fmt.Sprintf("https://127.0.0.1:%d", d.gwPort)
	fmt.Fprintf(d.out, "legacygate demo (%s): everything on 127.0.0.1, files in %s\n\n", d.flavor, d.dir)
	if d.flavor == flavorCheckpoint {
		fmt.Fprintf(d.out, "  manager  %s  TLS 1.0 only, SHA-1 self-signed certificate, pin %s\n", d.managerURL(), mgr.Pin())
	} else {
		fmt.Fprintf(d.out, "  manager  %s  plain HTTP SOAP (MAWebService2)\n", d.managerURL())
	}
	fmt.Fprintf(d.out, "  gateway  %s  TLS 1.2 and 1.3 only, %s as shipped\n\n", d.gatewayURL, flavorConfigs[d.flavor])
	return d.loadGateway(d.mgr.Pair().CertPEM())
}

// makeFrontCert writes the gateway's certificate for 127.0.0.1, which the
// examples read from LEGACYGATE_FRONT_CERT and LEGACYGATE_FRONT_KEY.
func (d *flavorDemo) makeFrontCert() error {
	pair, err := certs.New(certs.Modern, "legacygate demo gateway", 2048)
	if err != nil {
		return fmt.Errorf("making the gateway's certificate: %w", err)
	}
	if _, _, err := pair.WriteFiles(d.dir, "front"); err != nil {
		return fmt.Errorf("writing the gateway's certificate: %w", err)
	}
	d.front = pair
	return nil
}

func (d *flavorDemo) managerURL() string {
	if a := d.mgr.Addrs(); a.HTTPS != "" {
		return "https://" + a.HTTPS
	}
	return "http://" + d.mgr.Addrs().HTTP
}

// flavorConfigs are the shipped configurations the flavors run.
var flavorConfigs = map[string]string{
	flavorCheckpoint:   configCheckpoint,
	flavorPolicyServer: configPolicyServer,
}

// loadGateway writes the package signer's certificate and has the gateway
// serve the flavor's example with the manager's current address and pin.
func (d *flavorDemo) loadGateway(signerPEM []byte) error {
	mgrCert := filepath.Join(d.dir, "manager.crt")
	if err := os.WriteFile(mgrCert, signerPEM, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", mgrCert, err)
	}
	vars := map[string]string{
		"LEGACYGATE_SITE":       "127.0.0.1:" + strconv.Itoa(d.gwPort),
		"LEGACYGATE_BIND":       "127.0.0.1",
		"LEGACYGATE_FRONT_CERT": quote(filepath.Join(d.dir, "front.crt")),
		"LEGACYGATE_FRONT_KEY":  quote(filepath.Join(d.dir, "front.key")),
	}
	if d.flavor == flavorCheckpoint {
		vars["CHECKPOINT_MANAGER"] = d.mgr.Addrs().HTTPS
		vars["CHECKPOINT_PIN"] = d.mgr.Pin()
		vars["CHECKPOINT_MANAGER_CERT"] = quote(mgrCert)
	} else {
		vars["POLICYSERVER_MANAGER"] = d.mgr.Addrs().HTTP
	}
	return d.gw.load(flavorConfigs[d.flavor], vars, filepath.Join(d.dir, "Caddyfile"))
}

func (d *flavorDemo) close() {
	if err := d.gw.stop(); err != nil {
		fmt.Fprintf(d.out, "stopping the gateway: %v\n", err)
	}
	if d.mgr != nil {
		d.mgr.Close()
	}
	if d.removeDir {
		os.RemoveAll(d.dir)
	}
}

// runSteps runs the flavor's script and returns how many steps misbehaved.
func (d *flavorDemo) runSteps(ctx context.Context) int {
	steps := []step{
		{"a TLS 1.0 client goes to the gateway", d.oldTLS(tls.VersionTLS10)},
		{"a TLS 1.1 client goes to the gateway", d.oldTLS(tls.VersionTLS11)},
	}
	if d.flavor == flavorCheckpoint {
		steps = append(steps, d.checkpointSteps()...)
	} else {
		steps = append(steps, d.policyServerSteps()...)
	}
	for i, s := range steps {
		if ctx.Err() != nil {
			fmt.Fprintf(d.out, "interrupted\n")
			return d.failed + 1
		}
		what, err := s.run(ctx)
		mark := "ok  "
		if err != nil {
			mark, what = "FAIL", err.Error()
			d.failed++
		}
		fmt.Fprintf(d.out, "%2d. [%s] %s\n        %s\n", i+1, mark, s.name, what)
	}
	fmt.Fprintf(d.out, "\n%d of %d steps behaved as expected.\n", len(steps)-d.failed, len(steps))
	return d.failed
}

func (d *flavorDemo) oldTLS(version uint16) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		if _, err := d.send(ctx, http.MethodGet, "/", nil, nil); err != nil {
			return "", err // waits until the gateway's certificate is issued
		}
		dialer := &tls.Dialer{Config: &tls.Config{MinVersion: version, MaxVersion: version, InsecureSkipVerify: true}}
		conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(d.gwPort)))
		if err == nil {
			conn.Close()
			return "", fmt.Errorf("the gateway accepted %s", tls.VersionName(version))
		}
		return "refused: " + err.Error(), nil
	}
}

// flavorResult is one answer of the gateway.
type flavorResult struct {
	status int
	header http.Header
	body   []byte
}

// send makes one request through the gateway, retrying briefly while the
// gateway's certificate is being issued at start.
func (d *flavorDemo) send(ctx context.Context, method, path string, header map[string]string, body []byte) (flavorResult, error) {
	client, err := d.gatewayClient()
	if err != nil {
		return flavorResult{}, err
	}
	var lastErr error
	for range 20 {
		req, err := http.NewRequestWithContext(ctx, method, d.gatewayURL+path, bytes.NewReader(body))
		if err != nil {
			return flavorResult{}, fmt.Errorf("building request %s: %w", path, err)
		}
		for k, v := range header {
			req.Header.Set(k, v)
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
			return flavorResult{}, fmt.Errorf("reading %s: %w", path, err)
		}
		return flavorResult{resp.StatusCode, resp.Header, data}, nil
	}
	return flavorResult{}, fmt.Errorf("gateway unreachable: %w", lastErr)
}

func (d *flavorDemo) gatewayClient() (*http.Client, error) {
	if d.gateway != nil {
		return d.gateway, nil
	}
	pool := x509.NewCertPool()
	pool.AddCert(d.front.Cert)
	d.gateway = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	return d.gateway, nil
}

func (d *flavorDemo) checkpointSteps() []step {
	return []step{
		{"a stock TLS 1.2+ client goes straight to the manager", d.cpStockToManager},
		{"heartbeat through the gateway", d.cpHeartbeat},
		{"encrypted policy blob through the gateway", d.cpPolicy},
		{"client package through the gateway, its .p7s checked by the gateway", d.cpPackage(http.StatusOK)},
		{"a heartbeat storm from one endpoint", d.cpStorm},
		{"the manager regenerates its key (the accident that orphans clients)", d.cpRegenerate},
		{"heartbeat through the gateway (old pin still loaded)", d.cpHeartbeatStatus("EP-DEMO-2", http.StatusBadGateway)},
		{"the administrator pins the manager's new TLS key (legacy_tls) and reloads", d.cpRepin(false)},
		{"heartbeat through the gateway again", d.cpHeartbeatStatus("EP-DEMO-3", http.StatusOK)},
		{"client package through the gateway (package signer not pinned yet)", d.cpPackage(http.StatusBadGateway)},
		{"the administrator pins the new package signer (package_guard) and reloads", d.cpRepin(true)},
		{"client package through the gateway again", d.cpPackage(http.StatusOK)},
	}
}

func (d *flavorDemo) cpStockToManager(ctx context.Context) (string, error) {
	dialer := &tls.Dialer{Config: &tls.Config{MinVersion: tls.VersionTLS12}}
	conn, err := dialer.DialContext(ctx, "tcp", d.mgr.Addrs().HTTPS)
	if err == nil {
		conn.Close()
		return "", errors.New("the manager accepted a TLS 1.2 handshake; the demo manager should be TLS 1.0 only")
	}
	return "refused, as Caddy's stock transport is: " + err.Error(), nil
}

func (d *flavorDemo) heartbeatHeader(id string) map[string]string {
	return map[string]string{manager.CPEndpointHeader: id, "Content-Type": "text/plain"}
}

func (d *flavorDemo) cpHeartbeat(ctx context.Context) (string, error) {
	r, err := d.send(ctx, http.MethodPost, manager.CPHeartbeatPath, d.heartbeatHeader("EP-DEMO-1"), []byte("status=ok"))
	if err != nil {
		return "", err
	}
	var hb manager.CPHeartbeat
	if r.status != http.StatusOK || json.Unmarshal(r.body, &hb) != nil {
		return "", fmt.Errorf("got %d %q, want 200 and the heartbeat answer", r.status, truncate(r.body))
	}
	return fmt.Sprintf("200 over TLS 1.2+, manager reached over TLS 1.0 with the pinned SHA-1 certificate: interval %d s, policy %s", hb.Interval, hb.PolicyVersion), nil
}

func (d *flavorDemo) cpPolicy(ctx context.Context) (string, error) {
	r, err := d.send(ctx, http.MethodGet, manager.CPPolicyPrefix+manager.CPBlades[0], nil, nil)
	if err != nil {
		return "", err
	}
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "application/octet-stream" {
		return "", fmt.Errorf("got %d %s, want 200 application/octet-stream", r.status, r.header.Get("Content-Type"))
	}
	return fmt.Sprintf("200, %d bytes of AES-GCM ciphertext passed through unchanged", len(r.body)), nil
}

func (d *flavorDemo) cpPackage(want int) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		path := manager.CPPackagePrefix + manager.CPPackages[0]
		r, err := d.send(ctx, http.MethodGet, path, nil, nil)
		if err != nil {
			return "", err
		}
		if r.status != want {
			return "", fmt.Errorf("got %d %q, want %d", r.status, truncate(r.body), want)
		}
		if want != http.StatusOK {
			reason, err := d.lastRefusal()
			if err != nil {
				return "", err
			}
			return "502: package_guard refused it (" + reason + "); nothing of it reached the client (degraded, not orphaned)", nil
		}
		sig, err := d.send(ctx, http.MethodGet, path+manager.CPSignatureSuffix, nil, nil)
		if err != nil {
			return "", err
		}
		if err := verifyDetached(r.body, sig.body, d.mgr.SigningCert()); err != nil {
			return "", fmt.Errorf("the forwarded package does not verify: %w", err)
		}
		return fmt.Sprintf("200, %d bytes, byte for byte what the manager signed (signer %s)", len(r.body), d.mgr.SigningCert().Subject.CommonName), nil
	}
}

// verifyDetached checks a CMS detached signature by trusted's key.
func verifyDetached(content, p7s []byte, trusted *x509.Certificate) error {
	p7, err := pkcs7.Parse(p7s)
	if err != nil {
		return err
	}
	if s := p7.GetOnlySigner(); s == nil || !bytes.Equal(s.RawSubjectPublicKeyInfo, trusted.RawSubjectPublicKeyInfo) {
		return errors.New("signed by another key")
	}
	p7.Content = content
	return p7.Verify()
}

func (d *flavorDemo) cpStorm(ctx context.Context) (string, error) {
	var ok, limited int
	var retryAfter string
	for range 6 {
		r, err := d.send(ctx, http.MethodPost, manager.CPHeartbeatPath, d.heartbeatHeader("EP-DEMO-STORM"), nil)
		if err != nil {
			return "", err
		}
		switch r.status {
		case http.StatusOK:
			ok++
		case http.StatusServiceUnavailable, http.StatusTooManyRequests:
			limited++
			retryAfter = r.header.Get("Retry-After")
		default:
			return "", fmt.Errorf("heartbeat got %d", r.status)
		}
	}
	if limited == 0 || retryAfter == "" {
		return "", fmt.Errorf("6 heartbeats: %d allowed, %d limited; want some limited with Retry-After", ok, limited)
	}
	return fmt.Sprintf("6 heartbeats at once from one X-Endpoint-Id: %d reached the manager, %d answered 503 with Retry-After: %s s", ok, limited, retryAfter), nil
}

func (d *flavorDemo) cpRegenerate(context.Context) (string, error) {
	d.oldSigner = d.mgr.Pair().CertPEM()
	if err := d.mgr.Regenerate(); err != nil {
		return "", fmt.Errorf("regenerating: %w", err)
	}
	return "new key and certificate, pin now " + d.mgr.Pin(), nil
}

// cpHeartbeatStatus sends a heartbeat from endpoint id and expects status.
// The first heartbeat after a key change may still ride a connection the
// gateway opened before it (the manager closes those after one more
// response), so a second one is sent when the first did not get want.
func (d *flavorDemo) cpHeartbeatStatus(id string, want int) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		var r flavorResult
		var err error
		for range 2 {
			if r, err = d.send(ctx, http.MethodPost, manager.CPHeartbeatPath, d.heartbeatHeader(id), nil); err != nil || r.status == want {
				break
			}
		}
		if err != nil {
			return "", err
		}
		if r.status != want {
			return "", fmt.Errorf("got %d %q, want %d", r.status, truncate(r.body), want)
		}
		if want != http.StatusOK {
			return "502: legacy_tls refuses the manager's new, unpinned certificate (the endpoint retries: degraded, not orphaned)", nil
		}
		return "200: the manager is reached again over TLS 1.0", nil
	}
}

// cpRepin reloads the gateway with the manager's current pin and, with
// signer, its current certificate as the package signer; without, the
// package signer stays the old certificate.
func (d *flavorDemo) cpRepin(signer bool) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		cert := d.oldSigner
		if signer {
			cert = d.mgr.Pair().CertPEM()
		}
		if err := d.loadGateway(cert); err != nil {
			return "", err
		}
		if signer {
			return "manager.crt (upstream_cert) replaced by the new certificate, config reloaded", nil
		}
		return "pin " + d.mgr.Pin() + " written, config reloaded; manager.crt still holds the old certificate", nil
	}
}

// lastRefusal is the reason of the gateway's latest "package refused" log line.
func (d *flavorDemo) lastRefusal() (string, error) {
	logFile := filepath.Join(d.dir, "gateway.log")
	data, err := os.ReadFile(logFile)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", logFile, err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var entry struct {
			Msg    string `json:"msg"`
			Reason string `json:"reason"`
		}
		if json.Unmarshal([]byte(lines[i]), &entry) == nil && entry.Msg == "package refused" {
			return "log: reason " + entry.Reason, nil
		}
	}
	return "", fmt.Errorf("no \"package refused\" line in %s", logFile)
}

func (d *flavorDemo) policyServerSteps() []step {
	return []step{
		{"a SOAP CheckIn through the gateway", d.psCheckIn},
		{"the same message sent again (a replay)", d.psReplay},
		{"a message with a DOCTYPE (entity tricks)", d.psDoctype},
		{"a check-in storm from one DeviceID", d.psStorm},
		{"the manager fails in the middle of a request", d.psAbort},
	}
}

func (d *flavorDemo) soap(ctx context.Context, device string, body []byte, action string) (flavorResult, error) {
	if body == nil {
		body, action = manager.BuildPSRequest(manager.PSRequest{Operation: "CheckIn", DeviceID: device, MessageID: manager.NewMessageID(), Payload: []byte("ciphertext")})
	}
	return d.send(ctx, http.MethodPost, manager.PSPath, map[string]string{"SOAPAction": action, "Content-Type": "text/xml; charset=utf-8"}, body)
}

func (d *flavorDemo) psCheckIn(ctx context.Context) (string, error) {
	r, err := d.soap(ctx, "DEV-DEMO-1", nil, "")
	if err != nil {
		return "", err
	}
	answer, err := manager.ParsePSResponse(r.body, "CheckIn")
	if r.status != http.StatusOK || err != nil {
		return "", fmt.Errorf("got %d (%v), want 200 and a SOAP answer", r.status, err)
	}
	return fmt.Sprintf("200 over TLS 1.2+, manager reached over plain HTTP: policy %s", answer.PolicyVersion), nil
}

func (d *flavorDemo) psReplay(ctx context.Context) (string, error) {
	body, action := manager.BuildPSRequest(manager.PSRequest{Operation: "CheckIn", DeviceID: "DEV-DEMO-2", MessageID: manager.NewMessageID()})
	if r, err := d.soap(ctx, "", body, action); err != nil || r.status != http.StatusOK {
		return "", fmt.Errorf("first send: %d %v", r.status, err)
	}
	r, err := d.soap(ctx, "", body, action)
	if err != nil {
		return "", err
	}
	if _, perr := manager.ParsePSResponse(r.body, "CheckIn"); r.status != http.StatusInternalServerError || perr == nil {
		return "", fmt.Errorf("got %d, want the manager's SOAP fault for a replay", r.status)
	}
	return "500 SOAP fault from the manager: keys are single-use, so the gateway never retries or replays", nil
}

func (d *flavorDemo) psDoctype(ctx context.Context) (string, error) {
	before := d.mgr.Requests(manager.CountPSRequest)
	body, action := manager.BuildPSRequest(manager.PSRequest{Operation: "CheckIn", DeviceID: "DEV-DEMO-3", MessageID: manager.NewMessageID()})
	body = bytes.Replace(body, []byte("?>"), []byte(`?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>`), 1)
	r, err := d.soap(ctx, "", body, action)
	if err != nil {
		return "", err
	}
	if r.status != http.StatusBadRequest || d.mgr.Requests(manager.CountPSRequest) != before {
		return "", fmt.Errorf("got %d, manager saw %d requests; want 400 and none", r.status, d.mgr.Requests(manager.CountPSRequest)-before)
	}
	return "400 from xml_guard; the manager never saw it", nil
}

func (d *flavorDemo) psStorm(ctx context.Context) (string, error) {
	var ok, limited int
	for range 8 {
		r, err := d.soap(ctx, "DEV-DEMO-STORM", nil, "")
		if err != nil {
			return "", err
		}
		switch r.status {
		case http.StatusOK:
			ok++
		case http.StatusServiceUnavailable, http.StatusTooManyRequests:
			limited++
		default:
			return "", fmt.Errorf("check-in got %d", r.status)
		}
	}
	if limited == 0 {
		return "", fmt.Errorf("8 check-ins: all %d allowed; want some limited", ok)
	}
	return fmt.Sprintf("8 check-ins at once from one <DeviceID>: %d reached the manager, %d answered 503", ok, limited), nil
}

func (d *flavorDemo) psAbort(ctx context.Context) (string, error) {
	d.mgr.SetFault(manager.Fault{Abort: true})
	defer d.mgr.SetFault(manager.Fault{})
	before := d.mgr.Requests(manager.CountPSRequest)
	r, err := d.soap(ctx, "DEV-DEMO-4", nil, "")
	if err != nil {
		return "", err
	}
	time.Sleep(300 * time.Millisecond) // a retry would have arrived by now
	attempts := d.mgr.Requests(manager.CountPSRequest) - before
	if r.status != http.StatusBadGateway || attempts != 1 {
		return "", fmt.Errorf("got %d, manager saw %d attempts; want 502 and exactly one", r.status, attempts)
	}
	return "502 to the client; the manager received the request once (no retry, lb_retries 0)", nil
}

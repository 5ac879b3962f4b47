package demo

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
	"github.com/legacygate/legacygate/integration/ports"
	"github.com/legacygate/legacygate/policyguard"
)

// demo holds what the steps share: the folder, the manager, the gateway.
type demo struct {
	out        io.Writer
	dir        string
	removeDir  bool
	gw         *gateway
	mgr        *manager.Manager
	storyMgr   *manager.Manager // the story's manager, once the story started
	gatewayURL string
	managerURL string
	gwPort     int
	httpPort   int
	gwCert     *x509.Certificate // the gateway's signing certificate, which clients trust
	failed     int
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.out, format, args...) }

// setup makes the keys, starts the manager and the gateway (the legacygate
// binary o.Legacygate) with Caddyfile.example from o.ConfigDir.
func setup(o Options) (*demo, error) {
	d := &demo{out: o.Out}
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

func (d *demo) start() error {
	if err := d.makeGatewayKey(); err != nil {
		return err
	}
	mgrDir := filepath.Join(d.dir, "manager")
	if err := os.MkdirAll(mgrDir, 0o700); err != nil {
		return fmt.Errorf("making %s: %w", mgrDir, err)
	}
	mgr, err := manager.New(manager.Config{
		HTTPSAddr: "127.0.0.1:0",
		HTTPAddr:  "127.0.0.1:0",
		TLSMin:    tls.VersionTLS10,
		TLSMax:    tls.VersionTLS10,
		Cert:      certs.SHA1,
		Dir:       mgrDir,
	})
	if err != nil {
		return fmt.Errorf("creating the emulated manager: %w", err)
	}
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("starting the emulated manager: %w", err)
	}
	d.mgr = mgr
	d.managerURL = "https://" + mgr.Addrs().HTTPS
	d.gwPort, d.httpPort = d.gw.httpsPort, d.gw.httpPort
	d.gatewayURL = fmt.Sprintf("https://127.0.0.1:%d", d.gwPort)
	d.printf("legacygate demo: everything on 127.0.0.1, files in %s\n\n", d.dir)
	d.printf("  manager  %s  TLS 1.0 only, SHA-1 self-signed certificate\n", d.managerURL)
	d.printf("           pin %s\n", mgr.Pin())
	d.printf("  gateway  %s  TLS 1.2 and 1.3 only (Caddy's internal CA), %s as shipped\n\n", d.gatewayURL, configSEPM)
	return d.loadGateway()
}

// makeGatewayKey writes the gateway's signing key and certificate.
func (d *demo) makeGatewayKey() error {
	key, cert, err := policyguard.GenerateSigningKey(2048, "legacygate demo signing")
	if err != nil {
		return fmt.Errorf("generating the gateway signing key: %w", err)
	}
	keyPEM, certPEM, err := policyguard.EncodeKeyPair(key, cert)
	if err != nil {
		return fmt.Errorf("encoding the gateway signing key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "gateway.key"), keyPEM, 0o600); err != nil {
		return fmt.Errorf("writing gateway.key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "gateway.crt"), certPEM, 0o644); err != nil {
		return fmt.Errorf("writing gateway.crt: %w", err)
	}
	d.gwCert = cert
	return nil
}

// loadGateway writes the manager's current certificate where SEPM_CERT
// points and has the gateway serve Caddyfile.example with the manager's
// current pin: `legacygate run` the first time, `legacygate reload` after.
func (d *demo) loadGateway() error {
	mgrCert := filepath.Join(d.dir, "manager.crt")
	if err := os.WriteFile(mgrCert, d.mgr.Pair().CertPEM(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", mgrCert, err)
	}
	return d.gw.load(configSEPM, d.sepmVars(d.mgr.Addrs().HTTPS, d.mgr.Pin(), mgrCert), filepath.Join(d.dir, "Caddyfile"))
}

// sepmVars are Caddyfile.example's environment variables for a manager at
// addr with the given pins and certificates (several: space-separated).
func (d *demo) sepmVars(addr, pins string, certs ...string) map[string]string {
	return map[string]string{
		"LEGACYGATE_SITE":         "127.0.0.1:" + strconv.Itoa(d.gwPort),
		"LEGACYGATE_SITE_HOST":    "127.0.0.1",
		"LEGACYGATE_SITE_PORT":    strconv.Itoa(d.gwPort),
		"LEGACYGATE_ERROR_LOG":    quote(filepath.Join(d.dir, "gateway-errors.log")),
		"LEGACYGATE_BIND":         "127.0.0.1",
		"SEPM_MANAGER":            addr,
		"SEPM_PIN":                pins,
		"SEPM_SERVER_NAME":        "localhost",
		"SEPM_CERT":               quoteAll(certs...),
		"LEGACYGATE_SIGNING_KEY":  quote(filepath.Join(d.dir, "gateway.key")),
		"LEGACYGATE_SIGNING_CERT": quote(filepath.Join(d.dir, "gateway.crt")),
	}
}

func (d *demo) close() {
	if err := d.gw.stop(); err != nil {
		d.printf("stopping the gateway: %v\n", err)
	}
	if d.mgr != nil {
		d.mgr.Close()
	}
	if d.storyMgr != nil {
		d.storyMgr.Close()
	}
	if d.removeDir {
		os.RemoveAll(d.dir)
	}
}

// freePort is ports.Free: the gateway binds with SO_REUSEPORT, so a port
// another process was also given would be shared silently.
func freePort() (int, error) { return ports.Free() }

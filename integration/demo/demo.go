package demo

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/template"

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
// binary bin) with its config.
func setup(bin, dir string, out io.Writer) (*demo, error) {
	d := &demo{out: out}
	var err error
	if d.dir, d.removeDir, err = makeDir(dir); err != nil {
		return nil, err
	}
	if d.gw, err = newGateway(bin, d.dir); err != nil {
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
	if d.gwPort, err = freePort(); err != nil {
		return err
	}
	if d.httpPort, err = freePort(); err != nil {
		return err
	}
	d.gatewayURL = fmt.Sprintf("https://127.0.0.1:%d", d.gwPort)
	d.printf("legacygate demo: everything on 127.0.0.1, files in %s\n\n", d.dir)
	d.printf("  manager  %s  TLS 1.0 only, SHA-1 self-signed certificate\n", d.managerURL)
	d.printf("           pin %s\n", mgr.Pin())
	d.printf("  gateway  %s  TLS 1.2 and 1.3 only (Caddy's internal CA)\n\n", d.gatewayURL)
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

// loadGateway writes the manager's current certificate where the Caddyfile
// points, writes the Caddyfile with the manager's current pin and has the
// gateway serve it: `legacygate run` the first time, `legacygate reload` after.
func (d *demo) loadGateway() error {
	mgrCert := filepath.Join(d.dir, "manager.crt")
	if err := os.WriteFile(mgrCert, d.mgr.Pair().CertPEM(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", mgrCert, err)
	}
	return d.gw.load(caddyfileTemplate, map[string]any{
		"Dir":      d.dir,
		"Port":     d.gwPort,
		"HTTPPort": d.httpPort,
		"Manager":  d.mgr.Addrs().HTTPS,
		"Pin":      d.mgr.Pin(),
	}, filepath.Join(d.dir, "Caddyfile"))
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

// caddyfileTemplate is the gateway's configuration: Caddyfile.example's
// shape on loopback ports, with the manager's pin and certificate.
var caddyfileTemplate = template.Must(template.New("Caddyfile").Parse(`{
	admin {{.Admin}}
	persist_config off
	skip_install_trust
	storage file_system {{.Dir}}/caddy
	http_port {{.HTTPPort}}
	https_port {{.Port}}
	log {
		output file {{.Dir}}/gateway.log
		format json
	}
}

https://127.0.0.1:{{.Port}} {
	tls internal {
		protocols tls1.2 tls1.3
	}
	header -Server
	@client path /secars/* /secreg/*
	handle @client {
		@heartbeat {
			path /secars/secars.dll
			query action=index
		}
		heartbeat_limit @heartbeat {
			key {query.hostid}
			rate 1/5s
			burst 3
		}
		policy_guard /secars/secars.dll {
			upstream_cert {{.Dir}}/manager.crt
			signing_key {{.Dir}}/gateway.key {{.Dir}}/gateway.crt
			roots Profile ServerSettings
			allow_non_xml text/plain
		}
		reverse_proxy {{.Manager}} {
			transport legacy_tls {
				pin {{.Pin}}
				min_version tls1.0
			}
			header_down -Server
			header_down -X-Powered-By
		}
	}
	handle {
		respond 404
	}
}
`))

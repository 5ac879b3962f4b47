// Package initcmd is `legacygate init`: it probes a manager, pins it,
// takes its signing certificate, makes the gateway's signing key and
// writes a complete Caddyfile for it, with the day-0 rotation when given
// the manager's key.
package initcmd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "init",
		Usage: "--manager <host:port> [--flavor sepm|checkpoint|policyserver] [--manager-key <server.key>] [--sylink <file>] [--site <name[:port]>] [--out <dir>] [--force]",
		Short: "Probes a manager and writes a complete gateway configuration for it",
		Long: `
Connects to the manager at --manager with every TLS version from 1.0 and every
cipher suite Go has, verifying nothing, and reports what it accepts and what
certificate it presents (CN-only, self-signed, SHA-1). Then it writes into
--out (default: the current folder):

  Caddyfile     a complete, commented configuration with the manager's pin,
                the TLS versions and suites it needs, its signing
                certificate and the gateway's key: it starts as written
  manager.crt   the manager's signing certificate: the TLS certificate (the
                same key signs policies on SEPM), or the certificates of the
                SyLink file given with --sylink
  gateway.key, gateway.crt
                the gateway's new signing key (RSA 2048) and certificate
  NEXT-STEPS.txt
                what to check and do next

With --manager-key (sepm only; on SEPM: apache\conf\ssl\server.key) it writes
the day-0 configuration for a fleet that trusts the manager's certificate
today: the manager's key (copied to manager.key) signs as the current key,
the gateway's as the next one, and a rotation window of 30 days opens now
(--window-start, --window-length) to move every client to the gateway's key
without orphaning any. The key must be the one of the certificate the
manager presents.

Check the printed certificate against the manager's console: init trusts
whatever answers at --manager. Refuses (exit 1) when the manager is
unreachable, when the key does not match, or when a file it would write
exists (unless --force).`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Args = cobra.NoArgs
			f := cmd.Flags()
			f.String("manager", "", "The manager's address, host:port (required)")
			f.String("flavor", "sepm", "The manager's protocol: sepm, checkpoint or policyserver")
			f.String("manager-key", "", "The manager's private key (SEPM: apache\\conf\\ssl\\server.key), for the day-0 configuration")
			f.String("sylink", "", "A SyLink.xml whose <ServerCertificate> is the manager's signing certificate")
			f.String("site", "", "The name (and port) clients reach the gateway at (default: the manager's host name, else localhost; port 443)")
			f.String("out", ".", "The folder to write into")
			f.String("server-name", "", "SNI to send to the manager (default: its host, unless an IP address)")
			f.String("window-start", "", "Day-0 window start, RFC 3339 (default: now)")
			f.Duration("window-length", 30*24*time.Hour, "Day-0 window length")
			f.Duration("timeout", 10*time.Second, "Time limit for each handshake with the manager")
			f.Bool("force", false, "Replace files in --out")
			cmd.RunE = func(cmd *cobra.Command, _ []string) error {
				cmd.SilenceUsage = true
				opts := Options{}
				opts.Manager, _ = f.GetString("manager")
				opts.Flavor, _ = f.GetString("flavor")
				opts.ManagerKey, _ = f.GetString("manager-key")
				opts.SyLink, _ = f.GetString("sylink")
				opts.Site, _ = f.GetString("site")
				opts.Out, _ = f.GetString("out")
				opts.ServerName, _ = f.GetString("server-name")
				start, _ := f.GetString("window-start")
				opts.WindowLength, _ = f.GetDuration("window-length")
				opts.Timeout, _ = f.GetDuration("timeout")
				opts.Force, _ = f.GetBool("force")
				if start != "" {
					t, err := time.Parse(time.RFC3339, start)
					if err != nil {
						return fmt.Errorf("--window-start: %w", err)
					}
					opts.WindowStart = t
				}
				ctx := cmd.Context()
				if ctx == nil {
					ctx = context.Background()
				}
				return Run(ctx, opts, cmd.OutOrStdout())
			}
		},
	})
}

// Options are init's flags.
type Options struct {
	Manager, Flavor, ManagerKey, SyLink, Site, Out, ServerName string
	WindowStart                                                time.Time // zero: now
	WindowLength                                               time.Duration
	Timeout                                                    time.Duration
	Force                                                      bool
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Run probes the manager and writes the configuration; w gets the report.
func Run(ctx context.Context, o Options, w io.Writer) error {
	if err := o.check(); err != nil {
		return err
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	probe, err := ProbeManager(ctx, o.Manager, o.ServerName, o.Timeout)
	if err != nil {
		return err
	}
	writeProbe(w, probe)

	signing := []*x509.Certificate{probe.Leaf}
	source := "the TLS certificate (SEPM signs policies with the same key)"
	sylinkSHA1 := false
	if o.SyLink != "" {
		data, err := os.ReadFile(o.SyLink)
		if err != nil {
			return fmt.Errorf("--sylink: %w", err)
		}
		info, err := ParseSyLink(data)
		if err != nil {
			return fmt.Errorf("--sylink %s: %w", o.SyLink, err)
		}
		signing, sylinkSHA1 = info.Certs, info.SHA1Signature
		source = "the <ServerCertificate> of " + o.SyLink
	}
	fmt.Fprintf(w, "signing certificate: %s from %s\n", signing[0].Subject, source)

	var managerKey []byte
	if o.ManagerKey != "" {
		// The current key must sign what clients trust: the certificate
		// they hold, and the manager's TLS key for the pin to mean anything.
		if managerKey, err = LoadManagerKey(o.ManagerKey, probe.Leaf); err != nil {
			return err
		}
		if !signing[0].Equal(probe.Leaf) {
			if _, err := LoadManagerKey(o.ManagerKey, signing[0]); err != nil {
				return fmt.Errorf("%w (the SyLink's certificate)", err)
			}
		}
		fmt.Fprintln(w, "manager key: matches the manager's certificate")
	}

	out, err := filepath.Abs(o.Out)
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	host, port, err := siteOf(o.Site, o.Manager)
	if err != nil {
		return err
	}
	gwKey, gwCert, _, err := newGatewayKey("legacygate signing " + host)
	if err != nil {
		return err
	}
	cfg := &config{
		Flavor:      o.Flavor,
		Written:     now().UTC().Format(time.RFC3339),
		Manager:     o.Manager,
		Probe:       probeLines(probe),
		SiteHost:    host,
		SitePort:    port,
		AdminAddr:   "localhost:2019",
		Pin:         probe.Pin,
		ServerName:  probe.ServerName,
		MinVersion:  versionName(probe.Best()),
		ManagerCert: filepath.Join(out, "manager.crt"),
		GatewayKey:  filepath.Join(out, "gateway.key"),
		GatewayCert: filepath.Join(out, "gateway.crt"),
		ErrorLog:    filepath.Join(out, "errors.log"),
	}
	if probe.Best() == tls.VersionTLS13 {
		cfg.MinVersion = "tls1.3"
	} else if probe.DefaultSuitesVersion != probe.Best() {
		for _, s := range probe.Suites {
			cfg.CipherSuites = append(cfg.CipherSuites, tls.CipherSuiteName(s))
		}
	}
	if probe.TLS12SignatureRefused && probe.Best() < tls.VersionTLS12 {
		cfg.MaxVersion = cfg.MinVersion
	}
	cfg.AllowSHA1, cfg.AllowSHA1Why = allowSHA1(probe, sylinkSHA1, o.SyLink != "")
	cfg.IgnoreExpiry = now().After(signing[0].NotAfter)

	files := []outFile{{"manager.crt", certPEM(signing...), 0o644}, {"gateway.key", gwKey, 0o600}, {"gateway.crt", gwCert, 0o644}}
	if managerKey != nil {
		start := o.WindowStart
		if start.IsZero() {
			start = now().UTC().Truncate(time.Minute)
		}
		cfg.DayZero = true
		cfg.ManagerKey = filepath.Join(out, "manager.key")
		cfg.WindowStart = start.UTC().Format(time.RFC3339)
		cfg.WindowEnd = start.Add(o.WindowLength).UTC().Format(time.RFC3339)
		files = append(files, outFile{"manager.key", managerKey, 0o600})
	}
	caddyfile, err := renderCaddyfile(cfg)
	if err != nil {
		return err
	}
	files = append(files, outFile{"Caddyfile", caddyfile, 0o644}, outFile{"NEXT-STEPS.txt", nextSteps(cfg), 0o644})
	if err := writeFiles(out, o.Force, files); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nwrote %s: Caddyfile, manager.crt, gateway.key, gateway.crt%s, NEXT-STEPS.txt\n\n",
		out, map[bool]string{true: ", manager.key"}[cfg.DayZero])
	_, err = w.Write(nextSteps(cfg))
	return err
}

func (o *Options) check() error {
	if o.Manager == "" {
		return errors.New("--manager: the manager's host:port is required")
	}
	if _, p, err := net.SplitHostPort(o.Manager); err != nil || p == "" {
		return fmt.Errorf("--manager %q: want host:port (SEPM clients use 443 or 8443)", o.Manager)
	}
	if _, ok := templates[o.Flavor]; !ok {
		return fmt.Errorf("--flavor: unknown flavor %q, want sepm, checkpoint or policyserver", o.Flavor)
	}
	if o.ManagerKey != "" && o.Flavor != "sepm" {
		return fmt.Errorf("--manager-key: the day-0 configuration is for sepm (clients that pin the manager's signing certificate), not %s", o.Flavor)
	}
	if o.WindowLength <= 0 {
		o.WindowLength = 30 * 24 * time.Hour
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Out == "" {
		o.Out = "."
	}
	return nil
}

// siteOf is the gateway's name and port: --site, else the manager's host
// name (clients already use it) or localhost for an IP address, port 443.
func siteOf(site, manager string) (string, int, error) {
	if site == "" {
		host, _, _ := net.SplitHostPort(manager)
		if net.ParseIP(host) != nil {
			host = "localhost"
		}
		return host, 443, nil
	}
	host, portText, err := net.SplitHostPort(site)
	if err != nil {
		host, portText = site, "443"
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 1 || port > 65535 || host == "" || strings.ContainsAny(host, " \t{}/") {
		return "", 0, fmt.Errorf("--site %q: want a name, optionally with :port", site)
	}
	return host, port, nil
}

// allowSHA1 decides policy_guard's allow_sha1 and says why.
func allowSHA1(p *Probe, sylinkSHA1, haveSyLink bool) (bool, string) {
	switch {
	case sylinkSHA1:
		return true, "on: the SyLink file is signed with SHA-1"
	case haveSyLink:
		return false, "off: the SyLink file is signed with SHA-256"
	case p.SHA1Certificate():
		return true, "on: the manager's certificate is SHA-1-signed, so it most likely signs policies with SHA-1 too"
	case p.Best() < tls.VersionTLS12:
		return true, "on: the manager speaks only TLS < 1.2, so it most likely signs policies with SHA-1"
	}
	return false, "off: the manager looks recent enough to sign with SHA-256; set LEGACYGATE_ALLOW_SHA1=on if policies are refused as SHA-1"
}

func probeLines(p *Probe) []string {
	var versions []string
	for _, v := range p.Versions {
		versions = append(versions, tls.VersionName(v))
	}
	var suites []string
	for _, s := range p.Suites {
		suites = append(suites, tls.CipherSuiteName(s))
	}
	if len(suites) == 0 {
		suites = []string{"(TLS 1.3 only)"}
	}
	l := p.Leaf
	kind := []string{l.SignatureAlgorithm.String() + " signature"}
	if p.SHA1Certificate() {
		kind = append(kind, "SHA-1")
	}
	if p.SelfSigned() {
		kind = append(kind, "self-signed")
	}
	if p.CNOnly() {
		kind = append(kind, "CN-only (no SAN)")
	}
	if time.Now().After(l.NotAfter) {
		kind = append(kind, "expired")
	}
	hs := "no"
	if p.SHA1HandshakeSignatures {
		hs = "yes (TLS 1.0/1.1 sign with MD5+SHA-1; SHA-1 in TLS 1.2 is refused by Go)"
	}
	return []string{
		"TLS versions accepted: " + strings.Join(versions, ", "),
		"cipher suites accepted: " + strings.Join(suites, ", "),
		"certificate: " + l.Subject.String() + ", " + strings.Join(kind, ", "),
		"valid: " + l.NotBefore.UTC().Format(time.RFC3339) + " to " + l.NotAfter.UTC().Format(time.RFC3339),
		"SHA-1 handshake signatures: " + hs,
		"pin: " + p.Pin,
	}
}

func writeProbe(w io.Writer, p *Probe) {
	fmt.Fprintf(w, "manager %s:\n", p.Addr)
	for _, l := range probeLines(p) {
		fmt.Fprintf(w, "  %s\n", l)
	}
}

// nextSteps is NEXT-STEPS.txt.
func nextSteps(c *config) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "Next steps (written by legacygate init at %s)\n\n", c.Written)
	fmt.Fprintf(&b, "1. Check the pin against the manager's console: %s\n", c.Pin)
	fmt.Fprintf(&b, "   (legacygate pin %s prints the certificate it belongs to).\n", c.Manager)
	caddyfile := quote(filepath.Join(filepath.Dir(c.GatewayKey), "Caddyfile"))
	fmt.Fprintf(&b, "2. Validate: legacygate validate --config %s\n", caddyfile)
	fmt.Fprintf(&b, "3. Start: legacygate run --config %s\n", caddyfile)
	fmt.Fprintf(&b, "4. Point clients at %s:%d (DNS or the management server list); the settings\n", c.SiteHost, c.SitePort)
	b.WriteString("   documents the gateway serves already name it.\n")
	if c.DayZero {
		fmt.Fprintf(&b, "5. The window is open %s to %s: watch it with\n", c.WindowStart, c.WindowEnd)
		fmt.Fprintf(&b, "   legacygate rotation status --address %s\n", c.AdminAddr)
		b.WriteString("   When confirmed_percent is 100 (or the window and grace are over), make the\n")
		b.WriteString("   gateway's key current (signing_key current " + quote(c.GatewayKey) + " " + quote(c.GatewayCert) + "),\n")
		b.WriteString("   drop the rotation block, reload, and delete manager.key from this folder.\n")
		b.WriteString("   The full procedure: docs/operations/day-0.md.\n")
	} else if c.Flavor == "sepm" {
		b.WriteString("5. Clients must trust gateway.crt. A fleet that trusts the manager's certificate\n")
		b.WriteString("   today would reject the gateway's signatures: run init again with\n")
		b.WriteString("   --manager-key (SEPM: apache\\conf\\ssl\\server.key) for the day-0 cut-over\n")
		b.WriteString("   (docs/operations/day-0.md).\n")
	}
	b.WriteString("Keep gateway.key")
	if c.DayZero {
		b.WriteString(" and manager.key")
	}
	b.WriteString(" readable by the gateway's user only, and back them up.\n")
	return []byte(b.String())
}

package legacytls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "pin",
		Usage: "[--server-name <name>] [--timeout <duration>] <host:port>",
		Short: "Prints the legacy_tls pin of a manager's certificate",
		Long: `
Connects to host:port (port 443 when omitted) with TLS 1.0 to 1.3 and every
cipher suite Go has, including RSA key exchange and 3DES, without verifying
anything, and prints the leaf certificate's pin as a line ready to paste into
a legacy_tls transport block, followed by its subject, issuer, signature
algorithm, validity, SANs, and the TLS version and suite negotiated.

Check the printed certificate against the manager's console before pinning
it: this command trusts whatever answers at host:port.

Exits 0 on success and 1 (reason on stderr) when the connection or the
handshake fails.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Args = cobra.ExactArgs(1)
			cmd.Flags().String("server-name", "", "SNI to send (default: the host, unless it is an IP address)")
			cmd.Flags().Duration("timeout", 10*time.Second, "Time limit for connecting and the handshake")
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				serverName, _ := cmd.Flags().GetString("server-name")
				timeout, _ := cmd.Flags().GetDuration("timeout")
				return printPin(cmd.Context(), cmd.OutOrStdout(), args[0], serverName, timeout)
			}
		},
	})
}

// printPin handshakes with addr and writes what an administrator needs to
// pin it.
func printPin(ctx context.Context, w io.Writer, addr, serverName string, timeout time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	addr = withDefaultPort(addr)
	state, err := legacyHandshake(ctx, addr, serverName, timeout)
	if err != nil {
		return err
	}
	writeCertificateReport(w, state)
	return nil
}

func withDefaultPort(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return net.JoinHostPort(strings.Trim(addr, "[]"), "443")
	}
	return addr
}

// legacyHandshake connects to addr accepting any TLS version from 1.0 and
// any suite, and returns the connection state; nothing is verified.
func legacyHandshake(ctx context.Context, addr, serverName string, timeout time.Duration) (tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if serverName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil && net.ParseIP(host) == nil {
			serverName = host
		}
	}
	dialer := &tls.Dialer{Config: &tls.Config{
		ServerName:         serverName,
		InsecureSkipVerify: true, // we only read the certificate, to pin it
		MinVersion:         tls.VersionTLS10,
		CipherSuites:       AllCipherSuites(),
	}}
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	defer conn.Close()
	state := conn.(*tls.Conn).ConnectionState()
	if len(state.PeerCertificates) == 0 {
		return state, fmt.Errorf("TLS handshake with %s: no certificate presented", addr)
	}
	return state, nil
}

// AllCipherSuites is every TLS 1.0-1.2 suite Go implements, secure ones
// first: what `legacygate pin` and `legacygate init` offer a manager.
func AllCipherSuites() []uint16 {
	var ids []uint16
	for _, s := range slices.Concat(tls.CipherSuites(), tls.InsecureCipherSuites()) {
		if !slices.Equal(s.SupportedVersions, []uint16{tls.VersionTLS13}) {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

func writeCertificateReport(w io.Writer, state tls.ConnectionState) {
	leaf := state.PeerCertificates[0]
	fmt.Fprintf(w, "pin %s\n\n", PinOf(leaf))
	fmt.Fprintf(w, "subject:    %s\n", leaf.Subject)
	fmt.Fprintf(w, "issuer:     %s\n", leaf.Issuer)
	fmt.Fprintf(w, "signature:  %s\n", leaf.SignatureAlgorithm)
	fmt.Fprintf(w, "valid:      %s to %s%s\n", leaf.NotBefore.UTC().Format(time.RFC3339),
		leaf.NotAfter.UTC().Format(time.RFC3339), validityNote(leaf, time.Now()))
	fmt.Fprintf(w, "SANs:       %s\n", sanList(leaf))
	fmt.Fprintf(w, "negotiated: %s, %s\n", tls.VersionName(state.Version), tls.CipherSuiteName(state.CipherSuite))
}

func validityNote(c *x509.Certificate, now time.Time) string {
	switch {
	case now.After(c.NotAfter):
		return " (expired)"
	case now.Before(c.NotBefore):
		return " (not yet valid)"
	}
	return ""
}

func sanList(c *x509.Certificate) string {
	var sans []string
	sans = append(sans, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		sans = append(sans, ip.String())
	}
	sans = append(sans, c.EmailAddresses...)
	for _, u := range c.URIs {
		sans = append(sans, u.String())
	}
	if len(sans) == 0 {
		return "(none: the name is only in the subject CN)"
	}
	return strings.Join(sans, ", ")
}
